"""The webhook receiver on a real aiohttp server with a real spool, driven over real HTTP.

Every case checks what the forge sees (status, JSON) and what the spool holds afterwards,
read back from its journal on disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from hyperdrive.eventlog import JsonlEventLog
from hyperdrive.hooks.deliveries import Deliveries
from hyperdrive.hooks.refusals import RefusalTally
from hyperdrive.hooks.webhook import MAX_BODY, StaticResolver, WebhookReceiver
from hyperdrive.spool import JOURNAL, FileSpool, read_journal
from hyperdrive.triggers import Trigger
from tests.fixtures.webhooks import forge

READ_TIMEOUT = 2.0
LINGER = 10.0  # aiohttp reads (and drops) what is left of a refused body this long at most
APPS = {
    "web": ("git@github.com:Octo-Org/web.git", None),
    "api": ("https://gitlab.example.com/acme/platform/api", None),
    "api-release": ("https://gitlab.example.com/acme/platform/api.git", "v1.0.0"),
    "site": ("https://gitea.example.com/ops/site", None),
    "blog": ("ssh://git@codeberg.org/ops/blog.git", None),
    "shop": ("git@bitbucket.org:teamx/shop.git", None),
}
HQ = "https://github.com/octo-org/hq.git#main"


@dataclass
class Server:
    """A running receiver: its base URL, spool folder and the events it emitted."""

    url: str
    spool_dir: Path
    stop: Callable[[], Awaitable[None]]
    events: list[dict[str, Any]] = field(default_factory=list)
    sinks: list[Callable[[dict[str, Any]], object]] = field(default_factory=list)

    def triggers(self) -> dict[str, Trigger]:
        """What the journal on disk holds, as a restarted daemon would read it."""
        pending, _seen, _records = read_journal(self.spool_dir / JOURNAL)
        return pending

    async def post(
        self, provider: str, headers: dict[str, str], body: bytes | Any
    ) -> tuple[int, dict[str, Any]]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{self.url}/hooks/{provider}", data=body, headers=headers) as response,
        ):
            return response.status, await response.json()


async def start(
    spool_dir: Path,
    secret: str = forge.SECRET,
    refusals: RefusalTally | None = None,
    deliveries: Deliveries | None = None,
) -> Server:
    spool = FileSpool(spool_dir)
    await spool.open()
    events: list[dict[str, Any]] = []
    sinks: list[Callable[[dict[str, Any]], object]] = [events.append]  # a test may add a log

    def emit(record: dict[str, Any]) -> None:
        for sink in sinks:
            sink(record)

    resolver = StaticResolver(APPS, HQ)
    receiver = WebhookReceiver(
        secret, spool, resolver, emit, read_timeout=READ_TIMEOUT, refusals=refusals,
        deliveries=deliveries,
    )  # fmt: skip
    app = web.Application()
    receiver.add_routes(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]

    async def stop() -> None:
        await runner.cleanup()
        await spool.close()

    return Server(f"http://127.0.0.1:{port}", spool_dir, stop, events, sinks)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    running = await start(tmp_path / "spool")
    yield running
    await running.stop()


def no_secrets_in(server: Server, *secrets: str) -> None:
    text = json.dumps(server.events)
    for secret in (forge.SECRET, *secrets):
        assert secret not in text


# ─── each forge's push becomes one durable trigger ───────────────────────────


async def test_every_answer_is_remembered_where_the_log_summarises_refusals(
    tmp_path: Path,
) -> None:
    deliveries = Deliveries()
    running = await start(tmp_path / "spool", deliveries=deliveries)
    try:
        headers, body = forge.github(forge.payload("github_push"), delivery="ok-1")
        assert (await running.post("github", headers, body))[0] == 202
        assert (await running.post("github", headers, body))[0] == 200  # a redelivery
        for n in range(3):
            forged = {**headers, "X-GitHub-Delivery": f"bad-{n}", "X-Hub-Signature-256": "x"}
            assert (await running.post("github", forged, body))[0] == 401
    finally:
        await running.stop()
    said = [(d.delivery, d.status, d.answer) for d in deliveries.recent("github")]
    assert said == [
        ("bad-2", 401, "rejected"), ("bad-1", 401, "rejected"), ("bad-0", 401, "rejected"),
        ("ok-1", 200, "duplicate"), ("ok-1", 202, "queued"),
    ]  # fmt: skip
    assert deliveries.recent("github")[-1].deploys == (("web", "github:ok-1:web"),)
    assert "X-Hub-Signature-256" in deliveries.recent("github")[0].reason
    rejected = [e for e in running.events if e["event"] == "WebhookRejected"]
    assert len(rejected) == 1, "the log writes the first refusal of the burst only"


async def test_github_push_is_queued_durably(server: Server) -> None:
    headers, body = forge.github(forge.payload("github_push"), delivery="d-1")
    status, answer = await server.post("github", headers, body)
    assert (status, answer) == (202, {"status": "queued", "deploys": {"web": "github:d-1:web"}})
    trigger = server.triggers()["github:d-1"]
    assert trigger.kind == "webhook"
    assert list(trigger.targets) == ["web"]
    assert trigger.data["ref"] == "refs/heads/main"
    assert trigger.data["new"] == "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"
    assert trigger.data["repository"] == "octo-org/web"
    assert trigger.fingerprint == hashlib.sha256(body).hexdigest()
    assert [e["event"] for e in server.events] == ["WebhookReceived"]
    assert server.events[0]["deploy"] == "github:d-1:web"
    no_secrets_in(server, headers["X-Hub-Signature-256"][7:])


async def test_github_form_encoded_push(server: Server) -> None:
    headers, body = forge.github(forge.payload("github_push"), delivery="form-1", form=True)
    status, answer = await server.post("github", headers, body)
    assert status == 202
    assert answer["deploys"] == {"web": "github:form-1:web"}
    assert "github:form-1" in server.triggers()


@pytest.mark.parametrize("signed", [False, True])
async def test_gitlab_push_with_token_or_signed_headers(server: Server, signed: bool) -> None:
    headers, body = forge.gitlab(
        forge.payload("gitlab_push"), delivery="gl-1", signed=signed, token=not signed
    )
    status, answer = await server.post("gitlab", headers, body)
    assert (status, answer["deploys"]) == (202, {"api": "gitlab:gl-1:api"})
    assert (
        server.triggers()["gitlab:gl-1"].data["new"] == "da1560886d4f094c3e6c9ef40349f7d38b5d27d7"
    )
    if signed:
        no_secrets_in(server, headers["webhook-signature"][3:])


async def test_gitlab_tag_push_reaches_the_app_that_follows_the_tag(server: Server) -> None:
    headers, body = forge.gitlab(
        forge.payload("gitlab_tag_push"), event="Tag Push Hook", delivery="t-1"
    )
    status, answer = await server.post("gitlab", headers, body)
    assert (status, answer["deploys"]) == (202, {"api-release": "gitlab:t-1:api-release"})
    assert server.triggers()["gitlab:t-1"].data["ref"] == "refs/tags/v1.0.0"


@pytest.mark.parametrize(
    ("name", "app", "forgejo"), [("gitea_push", "site", False), ("forgejo_push", "blog", True)]
)
async def test_gitea_and_forgejo_pushes(server: Server, name: str, app: str, forgejo: bool) -> None:
    headers, body = forge.gitea(forge.payload(name), forgejo=forgejo, delivery="g-1")
    status, answer = await server.post("gitea", headers, body)
    assert (status, answer["deploys"]) == (202, {app: f"gitea:g-1:{app}"})
    assert list(server.triggers()["gitea:g-1"].targets) == [app]


async def test_bitbucket_push(server: Server) -> None:
    headers, body = forge.bitbucket(forge.payload("bitbucket_push"), delivery="{b-1}")
    status, answer = await server.post("bitbucket", headers, body)
    assert status == 202
    ((app, deploy),) = answer["deploys"].items()
    assert app == "shop"
    trigger_id = deploy.rsplit(":", 1)[0]
    assert server.triggers()[trigger_id].data["new"] == "c4f8a0f1b9e1f0c2d3a4b5c6d7e8f9a0b1c2d3e4"


async def test_a_signed_bitbucket_push_of_20k_changes_writes_one_capped_line(
    tmp_path: Path,
) -> None:
    log = JsonlEventLog(tmp_path / "events.jsonl")
    log.open()
    server = await start(tmp_path / "spool")
    server.sinks.append(log.append)
    try:

        def many(obj: dict[str, Any]) -> None:
            (change,) = obj["push"]["changes"]
            branches = [json.loads(json.dumps(change)) for _ in range(20_000)]
            for n, branch in enumerate(branches):
                branch["new"]["name"] = branch["old"]["name"] = f"feature-{n}"
            obj["push"]["changes"] = branches

        headers, body = forge.bitbucket(forge.changed("bitbucket_push", many), delivery="{b-20k}")
        assert len(body) > 1_000_000
        status, answer = await server.post("bitbucket", headers, io.BytesIO(body))
        assert (status, answer["status"]) == (202, "ignored")
        (line,) = log.path.read_bytes().splitlines()
        assert len(line) <= 64 * 1024
        stored = json.loads(line)
        assert (stored["event"], stored["provider"]) == ("WebhookIgnored", "bitbucket")
        assert stored["message"].startswith("refs/heads/feature-0: ")
        assert "[cut: this event was " in stored["message"]
    finally:
        await server.stop()
        log.close()


async def test_hq_push_queues_an_hq_sync(server: Server) -> None:
    def to_hq(obj: dict[str, Any]) -> None:
        obj["repository"].update(
            clone_url="https://github.com/octo-org/hq.git", ssh_url="git@github.com:octo-org/hq.git"
        )
        obj["repository"].update(
            html_url="https://github.com/octo-org/hq", git_url="git://github.com/octo-org/hq.git"
        )

    headers, body = forge.github(forge.changed("github_push", to_hq), delivery="hq-1")
    status, answer = await server.post("github", headers, body)
    assert (status, answer) == (202, {"status": "queued", "deploys": {}, "hq": True})
    assert server.triggers()["github:hq-1"].kind == "hq-sync"


async def test_ping_answers_200_and_stores_nothing(server: Server) -> None:
    headers, body = forge.github(forge.payload("github_ping"), event="ping")
    assert await server.post("github", headers, body) == (200, {"status": "pong"})
    assert server.triggers() == {}


async def test_other_events_are_ignored_with_a_reason(server: Server) -> None:
    headers, body = forge.github(forge.payload("github_ping"), event="issues")
    status, answer = await server.post("github", headers, body)
    assert (status, answer["status"]) == (202, "ignored")
    assert "'issues'" in answer["reason"]
    assert server.triggers() == {}


# ─── redeliveries ────────────────────────────────────────────────────────────


async def test_replayed_delivery_is_a_duplicate_also_after_restart(tmp_path: Path) -> None:
    first = await start(tmp_path / "spool")
    headers, body = forge.github(forge.payload("github_push"), delivery="again")
    assert (await first.post("github", headers, body))[0] == 202
    assert await first.post("github", headers, body) == (200, {"status": "duplicate"})
    await first.stop()
    second = await start(tmp_path / "spool")
    try:
        assert await second.post("github", headers, body) == (200, {"status": "duplicate"})
        assert list(second.triggers()) == ["github:again"]
    finally:
        await second.stop()


async def test_a_signed_body_resent_under_a_fresh_delivery_id_is_a_duplicate(
    tmp_path: Path,
) -> None:
    """The signature covers the body, not the id: a captured push re-sent as new starts nothing,
    while it is pending, once it is done, and after a restart."""
    first = await start(tmp_path / "spool")
    headers, body = forge.github(forge.payload("github_push"), delivery="captured")
    assert (await first.post("github", headers, body))[0] == 202
    replay = {**headers, "X-GitHub-Delivery": str(uuid.uuid4())}
    assert await first.post("github", replay, body) == (200, {"status": "duplicate"})
    assert first.events[-1]["event"] == "WebhookRedelivered"
    assert "same body came before as github:captured" in first.events[-1]["message"]
    await first.stop()
    second = await start(tmp_path / "spool")
    try:
        replay = {**headers, "X-GitHub-Delivery": str(uuid.uuid4())}
        assert await second.post("github", replay, body) == (200, {"status": "duplicate"})
        assert list(second.triggers()) == ["github:captured"]
    finally:
        await second.stop()


async def test_same_delivery_id_with_another_body_is_a_conflict(server: Server) -> None:
    headers, body = forge.github(forge.payload("github_push"), delivery="clash")
    assert (await server.post("github", headers, body))[0] == 202

    def other_sha(obj: dict[str, Any]) -> None:
        obj["after"] = "1" * 40

    headers2, body2 = forge.github(forge.changed("github_push", other_sha), delivery="clash")
    status, answer = await server.post("github", headers2, body2)
    assert status == 409
    assert "different body" in answer["reason"]
    (trigger,) = server.triggers().values()
    assert trigger.data["new"] == "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"
    assert server.events[-1]["event"] == "WebhookRejected"


async def test_concurrent_redeliveries_start_one_deploy(server: Server) -> None:
    headers, body = forge.github(forge.payload("github_push"), delivery="race")
    answers = await asyncio.gather(*(server.post("github", headers, body) for _ in range(8)))
    assert sorted(status for status, _ in answers) == [200] * 7 + [202]
    assert list(server.triggers()) == ["github:race"]


async def test_missing_delivery_id_is_derived_from_the_body(server: Server) -> None:
    headers, body = forge.github(forge.payload("github_push"))
    del headers["X-GitHub-Delivery"]
    assert (await server.post("github", headers, body))[0] == 202
    assert await server.post("github", headers, body) == (200, {"status": "duplicate"})
    (trigger_id,) = server.triggers()
    assert trigger_id.startswith("github:body-")


# ─── refusals: nothing is stored ─────────────────────────────────────────────


def push_headers(**changes: str | None) -> tuple[dict[str, str], bytes]:
    headers, body = forge.github(forge.payload("github_push"))
    for key, value in changes.items():
        name = key.replace("_", "-")
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    return headers, body


@pytest.mark.parametrize(
    ("signature", "reason"),
    [
        (None, "missing X-Hub-Signature-256"),
        ("sha256=" + "0" * 64, "does not match"),
        ("sha256=757107ea0eb2509f", "does not match"),
        ("sha256=" + forge.hex_hmac(forge.SECRET, b"another body"), "does not match"),
        (
            "sha256=" + forge.hex_hmac("wrong secret", forge.payload("github_push")),
            "does not match",
        ),
        ("sha256=é" + "0" * 63, "does not match"),
    ],
)
async def test_bad_signatures_are_refused(
    server: Server, signature: str | None, reason: str
) -> None:
    headers, body = push_headers(X_Hub_Signature_256=signature)
    status, answer = await server.post("github", headers, body)
    assert status == 401
    assert reason in answer["reason"]
    assert server.triggers() == {}
    assert server.events[-1]["event"] == "WebhookRejected"
    no_secrets_in(server, "0" * 64)


class Clock:
    """The tally's clock, moved by the test: an interval passes without waiting for it."""

    now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_a_flood_of_unsigned_posts_is_one_event_and_one_summary(tmp_path: Path) -> None:
    clock = Clock()
    server = await start(tmp_path / "spool", refusals=RefusalTally(interval=60, clock=clock))
    try:
        headers, body = push_headers(X_Hub_Signature_256=None)
        answers = [await server.post("github", headers, body) for _ in range(40)]
        assert {status for status, _ in answers} == {401}, "every one is still refused"
        (first,) = server.events
        assert first["event"] == "WebhookRejected"
        assert first["source"] == "127.0.0.1"
        assert "missing X-Hub-Signature-256" in first["message"]
        clock.now += 60
        status, _ = await server.post("github", *push_headers(X_Hub_Signature_256=None))
        assert status == 401
        summary, again = server.events[1:]
        assert summary["message"] == "39 more refusals from 127.0.0.1 in the last 60 s"
        assert (summary["more"], summary["status"]) == (39, 401)
        assert again["message"] == first["message"]
        good_headers, good_body = forge.github(forge.payload("github_push"), delivery="ok-1")
        assert (await server.post("github", good_headers, good_body))[0] == 202
    finally:
        await server.stop()


