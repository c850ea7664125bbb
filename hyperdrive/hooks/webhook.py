"""Push webhooks from GitHub, GitLab, Gitea/Forgejo and Bitbucket, turned into durable triggers.

A delivery is verified against the shared secret (HMAC-SHA256 of the raw body, or GitLab's
token / signed headers), parsed, matched to apps by repository URL and branch, and answered
202 only after its one trigger is fsynced in the spool; the deploy runs later. Delivery ids
are remembered by the spool, so a redelivery starts nothing.

Decisions worth knowing (README material):
* A delivery on another forge's URL (e.g. GitHub headers on /hooks/gitlab) is refused with 400
  and a message naming the right URL, before any signature check.
* No delivery id header: the id is `body-<sha256(body)[:40]>`, so the same body twice is a
  duplicate. A delivery id outside `[A-Za-z0-9._:-]` becomes `h-<sha256(id)[:40]>`.
* GitLab: `X-Gitlab-Token` is compared with the secret in constant time. GitLab's signed
  webhooks (Standard Webhooks: `webhook-signature: v1,<base64 HMAC-SHA256(id.timestamp.body)>`,
  space-separated list, `webhook-timestamp` within 5 minutes) use the secret as key; a secret
  written `whsec_<base64>` is base64-decoded first, as that spec says. When both are sent, both
  must be right. The delivery id is `webhook-id`, else `Idempotency-Key`, else
  `X-Gitlab-Event-UUID`.
* Tags: a tag push matches an app only when its orders name that tag (`autodeploy URL#v1`).
* Payload URLs are only compared, never fetched: the pipeline fetches from the orders' URL.
* The signature covers the body, not the id: a known body under a new id is a duplicate, and the
  pipeline deploys the fetched branch tip, not the payload's sha (plan.py).
* Refusals go through `RefusalTally`: one event per source address per interval, then a summary.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import re
import time
import urllib.parse
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDictProxy

from hyperdrive.errors import HyperdriveError, InvalidName, SpoolError, SpoolFull
from hyperdrive.gitremote import normalize_url, shown_url, split_branch
from hyperdrive.hooks.deliveries import Deliveries
from hyperdrive.hooks.refusals import RefusalTally, source_of
from hyperdrive.names import ZERO_SHA, check_ref, check_sha
from hyperdrive.pipeline import events as ev
from hyperdrive.triggers import RefUpdate, Trigger, TriggerKind

if TYPE_CHECKING:  # names for types only: the receiver needs none of HQ sync's machinery
    from hyperdrive.pipeline.fleet import Fleet
    from hyperdrive.pipeline.hqsync import Source

log = logging.getLogger(__name__)

PROVIDERS = ("github", "gitlab", "gitea", "bitbucket")
MAX_BODY = 25 * 1024 * 1024
READ_TIMEOUT_S = 10.0
SIGNED_WEBHOOK_TOLERANCE_S = 300.0
PARSE_IN_THREAD_BYTES = 256 * 1024
DELIVERY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}")
DISABLED_MESSAGE = (
    "webhooks are disabled because no secret is set: put HYPERDRIVE_WEBHOOK_SECRET=<a long "
    "random string> in /etc/hyperdrive/main.conf (or the environment), restart `hd serve`, "
    "and give the forge the same secret"
)
ANSWER = web.ResponseKey("answer", dict)  # where a response keeps the body it was made from
JSON = "application/json"
_JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8"}  # as content_type= writes it
Headers = CIMultiDictProxy[str]
Emit = Callable[[dict[str, Any]], object]  # e.g. EventLog.append


class WebhookRefused(HyperdriveError):
    """A delivery is refused: carries the HTTP status and a reason safe to show the sender."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _bad(reason: str) -> WebhookRefused:
    return WebhookRefused(400, reason)


# ─── what a push says, and who follows it ─────────────────────────────────────


@dataclass(frozen=True)
class Push:
    """The facts of a push delivery, whichever forge sent it."""

    repository: str
    urls: tuple[str, ...]
    default_branch: str | None
    updates: tuple[RefUpdate, ...]


@dataclass(frozen=True)
class Resolution:
    """Apps whose orders follow a pushed ref, whether it is the HQ repo, else why not."""

    apps: tuple[str, ...] = ()
    hq: bool = False
    reason: str = ""
    previews: tuple[str, ...] = ()  # apps with `previews on` for which this is another branch


