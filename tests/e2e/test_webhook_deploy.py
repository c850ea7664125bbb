"""A push to a forge, its webhook, and the new commit served: the whole path with the real daemon.

The "forge" is a local bare repository (file:// URL) so nothing leaves this machine; the webhook
is GitHub's documented push payload with a real signature, posted to the daemon's own port.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon, wait_for
from tests.e2e.squadron import Admiral, admiral_squadron, forge_repo, http_get
from tests.fixtures.webhooks.forge import SECRET, changed, github

pytestmark = [pytest.mark.root, pytest.mark.lxc, pytest.mark.nginx, pytest.mark.slow]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Daemon, Admiral]]:
    with admiral_squadron(tmp_path, HYPERDRIVE_WEBHOOK_SECRET=SECRET) as pair:
        yield pair


def post(d: Daemon, provider: str, headers: dict[str, str], body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{d.api_port}/hooks/{provider}", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        answer = err.read()
        err.close()
        return err.code, {"raw": answer.decode(errors="replace")}


def push_payload(url: str, before: str, after: str) -> bytes:
    def change(obj: dict) -> None:
        obj.update(ref="refs/heads/master", before=before, after=after, deleted=False)
        repo = obj["repository"]
        repo.update(
            clone_url=url, html_url=url, url=url, git_url=url, ssh_url=url, default_branch="master"
        )

    return changed("github_push", change)


def forge_app(d: Daemon, admiral: Admiral, tmp_path: Path, text: str) -> tuple[str, Path, str]:
    """A bare "forge" repo with one commit, and an app following it: (URL, work tree, sha)."""
    forge, work = forge_repo(admiral, tmp_path, {"index.html": text})
    url = f"file://{forge}"
    hq = admiral.working_copy(tmp_path / "hq", "headquarters")
    orders = {
        "authorized_keys/admiral.pub": Path(f"{admiral.key}.pub").read_text(),
        "site/orders": f"autodeploy {url}\nhealthcheck / 10\n",
    }
    admiral.commit(hq, orders)
    admiral.git("push", "hyperdrive", "master", cwd=hq)
    served = (200, text)
    wait_for(lambda: http_get(d.http_port, "/site/") == served, 90, 0.3, "the forge app served")
    return url, work, admiral.git("rev-parse", "HEAD", cwd=work).stdout.strip()


def test_a_replayed_webhook_never_rolls_the_site_back(
    fleet: tuple[Daemon, Admiral], tmp_path: Path
) -> None:
    """Issue 14: a captured signed delivery of v1, re-sent with a fresh X-GitHub-Delivery once
    v2 is live, is a duplicate; a late delivery naming v1 deploys the branch tip, v2."""
    d, admiral = fleet
    url, work, v1 = forge_app(d, admiral, tmp_path, "v1\n")
    headers1, body1 = github(push_payload(url, "0" * 40, v1))
    status, answer = post(d, "github", headers1, body1)
    assert status == 202, answer
    d.wait_event("DeployFinished", 90, deploy=answer["deploys"]["site"])
    admiral.commit(work, {"index.html": "v2\n"})
    admiral.git("push", "-q", "origin", "master", cwd=work)
    v2 = admiral.git("rev-parse", "HEAD", cwd=work).stdout.strip()
    status, answer = post(d, "github", *github(push_payload(url, v1, v2)))
    assert status == 202, answer
    wait_for(lambda: http_get(d.http_port, "/site/") == (200, "v2\n"), 90, 0.3, "v2 served")

    replay = {**headers1, "X-GitHub-Delivery": str(uuid.uuid4())}
    assert post(d, "github", replay, body1) == (200, {"status": "duplicate"})

    late_headers, late_body = github(push_payload(url, "1" * 40, v1))  # a new body naming v1
    status, answer = post(d, "github", late_headers, late_body)
    assert status == 202, answer
    late = answer["deploys"]["site"]
    finished = d.wait_event("DeployFinished", 90, deploy=late)
    assert "already live" in finished["message"]
    said = f"the delivery named {v1[:7]}, master is at {v2[:7]}: deploying {v2[:7]}"
    assert d.wait_event("StageFinished", deploy=late, stage="plan", message=said)
    assert http_get(d.http_port, "/site/") == (200, "v2\n")

    unsigned = {k: v for k, v in headers1.items() if k != "X-Hub-Signature-256"}
    assert [post(d, "github", unsigned, body1)[0] for _ in range(25)] == [401] * 25
    rejected = [e for e in d.events() if e.get("event") == "WebhookRejected"]
    assert len(rejected) == 1, "a burst from one address is one event"
    assert rejected[0]["source"] == "127.0.0.1"
    url = f"http://127.0.0.1:{d.api_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        metrics = response.read().decode()
    assert "hyperdrive_webhook_refusals 25.0" in metrics
    assert "hyperdrive_webhook_refusals_summarised 24.0" in metrics


def test_forge_push_and_webhook_deploy_the_new_commit(
    fleet: tuple[Daemon, Admiral], tmp_path: Path
) -> None:
    d, admiral = fleet
    forge, work = forge_repo(admiral, tmp_path, {"index.html": "from the forge\n"})
    first = admiral.git("rev-parse", "HEAD", cwd=work).stdout.strip()

    url = f"file://{forge}"
    hq = admiral.working_copy(tmp_path / "hq", "headquarters")
    admiral.commit(
        hq,
        {
            "authorized_keys/admiral.pub": Path(f"{admiral.key}.pub").read_text(),
            "site/orders": f"autodeploy {url}\nhealthcheck / 10\n",
        },
    )
    admiral.git("push", "hyperdrive", "master", cwd=hq)
    wait_for(
        lambda: http_get(d.http_port, "/site/") == (200, "from the forge\n"),
        90,
        0.3,
        "the autodeploy app served from its mirror",
    )
    assert (d.data / "git" / "mirrors" / "site.git").is_dir()

    admiral.commit(work, {"index.html": "webhook delivered\n"})
    admiral.git("push", "-q", "origin", "master", cwd=work)
    second = admiral.git("rev-parse", "HEAD", cwd=work).stdout.strip()
    headers, body = github(push_payload(url, first, second))
    status, answer = post(d, "github", headers, body)
    assert status == 202, answer
    assert list(answer["deploys"]) == ["site"]
    wait_for(
        lambda: http_get(d.http_port, "/site/") == (200, "webhook delivered\n"),
        90,
        0.3,
        "the webhook's commit served",
    )
    fetched = d.wait_event("StageFinished", deploy=answer["deploys"]["site"], stage="fetch")
    assert "ms" in fetched

    again, duplicate = post(d, "github", headers, body)
    assert (again, duplicate["status"]) == (200, "duplicate")
    forged = dict(
        headers, **{"X-Hub-Signature-256": "sha256=" + "0" * 64, "X-GitHub-Delivery": "another"}
    )
    refused, _ = post(d, "github", forged, body)
    assert refused == 401
    assert http_get(d.http_port, "/site/") == (200, "webhook delivered\n")
    assert SECRET not in (d.data / "events.jsonl").read_text()

    # an app whose orders follow a tag deploys when that tag is pushed, and only it does
    admiral.commit(
        hq,
        {"release/orders": f"autodeploy {url}#v1.0\nhealthcheck / 10\n"},
    )
    admiral.git("push", "hyperdrive", "master", cwd=hq)
    admiral.commit(work, {"index.html": "tagged release\n"})
    admiral.git("tag", "-a", "v1.0", "-m", "release", cwd=work)
    admiral.git("push", "-q", "origin", "master", "v1.0", cwd=work)
    tagged = admiral.git("rev-parse", "v1.0", cwd=work).stdout.strip()

    def tag_push(obj: dict) -> None:
        obj.update(ref="refs/tags/v1.0", before="0" * 40, after=tagged, created=True)
        obj["repository"].update(clone_url=url, url=url, default_branch="master")

    headers, body = github(changed("github_push", tag_push))
    status, answer = post(d, "github", headers, body)
    assert status == 202, answer
    assert list(answer["deploys"]) == ["release"]
    wait_for(
        lambda: http_get(d.http_port, "/release/") == (200, "tagged release\n"),
        90,
        0.3,
        "the tagged release served",
    )
    assert http_get(d.http_port, "/site/") == (200, "webhook delivered\n")