async def test_gitlab_wrong_token_and_stale_signed_timestamp(server: Server) -> None:
    headers, body = forge.gitlab(forge.payload("gitlab_push"), "wrong")
    assert (await server.post("gitlab", headers, body))[0] == 401
    headers, body = forge.gitlab(
        forge.payload("gitlab_push"), token=False, signed=True, timestamp=int(time.time()) - 3600
    )
    status, answer = await server.post("gitlab", headers, body)
    assert status == 401
    assert "5 minutes" in answer["reason"]
    no_secrets_in(server, "wrong")
    assert server.triggers() == {}


async def test_github_payload_on_the_gitlab_url_is_refused(server: Server) -> None:
    headers, body = forge.github(forge.payload("github_push"))
    status, answer = await server.post("gitlab", headers, body)
    assert status == 400
    assert "/hooks/github" in answer["reason"]
    assert server.triggers() == {}


async def test_no_secret_refuses_everything_and_says_how_to_set_one(tmp_path: Path) -> None:
    bare = await start(tmp_path / "spool", secret="")
    try:
        headers, body = forge.github(forge.payload("github_push"), "")
        status, answer = await bare.post("github", headers, body)
        assert status == 403
        assert "HYPERDRIVE_WEBHOOK_SECRET" in answer["reason"]
        assert bare.triggers() == {}
    finally:
        await bare.stop()