class Resolver(Protocol):
    """Match a pushed repo (every URL form the payload gives) and ref to apps and HQ."""

    def resolve(
        self, urls: Collection[str], ref: str, default_branch: str | None
    ) -> Resolution: ...


class WebhookSpool(Protocol):
    """What the receiver needs of a spool: a durable put and the fingerprint of a known id."""

    async def put(self, trigger: Trigger) -> bool: ...

    def fingerprint(self, trigger_id: str) -> str | None: ...

    def carried(self, fingerprint: str) -> str | None: ...


@dataclass(frozen=True)
class _Follower:
    url: str  # normalised
    branch: str | None


class StaticResolver:
    """A fixed table `app -> (autodeploy URL, branch or None)` and the HQ URL (`URL[#branch]`)."""

    def __init__(
        self,
        apps: Mapping[str, tuple[str, str | None]],
        hq_url: str | None,
        previews: Collection[str] = (),
    ) -> None:
        self._apps = {app: _follower(url, branch) for app, (url, branch) in apps.items()}
        self._previews = frozenset(previews)
        self._apps_ok = {app: f for app, f in self._apps.items() if f is not None}
        hq, hq_branch = split_branch(hq_url) if hq_url else ("", None)
        self._hq = _follower(hq, hq_branch) if hq else None

    def resolve(self, urls: Collection[str], ref: str, default_branch: str | None) -> Resolution:
        pushed = _normalized(urls)
        if self._hq is not None and self._hq.url in pushed:
            if _follows(self._hq.branch, ref, default_branch):
                return Resolution(hq=True)
            return Resolution(reason=f"HQ follows {_wanted(self._hq.branch, default_branch)}")
        same_repo = sorted(a for a, f in self._apps_ok.items() if f.url in pushed)
        apps = tuple(a for a in same_repo if _follows(self._apps_ok[a].branch, ref, default_branch))
        shown = tuple(
            a for a in same_repo if a in self._previews and a not in apps and _branch_ref(ref)
        )
        if apps or shown:
            return Resolution(apps=apps, previews=shown)
        if not same_repo:
            return Resolution(reason="no app's orders autodeploy this repository")
        wanted = {_wanted(self._apps_ok[a].branch, default_branch) for a in same_repo}
        return Resolution(reason=f"{', '.join(same_repo)} follow {', '.join(sorted(wanted))}")


class HeadquartersSource(Protocol):
    """Where HQ comes from now (`hd headquarters set` moves it while the daemon runs)."""

    @property
    def source(self) -> Source: ...


class FleetResolver:
    """Which apps (or HQ) a pushed repository and ref concern, from the orders in force."""

    def __init__(self, fleet: Fleet, headquarters: HeadquartersSource) -> None:
        self.fleet = fleet
        self.headquarters = headquarters
        self._cached: tuple[object, str, StaticResolver] | None = None

    def resolve(self, urls: Collection[str], ref: str, default_branch: str | None) -> Resolution:
        return self._table().resolve(urls, ref, default_branch)

    def _table(self) -> StaticResolver:
        source = self.headquarters.source
        hq_url = f"{source.url}#{source.branch}" if source.branch else source.url
        cached = self._cached  # rebuilt only when the HQ in force (an identity) or its URL moves
        if cached is None or cached[0] is not self.fleet.hq or cached[1] != hq_url:
            ordered = {name: self.fleet.orders(name) for name in self.fleet.names()}
            apps = {
                name: (orders.autodeploy_url, orders.branch)
                for name, orders in ordered.items()
                if orders.autodeploy_url is not None
            }
            previews = [name for name, orders in ordered.items() if orders.previews]
            cached = (self.fleet.hq, hq_url, StaticResolver(apps, hq_url or None, previews))
            self._cached = cached
        return cached[2]


def _follower(url: str, branch: str | None) -> _Follower | None:
    try:
        return _Follower(normalize_url(url), branch or None)
    except InvalidName:
        log.warning("webhook: orders name an unreadable autodeploy URL: %s", shown_url(url))
        return None


def _normalized(urls: Collection[str]) -> set[str]:
    found = set()
    for url in urls:
        try:
            found.add(normalize_url(url))
        except InvalidName:
            continue
    return found


