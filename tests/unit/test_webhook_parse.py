"""Webhook signatures, payload parsing, URL matching and ids, without a server."""

import hashlib
import hmac
import json
import string
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from hyperdrive.errors import InvalidName
from hyperdrive.gitremote import normalize_url, same_repo, split_branch
from hyperdrive.hooks.webhook import (
    PROVIDER,
    StaticResolver,
    WebhookRefused,
    delivery_id,
    detect_provider,
    form_payload,
    hmac_sha256_hex,
    load_json,
    parse_bitbucket,
    parse_github,
    parse_gitlab,
    standard_webhook_key,
    verify_bitbucket,
    verify_gitea,
    verify_github,
    verify_gitlab,
)
from hyperdrive.triggers import TRIGGER_ID, deploy_id
from tests.fixtures.webhooks import forge

SECRET = forge.SECRET.encode()
NOW = 1_700_000_000.0


def headers(values: dict[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(values))


def refused(call: Any, *args: Any) -> WebhookRefused:
    with pytest.raises(WebhookRefused) as caught:
        call(*args)
    return caught.value


# ─── signatures ──────────────────────────────────────────────────────────────


def test_design_test_vector() -> None:
    """DESIGN.md: GitHub's documented example secret and body."""
    digest = hmac_sha256_hex(b"It's a Secret to Everybody", b"Hello, World!")
    assert digest == "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    sent = headers({"X-Hub-Signature-256": "sha256=" + digest})
    verify_github(sent, b"It's a Secret to Everybody", b"Hello, World!", NOW)


@pytest.mark.parametrize(
    ("make", "verify"),
    [
        (forge.github, verify_github),
        (forge.bitbucket, verify_bitbucket),
        (forge.gitea, verify_gitea),
        (lambda b: forge.gitea(b, forgejo=True), verify_gitea),
    ],
)
def test_hmac_providers_accept_their_signature_and_refuse_others(make: Any, verify: Any) -> None:
    body = forge.payload("github_push")
    good, _ = make(body)
    verify(headers(good), SECRET, body, NOW)
    assert refused(verify, headers(good), SECRET, body + b" ", NOW).status == 401
    assert refused(verify, headers(good), b"another secret", body, NOW).status == 401
    assert (
        refused(
            verify,
            headers(good | {n: "\udcff" for n in good if "Signature" in n}),
            SECRET,
            body,
            NOW,
        ).status
        == 401
    )
    truncated = {k: (v[:20] if "Signature" in k else v) for k, v in good.items()}
    assert refused(verify, headers(truncated), SECRET, body, NOW).status == 401
    missing = {k: v for k, v in good.items() if "Signature" not in k}
    assert "missing" in refused(verify, headers(missing), SECRET, body, NOW).reason


def test_forgejo_signature_is_checked_even_beside_a_good_gitea_one() -> None:
    body = forge.payload("forgejo_push")
    sent, _ = forge.gitea(body, forgejo=True)
    sent["X-Forgejo-Signature"] = "0" * 64
    assert refused(verify_gitea, headers(sent), SECRET, body, NOW).status == 401


def test_gitlab_token_is_the_secret() -> None:
    body = forge.payload("gitlab_push")
    sent, _ = forge.gitlab(body)
    verify_gitlab(headers(sent), SECRET, body, NOW)
    sent["X-Gitlab-Token"] = forge.SECRET[:-1]
    assert "not our secret" in refused(verify_gitlab, headers(sent), SECRET, body, NOW).reason
    del sent["X-Gitlab-Token"]
    assert "missing" in refused(verify_gitlab, headers(sent), SECRET, body, NOW).reason


@pytest.mark.parametrize("secret", [forge.SECRET, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"])
def test_gitlab_signed_webhooks(secret: str) -> None:
    body = forge.payload("gitlab_push")
    sent, _ = forge.gitlab(body, secret, token=False, signed=True, timestamp=int(NOW))
    verify_gitlab(headers(sent), secret.encode(), body, NOW)
    sent["webhook-signature"] = "v1,bm90IGl0 " + sent["webhook-signature"]  # a list: one matches
    verify_gitlab(headers(sent), secret.encode(), body, NOW + 299)
    late = refused(verify_gitlab, headers(sent), secret.encode(), body, NOW + 301)
    assert "5 minutes" in late.reason
    assert refused(verify_gitlab, headers(sent), secret.encode(), body + b"x", NOW).status == 401
    sent["webhook-id"] = "another-id"
    assert refused(verify_gitlab, headers(sent), secret.encode(), body, NOW).status == 401


def test_gitlab_token_and_signature_must_both_hold_when_both_are_sent() -> None:
    body = forge.payload("gitlab_push")
    sent, _ = forge.gitlab(body, signed=True, timestamp=int(NOW))
    verify_gitlab(headers(sent), SECRET, body, NOW)
    sent["X-Gitlab-Token"] = "guess"
    assert refused(verify_gitlab, headers(sent), SECRET, body, NOW).status == 401


@pytest.mark.parametrize(
    "change",
    [
        {"webhook-timestamp": "²"},
        {"webhook-timestamp": "9" * 5000},
        {"webhook-timestamp": ""},
        {"webhook-id": "\udcff\udcfe"},
        {"webhook-signature": "\udcff"},
        {"X-Gitlab-Token": "\udcff"},
    ],
)
def test_gitlab_hostile_header_values_are_refused_not_crashed(change: dict[str, str]) -> None:
    body = forge.payload("gitlab_push")
    sent, _ = forge.gitlab(body, signed=True, timestamp=int(NOW))
    assert refused(verify_gitlab, headers(sent | change), SECRET, body, NOW).status == 401


def test_standard_webhook_key_decodes_whsec_only() -> None:
    assert standard_webhook_key(b"whsec_aGVsbG8=") == b"hello"
    assert standard_webhook_key(b"plain") == b"plain"
    assert standard_webhook_key(b"whsec_not base64!") == b"whsec_not base64!"


# ─── which forge, which delivery ─────────────────────────────────────────────


def test_detect_provider_checks_gitea_before_github() -> None:
    body = forge.payload("github_push")
    assert detect_provider(headers(forge.github(body)[0])) == "github"
    assert detect_provider(headers(forge.gitea(body)[0])) == "gitea"
    assert detect_provider(headers(forge.gitea(body, forgejo=True)[0])) == "gitea"
    assert detect_provider(headers(forge.gitlab(body)[0])) == "gitlab"
    assert detect_provider(headers(forge.bitbucket(body)[0])) == "bitbucket"
    assert detect_provider(headers({"Content-Type": "application/json"})) is None
    assert detect_provider(headers({"X-Gogs-Event": "push"})) is None


def test_delivery_ids_are_safe_trigger_ids() -> None:
    github = PROVIDER["github"]
    plain = delivery_id(github, headers({"X-GitHub-Delivery": "72d3162e-cc78"}), "f" * 64)
    assert plain == "github:72d3162e-cc78"
    hostile = delivery_id(github, headers({"X-GitHub-Delivery": "../../etc x" * 30}), "f" * 64)
    assert TRIGGER_ID.fullmatch(hostile)
    assert hostile.startswith("github:h-")
    derived = delivery_id(github, headers({}), "ab" * 32)
    assert derived == "github:body-" + ("ab" * 32)[:40]
    gitlab = PROVIDER["gitlab"]
    both = headers({"webhook-id": "msg_1", "Idempotency-Key": "k", "X-Gitlab-Event-UUID": "u"})
    assert delivery_id(gitlab, both, "0" * 64) == "gitlab:msg_1"
    assert delivery_id(gitlab, headers({"X-Gitlab-Event-UUID": "u"}), "0" * 64) == "gitlab:u"


@given(st.text(min_size=1, max_size=200), st.from_regex(r"[a-z0-9][a-z0-9-]{0,38}", fullmatch=True))
def test_deploy_ids_always_fit_the_trigger_id_charset(delivery: str, app: str) -> None:
    trigger = delivery_id(PROVIDER["gitea"], headers({"X-Gitea-Delivery": delivery}), "0" * 64)
    assert TRIGGER_ID.fullmatch(trigger)
    assert TRIGGER_ID.fullmatch(deploy_id(trigger, app))


def test_deploy_id_is_trigger_and_app() -> None:
    assert deploy_id("github:72d3162e", "web") == "github:72d3162e:web"


# ─── bodies ──────────────────────────────────────────────────────────────────


def test_load_json_refuses_what_is_not_a_json_object() -> None:
    assert "UTF-8" in refused(load_json, b'{"ref": "\xff"}').reason
    assert "nested too deeply" in refused(load_json, b"[" * 100_000).reason
    assert "not an object" in refused(load_json, b"[1, 2]").reason
    assert "not JSON" in refused(load_json, b"{").reason
    assert "not JSON" in refused(load_json, b'{"n": ' + b"9" * 5000 + b"}").reason


def test_form_payload_holds_the_json() -> None:
    _, form = forge.github(forge.payload("github_push"), form=True)
    assert json.loads(form_payload(form)) == json.loads(forge.payload("github_push"))
    assert "payload" in refused(form_payload, b"other=1").reason
    assert refused(form_payload, b"payload=%ff%fe").status == 400


# ─── payloads ────────────────────────────────────────────────────────────────


def test_github_push() -> None:
    push = parse_github(json.loads(forge.payload("github_push")))
    assert push.repository == "octo-org/web"
    assert push.default_branch == "main"
    assert "git@github.com:octo-org/web.git" in push.urls
    (update,) = push.updates
    assert update.ref == "refs/heads/main"
    assert update.new == "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"
    assert not update.deleted


def test_github_branch_deletion() -> None:
    def delete(obj: dict[str, Any]) -> None:
        obj.update(deleted=True, after="0" * 40)

    (update,) = parse_github(json.loads(forge.changed("github_push", delete))).updates
    assert update.deleted


def test_gitea_and_forgejo_pushes_have_github_shape() -> None:
    site = parse_github(json.loads(forge.payload("gitea_push")))
    assert site.repository == "ops/site"
    assert "ssh://git@gitea.example.com:2222/ops/site.git" in site.urls
    blog = parse_github(json.loads(forge.payload("forgejo_push")))
    assert blog.default_branch == "trunk"


def test_gitlab_push_and_tag_push() -> None:
    push = parse_gitlab(json.loads(forge.payload("gitlab_push")))
    assert push.repository == "acme/platform/api"
    assert "git@gitlab.example.com:acme/platform/api.git" in push.urls
    (tag,) = parse_gitlab(json.loads(forge.payload("gitlab_tag_push"))).updates
    assert tag.ref == "refs/tags/v1.0.0"
    assert tag.old == "0" * 40
    assert not tag.deleted


def test_bitbucket_push_with_several_changes() -> None:
    def more(obj: dict[str, Any]) -> None:
        change = obj["push"]["changes"][0]
        gone = {"old": change["old"] | {"name": "old-feature"}, "new": None, "closed": True}
        tag = {"old": None, "new": change["new"] | {"type": "tag", "name": "v2"}}
        obj["push"]["changes"] += [gone, tag]

    push = parse_bitbucket(json.loads(forge.changed("bitbucket_push", more)))
    assert push.urls == ("https://bitbucket.org/teamx/shop",)
    assert push.default_branch == "main"
    main, gone, tag = push.updates
    assert (main.ref, main.deleted) == ("refs/heads/main", False)
    assert (gone.ref, gone.deleted, gone.new) == ("refs/heads/old-feature", True, "0" * 40)
    assert (tag.ref, tag.old) == ("refs/tags/v2", "0" * 40)


@pytest.mark.parametrize(
    ("parse", "name", "field"),
    [
        (parse_github, "github_push", "ref"),
        (parse_github, "github_push", "after"),
        (parse_github, "github_push", "repository"),
        (parse_gitlab, "gitlab_push", "before"),
        (parse_gitlab, "gitlab_push", "project"),
        (parse_bitbucket, "bitbucket_push", "push"),
    ],
)
def test_missing_fields_are_named(parse: Any, name: str, field: str) -> None:
    obj = json.loads(forge.payload(name))
    del obj[field]
    reason = refused(parse, obj).reason
    assert f"lacks the field '{field}" in reason


def test_hostile_refs_and_shas_are_refused() -> None:
    obj = json.loads(forge.payload("github_push"))
    assert "'ref'" in refused(parse_github, obj | {"ref": "refs/heads/../../x"}).reason
    assert "'after'" in refused(parse_github, obj | {"after": "HEAD; rm -rf /"}).reason


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(
    st.dictionaries(
        st.sampled_from(["ref", "before", "after", "repository", "project", "push"]), JSON
    )
)
def test_parsers_answer_any_object_with_a_push_or_a_refusal(obj: dict[str, Any]) -> None:
    statuses = set()
    for parse in (parse_github, parse_gitlab, parse_bitbucket):
        try:
            parse(obj)
        except WebhookRefused as err:
            statuses.add(err.status)
    assert statuses <= {400}


# ─── matching ────────────────────────────────────────────────────────────────


def resolver() -> StaticResolver:
    return StaticResolver(
        {
            "web": ("git@github.com:Octo-Org/web", None),
            "web-next": ("https://github.com/octo-org/web.git", "next"),
            "api-release": ("https://gitlab.example.com/acme/platform/api", "v1.0.0"),
            "broken": ("not a url at all", None),
        },
        hq_url="https://github.com/octo-org/hq.git#main",
    )


URLS = ("https://github.com/octo-org/web.git", "git@github.com:octo-org/web.git")


def test_resolver_matches_url_forms_and_default_branch() -> None:
    found = resolver().resolve(URLS, "refs/heads/main", "main")
    assert found.apps == ("web",)
    assert not found.hq
    assert resolver().resolve(URLS, "refs/heads/next", "main").apps == ("web-next",)


def test_resolver_explains_a_wrong_branch_and_an_unknown_repo() -> None:
    wrong = resolver().resolve(URLS, "refs/heads/dev", "main")
    assert wrong.apps == ()
    assert "'main'" in wrong.reason
    assert "'next'" in wrong.reason
    unknown = resolver().resolve(["https://github.com/someone/else"], "refs/heads/main", "main")
    assert "no app" in unknown.reason
    nameless = resolver().resolve(URLS, "refs/heads/main", None)
    assert nameless.apps == ()
    assert "does not name" in nameless.reason


def test_resolver_tags_match_only_orders_that_name_them() -> None:
    urls = ["git@gitlab.example.com:acme/platform/api.git"]
    assert resolver().resolve(urls, "refs/tags/v1.0.0", "main").apps == ("api-release",)
    assert resolver().resolve(URLS, "refs/tags/main", "main").apps == ()


def test_resolver_finds_hq_on_its_branch() -> None:
    hq = ["git@github.com:octo-org/hq.git"]
    assert resolver().resolve(hq, "refs/heads/main", "trunk").hq
    assert not resolver().resolve(hq, "refs/heads/trunk", "trunk").hq


# ─── URLs ────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/Octo-Org/Web.git",
        "http://github.com/octo-org/web",
        "https://user:token@GitHub.com:443/octo-org/web.git/",
        "ssh://git@github.com:22/octo-org/web.git",
        "ssh://git@github.com/octo-org/web",
        "git@github.com:octo-org/web.git",
        "git@github.com:/octo-org/web.git",
        "github.com:octo-org/web",
        "git://github.com/octo-org/web.git",
        "git+ssh://git@github.com/octo-org/web.git",
        "https://github.com//octo-org/./web.git?x=1#main",
        "github.com/octo-org/web",
        "GITHUB.COM./octo-org/web.git.git",
    ],
)
def test_normalize_url_forms(url: str) -> None:
    assert normalize_url(url) == "github.com/octo-org/web"


def test_normalize_url_keeps_subgroups_local_paths_and_ipv6() -> None:
    assert normalize_url("git@gitlab.example.com:acme/platform/api.git") == (
        "gitlab.example.com/acme/platform/api"
    )
    assert normalize_url("file:///srv/Git/app.git") == "/srv/git/app"
    assert normalize_url("/srv/git/app.git/") == "/srv/git/app"
    assert normalize_url("ssh://git@[::1]:2222/app.git") == "[::1]/app"
    assert normalize_url("[::1]/app") == "[::1]/app"


@pytest.mark.parametrize(
    "url",
    [
        "",
        "   ",
        "https://",
        "ftp://host/x",
        "https://host/",
        "https://host/a/../b",
        "a b",
        "x",
        "/",
    ],
)
def test_normalize_url_refuses_what_is_not_a_git_url(url: str) -> None:
    with pytest.raises(InvalidName):
        normalize_url(url)


def test_split_branch_and_same_repo() -> None:
    assert split_branch("https://h/a/b.git#dev") == ("https://h/a/b.git", "dev")
    assert split_branch("https://h/a/b.git") == ("https://h/a/b.git", None)
    assert same_repo("git@h:a/b.git", "https://H/a/b")
    assert not same_repo("git@h:a/b.git", "nonsense")


NAME = st.text(string.ascii_letters + string.digits + "_-", min_size=1, max_size=12)
HOST = st.from_regex(r"[a-z][a-z0-9-]{0,8}(\.[a-z]{2,5}){1,2}", fullmatch=True)


@given(HOST, NAME, NAME, st.booleans(), st.booleans())
def test_every_spelling_of_a_repo_normalizes_alike(
    host: str, owner: str, repo: str, dot_git: bool, shout: bool
) -> None:
    suffix = ".git" if dot_git else ""
    path = f"{owner}/{repo}{suffix}"
    if shout:
        host, path = host.upper(), path.swapcase()
    spellings = [
        f"https://{host}/{path}",
        f"http://{host}/{path}/",
        f"ssh://git@{host}:22/{path}",
        f"git@{host}:{path}",
        f"git://{host}/{path}",
        f"{host}/{path}",
    ]
    expected = f"{host}/{owner}/{repo}".lower()
    assert {normalize_url(s) for s in spellings} == {expected}


@given(st.text(max_size=60))
def test_normalize_url_is_idempotent_on_any_text(text: str) -> None:
    try:
        once = normalize_url(text)
    except InvalidName:
        return
    assert normalize_url(once) == once


@given(
    st.from_regex(
        r"(https?|ssh|git)://([a-z]+@)?[A-Za-z0-9.-]{1,12}(:[0-9]{1,5})?(/[^\s#?]{0,10}){1,4}"
    )
)
def test_normalize_url_is_idempotent_on_url_shapes(text: str) -> None:
    try:
        once = normalize_url(text)
    except InvalidName:
        return
    assert normalize_url(once) == once


def test_hmac_hex_is_lowercase_sha256() -> None:
    expected = hmac.new(b"k", b"v", hashlib.sha256).hexdigest()
    assert hmac_sha256_hex(b"k", b"v") == expected