async def test_wrong_content_type_is_415(server: Server) -> None:
    headers, body = push_headers(Content_Type="text/plain")
    assert (await server.post("github", headers, body))[0] == 415
    headers, body = forge.gitlab(forge.payload("gitlab_push"))
    headers["Content-Type"] = "application/x-www-form-urlencoded"
    assert (await server.post("gitlab", headers, body))[0] == 415


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"ref": "\xff\xfe"}', "UTF-8"),
        (b"[" * 100_000, "nested too deeply"),
        (b"[1, 2, 3]", "not an object"),
        (b'{"before": "' + b"0" * 40 + b'"}', "lacks the field 'ref'"),
        (b"{not json", "not JSON"),
    ],
)
async def test_bad_bodies_are_400_naming_the_problem(
    server: Server, body: bytes, reason: str
) -> None:
    headers, _ = forge.github(body)
    status, answer = await server.post("github", headers, body)
    assert status == 400
    assert reason in answer["reason"]
    assert server.triggers() == {}


def deleted(obj: dict[str, Any]) -> None:
    obj.update(deleted=True, after="0" * 40)


def other_repo(obj: dict[str, Any]) -> None:
    for key in ("clone_url", "ssh_url", "html_url", "git_url"):
        obj["repository"][key] = obj["repository"][key].replace("octo-org/web", "octo-org/nobody")