def _follows(branch: str | None, ref: str, default_branch: str | None) -> bool:
    """The order's branch (or a tag it names), else the repo's default branch, is the ref."""
    if branch is not None:
        return ref in (f"refs/heads/{branch}", f"refs/tags/{branch}")
    return default_branch is not None and ref == f"refs/heads/{default_branch}"


def _branch_ref(ref: str) -> bool:
    return ref.startswith("refs/heads/")


def _wanted(branch: str | None, default_branch: str | None) -> str:
    if branch is not None:
        return f"'{branch}'"
    if default_branch is None:
        return "the default branch, which this payload does not name"
    return f"'{default_branch}'"


# ─── signatures ───────────────────────────────────────────────────────────────


def hmac_sha256_hex(secret: bytes, body: bytes) -> str:
    """Hex HMAC-SHA256 of the raw body: what GitHub, Gitea and Bitbucket send. `hmac.digest`
    is OpenSSL's one-shot HMAC, without the Python object `hmac.new` builds."""
    return hmac.digest(secret, body, "sha256").hex()


def _same(given: str, expected: str) -> bool:
    """Constant-time compare of a header value (any text) with what we computed."""
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode())


def _verify_prefixed(headers: Headers, name: str, secret: bytes, body: bytes) -> None:
    """`<name>: sha256=<hex>` (GitHub's X-Hub-Signature-256, Bitbucket's X-Hub-Signature)."""
    given = headers.get(name)
    if not given:
        raise WebhookRefused(401, f"missing {name} header: set the webhook secret at the forge")
    if not _same(given.strip().lower(), "sha256=" + hmac_sha256_hex(secret, body)):
        raise WebhookRefused(401, f"{name} does not match the body signed with our secret")


def verify_github(headers: Headers, secret: bytes, body: bytes, now: float) -> None:
    _verify_prefixed(headers, "X-Hub-Signature-256", secret, body)


def verify_bitbucket(headers: Headers, secret: bytes, body: bytes, now: float) -> None:
    _verify_prefixed(headers, "X-Hub-Signature", secret, body)


def verify_gitea(headers: Headers, secret: bytes, body: bytes, now: float) -> None:
    """Bare hex in X-Forgejo-Signature and/or X-Gitea-Signature; every one sent must match."""
    given = [(n, headers[n]) for n in ("X-Forgejo-Signature", "X-Gitea-Signature") if n in headers]
    if not given:
        raise WebhookRefused(401, "missing X-Gitea-Signature header: set the secret at the forge")
    expected = hmac_sha256_hex(secret, body)
    for name, value in given:
        if not _same(value.strip().lower(), expected):
            raise WebhookRefused(401, f"{name} does not match the body signed with our secret")


def verify_gitlab(headers: Headers, secret: bytes, body: bytes, now: float) -> None:
    """X-Gitlab-Token and/or the signed-webhook headers; at least one, every one sent valid."""
    token = headers.get("X-Gitlab-Token")
    signed = "webhook-signature" in headers
    if token is None and not signed:
        raise WebhookRefused(
            401, "missing X-Gitlab-Token (or webhook-signature) header: set it at the forge"
        )
    if token is not None and not hmac.compare_digest(token.encode("utf-8", "replace"), secret):
        raise WebhookRefused(401, "X-Gitlab-Token is not our secret")
    if signed:
        _verify_standard_webhook(headers, secret, body, now)


def _verify_standard_webhook(headers: Headers, secret: bytes, body: bytes, now: float) -> None:
    msg_id, stamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
    if not msg_id or not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12):
        raise WebhookRefused(401, "webhook-signature needs webhook-id and webhook-timestamp")
    if abs(now - int(stamp)) > SIGNED_WEBHOOK_TOLERANCE_S:
        raise WebhookRefused(401, "webhook-timestamp is more than 5 minutes from our clock")
    # aiohttp keeps undecodable header bytes as surrogates: sign the bytes that were sent.
    signed = msg_id.encode("utf-8", "surrogateescape") + f".{stamp}.".encode() + body
    mac = hmac.new(standard_webhook_key(secret), signed, hashlib.sha256).digest()
    expected = "v1," + base64.b64encode(mac).decode()
    candidates = headers["webhook-signature"].split()
    # Compare every candidate so the time taken does not say which one matched.
    if not sum(_same(c, expected) for c in candidates):
        raise WebhookRefused(
            401, "webhook-signature does not match the body signed with our secret"
        )