def other_branch(obj: dict[str, Any]) -> None:
    obj["ref"] = "refs/heads/feature"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (deleted, "deleted branch"),
        (other_repo, "no app's orders autodeploy this repository"),
        (other_branch, "web follow 'main'"),
    ],
)
async def test_pushes_that_start_nothing_are_ignored_with_a_reason(
    server: Server, change: Callable[[dict[str, Any]], None], reason: str
) -> None:
    headers, body = forge.github(forge.changed("github_push", change))
    status, answer = await server.post("github", headers, body)
    assert (status, answer["status"]) == (202, "ignored")
    assert reason in answer["reason"]
    assert server.triggers() == {}
    assert server.events[-1]["event"] == "WebhookIgnored"


# ─── limits ──────────────────────────────────────────────────────────────────


async def test_oversized_body_is_413(server: Server) -> None:
    headers, _ = forge.github(b"")
    status, answer = await server.post("github", headers, io.BytesIO(b" " * (MAX_BODY + 1)))
    assert status == 413

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(MAX_BODY // (1 << 20) + 1):
            yield b" " * (1 << 20)

    status, answer = await server.post("github", headers, chunks())
    assert (status, answer["status"]) == (413, "rejected")
    assert server.triggers() == {}


@pytest.mark.slow
async def test_slow_drip_body_is_cut_off(server: Server) -> None:
    """A client sending one byte a second gets 408 after the read timeout, then is hung up on."""
    headers, body = forge.github(forge.payload("github_push"))
    host, port = server.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    lines = ["POST /hooks/github HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    started = time.monotonic()
    answer = asyncio.ensure_future(reader.read(1 << 16))
    closed_at = None
    for offset in range(int(READ_TIMEOUT + LINGER + 5)):  # bounded: one byte a second
        if answer.done() and closed_at is None:
            assert answer.result().startswith(b"HTTP/1.1 408"), answer.result()[:60]
            assert time.monotonic() - started < READ_TIMEOUT + 2
            answer = asyncio.ensure_future(reader.read(1 << 16))
            closed_at = time.monotonic()
        elif answer.done():
            assert answer.result() == b"", "the server closes the connection"
            break
        try:
            writer.write(body[offset : offset + 1])
            await writer.drain()
        except ConnectionError:
            break
        await asyncio.wait({answer}, timeout=1)
    else:
        pytest.fail("the server kept a slow-drip connection open")
    assert closed_at is not None, "a 408 came first"
    assert time.monotonic() - started < READ_TIMEOUT + LINGER + 3
    writer.close()
    assert server.triggers() == {}
    assert server.events[-1]["event"] == "WebhookRejected"


async def test_after_every_refusal_a_good_delivery_still_works(server: Server) -> None:
    headers, body = push_headers(X_Hub_Signature_256="sha256=bad")
    assert (await server.post("github", headers, body))[0] == 401
    headers, body = forge.github(forge.payload("github_push"), delivery=str(uuid.uuid4()))
    assert (await server.post("github", headers, body))[0] == 202