def standard_webhook_key(secret: bytes) -> bytes:
    """A `whsec_<base64>` secret is the base64 of the key; any other secret is the key itself."""
    if secret.startswith(b"whsec_"):
        try:
            return base64.b64decode(secret[len(b"whsec_") :], validate=True)
        except binascii.Error:
            return secret
    return secret


# ─── payloads ─────────────────────────────────────────────────────────────────


def _field(obj: Mapping[str, Any], path: str, kind: type | tuple[type, ...] = str) -> Any:
    """The value at a dotted path, of the given type, or a 400 naming the field."""
    value: Any = obj
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            raise _bad(f"payload lacks the field {path!r}")
        value = value[key]
    if not isinstance(value, kind):
        raise _bad(f"payload field {path!r} has the wrong type")
    return value


def _optional(obj: Mapping[str, Any], path: str) -> str | None:
    """The text at a dotted path, or None: a walk without `_field`'s refusal to catch."""
    value: Any = obj
    for key in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value if isinstance(value, str) and value else None


def _urls(obj: Mapping[str, Any], *paths: str) -> tuple[str, ...]:
    """Every URL the payload gives for its repository; at least one, else 400."""
    urls = tuple(url for path in paths if (url := _optional(obj, path)))
    if not urls:
        raise _bad(f"payload lacks the field {paths[0]!r}")
    return urls


def _sha(obj: Mapping[str, Any], path: str) -> str:
    try:
        return check_sha(_field(obj, path))
    except InvalidName as err:
        raise _bad(f"payload field {path!r}: {err}") from err


def _ref(value: str, path: str) -> str:
    try:
        return check_ref(value)
    except InvalidName as err:
        raise _bad(f"payload field {path!r}: {err}") from err


GITHUB_URLS = tuple(f"repository.{k}" for k in ("clone_url", "ssh_url", "html_url", "git_url"))
GITLAB_URLS = tuple(
    f"{side}.{k}" for side in ("project", "repository")
    for k in ("git_http_url", "git_ssh_url", "web_url")
)  # fmt: skip


def parse_github(obj: Mapping[str, Any]) -> Push:
    """GitHub's push event; Gitea and Forgejo send the same shape."""
    ref = _ref(_field(obj, "ref"), "ref")
    before, after = _sha(obj, "before"), _sha(obj, "after")
    _field(obj, "repository", dict)
    if obj.get("deleted") is True:  # GitHub says so itself; the after sha is then zero too
        after = ZERO_SHA
    return Push(
        repository=_optional(obj, "repository.full_name") or "",
        urls=_urls(obj, *GITHUB_URLS),
        default_branch=_optional(obj, "repository.default_branch"),
        updates=(RefUpdate(ref, before, after),),
    )


def parse_gitlab(obj: Mapping[str, Any]) -> Push:
    """GitLab's Push Hook and Tag Push Hook."""
    ref = _ref(_field(obj, "ref"), "ref")
    before, after = _sha(obj, "before"), _sha(obj, "after")
    _field(obj, "project", dict)
    return Push(
        repository=_optional(obj, "project.path_with_namespace") or "",
        urls=_urls(obj, *GITLAB_URLS),
        default_branch=_optional(obj, "project.default_branch"),
        updates=(RefUpdate(ref, before, after),),
    )


def parse_bitbucket(obj: Mapping[str, Any]) -> Push:
    """Bitbucket Cloud's repo:push: one delivery may carry several changes."""
    changes = _field(obj, "push.changes", list)
    updates = tuple(u for i, c in enumerate(changes) if (u := _bitbucket_change(c, i)))
    if not updates:
        raise _bad("payload field 'push.changes' holds no change")
    return Push(
        repository=_optional(obj, "repository.full_name") or "",
        urls=_urls(obj, "repository.links.html.href"),
        default_branch=_optional(obj, "repository.mainbranch.name"),
        updates=updates,
    )


def _bitbucket_change(change: Any, index: int) -> RefUpdate | None:
    where = f"push.changes.{index}"
    if not isinstance(change, dict):
        raise _bad(f"payload field {where!r} is not an object")
    new, old = change.get("new"), change.get("old")
    side = new if isinstance(new, dict) else old
    if not isinstance(side, dict):
        return None
    prefix = "refs/tags/" if side.get("type") == "tag" else "refs/heads/"
    ref = _ref(prefix + str(_field(side, "name")), f"{where}.name")
    after = _sha(new, "target.hash") if isinstance(new, dict) else ZERO_SHA
    before = _sha(old, "target.hash") if isinstance(old, dict) else ZERO_SHA
    return RefUpdate(ref, before, after)


# ─── the providers ────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Provider:
    """How one forge names its event and delivery, signs, and shapes its push payload."""

    name: str
    event_headers: tuple[str, ...]
    delivery_headers: tuple[str, ...]
    push_events: frozenset[str]
    verify: Callable[[Headers, bytes, bytes, float], None]
    parse: Callable[[Mapping[str, Any]], Push]
    forms: bool = False  # accepts application/x-www-form-urlencoded with a `payload` field
    ping_events: frozenset[str] = field(default_factory=frozenset)


PROVIDER = {
    "github": Provider(
        "github", ("X-GitHub-Event",), ("X-GitHub-Delivery",), frozenset({"push"}),
        verify_github, parse_github, forms=True, ping_events=frozenset({"ping"}),
    ),
    "gitlab": Provider(
        "gitlab", ("X-Gitlab-Event",),
        ("webhook-id", "Idempotency-Key", "X-Gitlab-Event-UUID"),
        frozenset({"Push Hook", "Tag Push Hook"}), verify_gitlab, parse_gitlab,
    ),
    "gitea": Provider(
        "gitea", ("X-Forgejo-Event", "X-Gitea-Event"), ("X-Forgejo-Delivery", "X-Gitea-Delivery"),
        frozenset({"push"}), verify_gitea, parse_github, forms=True,
    ),
    "bitbucket": Provider(
        "bitbucket", ("X-Event-Key",), ("X-Request-UUID",), frozenset({"repo:push"}),
        verify_bitbucket, parse_bitbucket,
    ),
}  # fmt: skip
FORGE_NAMES = {
    "github": "GitHub",
    "gitlab": "GitLab",
    "gitea": "Gitea/Forgejo",
    "bitbucket": "Bitbucket",
}


# (event header, forge) in the order forges are told apart: Gitea first, as it also sends GitHub's
_SENDERS = tuple(
    (h, name) for name in ("gitea", "gitlab", "bitbucket", "github")
    for h in PROVIDER[name].event_headers
)  # fmt: skip


def detect_provider(headers: Headers) -> str | None:
    """Which forge sent this, by its headers; Gitea first, as it also sends GitHub's."""
    for header, name in _SENDERS:
        if header in headers:
            return name
    return None


def delivery_id(provider: Provider, headers: Headers, fingerprint: str) -> str:
    """The spool id of a delivery: `<provider>:<delivery>`, safe for the trigger id charset."""
    given = next((headers[h].strip() for h in provider.delivery_headers if headers.get(h)), "")
    if not given:
        delivery = f"body-{fingerprint[:40]}"
    elif DELIVERY.fullmatch(given):
        delivery = given
    else:
        delivery = "h-" + hashlib.sha256(given.encode("utf-8", "replace")).hexdigest()[:40]
    return f"{provider.name}:{delivery}"


def load_json(raw: bytes) -> dict[str, Any]:
    """UTF-8 JSON object or a 400: invalid UTF-8, bad JSON and deep nesting included."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _bad(f"body is not valid UTF-8 (byte {err.start})") from err
    try:
        obj = orjson.loads(text)  # a quarter of json.loads' time for a forge's 8 KB push
    except orjson.JSONDecodeError as err:
        if str(err).startswith("depth limit"):  # orjson stops at 1,024 levels
            raise _bad("body is nested too deeply to be a webhook") from err
        raise _bad(f"body is not JSON: {err}") from err
    if not isinstance(obj, dict):
        raise _bad("body is JSON but not an object")
    return obj


def form_payload(raw: bytes) -> bytes:
    """The JSON in the `payload` field of a form-encoded delivery."""
    try:
        fields = urllib.parse.parse_qs(raw.decode("ascii"), errors="strict", max_num_fields=64)
    except (UnicodeDecodeError, ValueError) as err:
        raise _bad(f"form body cannot be read: {err}") from err
    if len(fields.get("payload", [])) != 1:
        raise _bad("form body lacks the field 'payload'")
    return fields["payload"][0].encode()


def _parse_body(raw: bytes, form: bool) -> dict[str, Any]:
    return load_json(form_payload(raw) if form else raw)


# ─── the receiver ─────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class _Delivery:
    """A verified, parsed delivery on its way to becoming a trigger."""

    provider: Provider
    trigger_id: str
    fingerprint: str
    event: str
    body: dict[str, Any]


class WebhookReceiver:
    """`POST /hooks/<provider>`: verify, dedupe, match, make durable, answer."""

    def __init__(
        self,
        secret: str,
        spool: WebhookSpool,
        resolve: Resolver,
        emit: Emit,
        *,
        max_body: int = MAX_BODY,
        read_timeout: float = READ_TIMEOUT_S,
        clock: Callable[[], float] = time.time,
        refusals: RefusalTally | None = None,
        deliveries: Deliveries | None = None,
    ) -> None:
        self._secret = secret.encode()
        self._spool = spool
        self._resolver = resolve
        self._emit = emit
        self._max_body = max_body
        self._read_timeout = read_timeout
        self._clock = clock
        self.refusals = refusals or RefusalTally()
        self.deliveries = deliveries
        self.slow_bodies = 0  # deliveries whose body did not arrive within read_timeout

    def add_routes(self, app: web.Application) -> None:
        for name in PROVIDERS:
            app.router.add_post(f"/hooks/{name}", self._handler(PROVIDER[name]))

    def _handler(self, provider: Provider) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.Response:
            return await self.handle(provider, request)

        return handle

    async def handle(self, provider: Provider, request: web.Request) -> web.Response:
        """Answer one delivery; every refusal is an event and a JSON reason, never a traceback."""
        source, said = source_of(request.remote), ""
        try:
            delivery = await self._receive(provider, request)
            said = delivery.trigger_id.partition(":")[2]
            response = await self._dispatch(delivery)
        except WebhookRefused as err:
            said = said or _given_id(provider, request.headers)  # as sent, when not verified
            self._refused(provider, source, err)
            response = _answer({"status": "rejected", "reason": err.reason}, status=err.status)
            if err.status in (408, 413):
                response.force_close()  # the rest of the body is not worth a kept-alive connection
        if self.deliveries is not None:  # every answer, refusals the tally summarised included
            body = response.get(ANSWER, {})
            self.deliveries.answered(provider.name, said, response.status, body, source)
        return response

    def _refused(self, provider: Provider, source: str, err: WebhookRefused) -> None:
        """At most one event per source address per interval; the rest become one summary."""
        write, summaries = self.refusals.refuse(source, err.status)
        for burst in summaries:
            said = ev.WebhookRejected(
                message=burst.message, status=burst.status, source=burst.source, more=burst.more
            )
            self._record(said)
        if write:
            name, status = provider.name, err.status
            said = ev.WebhookRejected(
                provider=name, message=err.reason, status=status, source=source
            )
            self._record(said)

    async def _receive(self, provider: Provider, request: web.Request) -> _Delivery:
        """Everything before the payload means anything: secret, forge, type, size, signature."""
        if not self._secret:
            raise WebhookRefused(403, DISABLED_MESSAGE)
        headers = request.headers
        event = _check_forge(provider, headers)
        form = _check_content_type(provider, request.content_type)
        raw = await self._read_body(request)
        provider.verify(headers, self._secret, raw, self._clock())
        fingerprint = hashlib.sha256(raw).hexdigest()
        if len(raw) > PARSE_IN_THREAD_BYTES:
            body = await asyncio.to_thread(_parse_body, raw, form)
        else:
            body = _parse_body(raw, form)
        trigger_id = delivery_id(provider, headers, fingerprint)
        return _Delivery(provider, trigger_id, fingerprint, event, body)

    async def _read_body(self, request: web.Request) -> bytes:
        """The raw body, at most `max_body` bytes, within `read_timeout` seconds (slow drips)."""
        if request.content_length is not None and request.content_length > self._max_body:
            raise WebhookRefused(413, f"body is larger than {self._max_body} bytes")
        try:
            if request.content.is_eof():  # it came with the headers: nothing to wait for
                raw = request.content.read_nowait()
            else:
                raw = await self._read_arriving(request.content)
        except (aiohttp.ClientPayloadError, ConnectionError) as err:
            raise _bad(f"body was cut short: {err}") from err
        if len(raw) > self._max_body:
            raise WebhookRefused(413, f"body is larger than {self._max_body} bytes")
        return raw

    async def _read_arriving(self, content: aiohttp.StreamReader) -> bytes:
        """The body as it arrives, refused once past `max_body` or `read_timeout`."""
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self._read_timeout):
                while chunk := await content.read(1 << 16):
                    size += len(chunk)
                    if size > self._max_body:
                        raise WebhookRefused(413, f"body is larger than {self._max_body} bytes")
                    chunks.append(chunk)
        except TimeoutError as err:
            self.slow_bodies += 1
            raise WebhookRefused(408, f"body not received within {self._read_timeout:g} s") from err
        return b"".join(chunks)

    async def _dispatch(self, delivery: _Delivery) -> web.Response:
        provider, event = delivery.provider, delivery.event
        if event in provider.ping_events:
            pinged = ev.WebhookPinged(message="the forge says hello")
            self._record(pinged, delivery)
            return _answer({"status": "pong"}, status=200)
        if event not in provider.push_events:
            return self._ignored(delivery, f"{_shown(event)} events start nothing; pushes do")
        push = provider.parse(delivery.body)
        known = self._spool.fingerprint(delivery.trigger_id)
        if known is not None:
            return self._redelivered(delivery, known)
        if (first := self._spool.carried(delivery.fingerprint)) is not None:
            return self._replayed(delivery, first)
        return await self._push(delivery, push)

    async def _push(self, delivery: _Delivery, push: Push) -> web.Response:
        targets, hq, reasons = self._match(push, push.updates)
        if hq is None and not targets and all(u.deleted for u in push.updates):
            return self._ignored(delivery, "a deleted branch or tag starts no build")
        if hq is None and not targets:
            return self._ignored(delivery, "; ".join(dict.fromkeys(reasons)))
        trigger = _trigger(delivery, push, targets, hq, self._clock())
        return await self._queue(delivery, push, trigger, {} if hq else targets)

    def _match(
        self, push: Push, live: Sequence[RefUpdate]
    ) -> tuple[dict[str, RefUpdate], RefUpdate | None, list[str]]:
        """Apps per ref update (the first update an app follows wins), HQ's update, why not.
        A deleted branch concerns only the apps it is a preview of (pipeline/previews.py)."""
        targets: dict[str, RefUpdate] = {}
        hq: RefUpdate | None = None
        reasons: list[str] = []
        for update in live:
            found = self._resolver.resolve(push.urls, update.ref, push.default_branch)
            if found.hq and hq is None and not update.deleted:
                hq = update
            for app in found.previews if update.deleted else found.apps + found.previews:
                targets.setdefault(app, update)
            if found.reason:
                reasons.append(f"{update.ref}: {found.reason}")
        return targets, hq, reasons

    async def _queue(
        self, delivery: _Delivery, push: Push, trigger: Trigger, targets: Mapping[str, RefUpdate]
    ) -> web.Response:
        """Put the one trigger of this delivery (its apps: `targets`); answer once durable."""
        try:
            fresh = await self._spool.put(trigger)
        except SpoolFull as err:  # refused before a byte was written: 507, the forge retries
            log.warning("webhook: %s", err)
            raise WebhookRefused(507, f"{err}; the forge should retry") from err
        except SpoolError as err:
            log.warning("webhook: %s", err)
            raise WebhookRefused(
                503, "could not store the delivery; the forge should retry"
            ) from err
        if not fresh:
            return self._redelivered(delivery, self._spool.fingerprint(trigger.id))
        deploys = dict(trigger.data.get("deploys", {})) if targets else {}  # Trigger.webhook's
        self._record_received(delivery, push, trigger, targets, deploys)
        answer: dict[str, Any] = {"status": "queued", "deploys": deploys}
        if trigger.kind == TriggerKind.HQ_SYNC:
            answer["hq"] = True
        return _answer(answer, status=202)

    def _redelivered(self, delivery: _Delivery, known: str | None) -> web.Response:
        if known is not None and hmac.compare_digest(known, delivery.fingerprint):
            self._record(ev.WebhookRedelivered(message="seen before; started nothing"), delivery)
            return _answer({"status": "duplicate"}, status=200)
        reason = "this delivery id was used before for a different body; started nothing"
        self._record(ev.WebhookRejected(message=reason, status=409), delivery)
        return _answer({"status": "rejected", "reason": reason}, status=409)

    def _replayed(self, delivery: _Delivery, first: str) -> web.Response:
        """The same signed body under a new delivery id: a replay (or a forge's retry)."""
        said = f"the same body came before as {first}; started nothing"
        self._record(ev.WebhookRedelivered(message=said), delivery)
        return _answer({"status": "duplicate"}, status=200)

    def _ignored(self, delivery: _Delivery, reason: str) -> web.Response:
        self._record(ev.WebhookIgnored(message=reason), delivery)
        return _answer({"status": "ignored", "reason": reason}, status=202)

    def _record_received(
        self,
        delivery: _Delivery,
        push: Push,
        trigger: Trigger,
        targets: Mapping[str, RefUpdate],
        deploys: Mapping[str, str],
    ) -> None:
        repo = push.repository or push.urls[0]
        if trigger.kind == TriggerKind.HQ_SYNC:
            self._record(ev.WebhookReceived(message=f"push to HQ {repo}"), delivery)
        provider, tid = delivery.provider.name, delivery.trigger_id
        for app, update in targets.items():
            said = f"{update.ref} of {repo} pushed"
            event = ev.WebhookReceived(
                app=app, sha=update.new, deploy=deploys[app], message=said,
                provider=provider, delivery=tid,
            )  # fmt: skip
            self._emit(event.record())  # named after its delivery at once: no `replace`

    def _record(self, event: ev.WebhookEvent, delivery: _Delivery | None = None) -> None:
        """One event-log record, named after the delivery when there is one; it carries ids and
        reasons, never secrets, tokens or signatures."""
        if delivery is not None:
            event = replace(event, provider=delivery.provider.name, delivery=delivery.trigger_id)
        self._emit(event.record())


def _trigger(
    delivery: _Delivery,
    push: Push,
    targets: Mapping[str, RefUpdate],
    hq: RefUpdate | None,
    now: float,
) -> Trigger:
    """The one trigger of a delivery: a sync of HQ when it moved, else each app's deploy."""
    tid, provider, fingerprint = delivery.trigger_id, delivery.provider.name, delivery.fingerprint
    if hq is not None:
        return Trigger.hq_webhook(
            tid, provider=provider, repository=push.repository, update=hq,
            fingerprint=fingerprint, received=now,
        )  # fmt: skip
    return Trigger.webhook(
        tid, provider=provider, repository=push.repository, targets=targets,
        fingerprint=fingerprint, received=now,
    )  # fmt: skip


def _answer(body: dict[str, Any], status: int) -> web.Response:
    """A JSON answer that keeps its body at hand (`response[ANSWER]`) for `Deliveries`."""
    response = web.Response(body=orjson.dumps(body), status=status, headers=_JSON_HEADERS)
    response[ANSWER] = body
    return response


def _check_forge(provider: Provider, headers: Headers) -> str:
    """The event name, once the headers say this delivery comes from this URL's forge."""
    sender = detect_provider(headers)
    if sender is None:
        wanted = provider.event_headers[-1]
        raise _bad(f"no {wanted} header: this URL takes {FORGE_NAMES[provider.name]} webhooks")
    if sender != provider.name:
        raise _bad(
            f"this is a {FORGE_NAMES[sender]} webhook on the {FORGE_NAMES[provider.name]} URL: "
            f"use /hooks/{sender}"
        )
    return next((headers[h] for h in provider.event_headers if h in headers), "").strip()


def _check_content_type(provider: Provider, content_type: str) -> bool:
    """True for a form-encoded delivery, False for JSON; 415 for anything else."""
    if content_type == "application/json":
        return False
    if provider.forms and content_type == "application/x-www-form-urlencoded":
        return True
    accepted = "application/json" + (
        " or application/x-www-form-urlencoded" if provider.forms else ""
    )
    raise WebhookRefused(415, f"content type {_shown(content_type)} is not {accepted}")


def _given_id(provider: Provider, headers: Headers) -> str:
    """The delivery id the forge sent, as shown before the delivery is verified (cut short)."""
    given = next((headers[h].strip() for h in provider.delivery_headers if headers.get(h)), "")
    return given[:100]


def _shown(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")
