"""Outbound deliveries without a network: status payloads per forge, Standard Webhooks signing,
the delivery journal across restarts, and the courier's retries on a fake clock."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from hyperdrive.errors import HyperdriveError, OrdersRejected
from hyperdrive.headquarters import parse_orders
from hyperdrive.headquarters.orders import Forge, Orders
from hyperdrive.hooks.webhook import verify_gitlab
from hyperdrive.outbound import forges, keys
from hyperdrive.outbound.courier import Courier, Links, Request, backoff
from hyperdrive.outbound.journal import Delivery, DeliveryJournal
from hyperdrive.outbound.signing import signature, signed_headers
from hyperdrive.pipeline import events as ev
from hyperdrive.pipeline.fakes import FakeClock

SHA = "a" * 40
STATUS = forges.Status(SHA, forges.SUCCESS, "http://web.example/", "web is live", "hyperdrive/web")


# ─── forges ──────────────────────────────────────────────────────────────────


def test_github_status() -> None:
    url, body = forges.status_request(Forge("github", "acme/web"), STATUS)
    assert url == f"https://api.github.com/repos/acme/web/statuses/{SHA}"
    assert body == {
        "state": "success",
        "target_url": "http://web.example/",
        "description": "web is live",
        "context": "hyperdrive/web",
    }
    headers = forges.auth_headers("github", "tok")
    assert headers["Authorization"] == "Bearer tok"
    assert headers["Accept"] == "application/vnd.github+json"


def test_gitlab_status_encodes_the_project_path_and_says_failed() -> None:
    failed = forges.Status(
        SHA, forges.FAILURE, "http://hq/events", "health failed", "hyperdrive/web"
    )
    url, body = forges.status_request(Forge("gitlab", "group/sub/web"), failed)
    assert url == f"https://gitlab.com/api/v4/projects/group%2Fsub%2Fweb/statuses/{SHA}"
    assert body["state"] == "failed"
    assert body["name"] == "hyperdrive/web"
    assert forges.auth_headers("gitlab", "tok") == {"PRIVATE-TOKEN": "tok"}


def test_gitea_status_on_its_own_api() -> None:
    forge = Forge("gitea", "acme/web", "https://git.example/api/v1")
    url, body = forges.status_request(forge, STATUS)
    assert url == f"https://git.example/api/v1/repos/acme/web/statuses/{SHA}"
    assert body["context"] == "hyperdrive/web"
    assert forges.auth_headers("gitea", "tok") == {"Authorization": "token tok"}


def test_bitbucket_status() -> None:
    pending = forges.Status(SHA, forges.PENDING, "http://hq/events", "queued", "hyperdrive/web")
    url, body = forges.status_request(Forge("bitbucket", "team/web"), pending)
    assert url == f"https://api.bitbucket.org/2.0/repositories/team/web/commit/{SHA}/statuses/build"
    assert body == {
        "key": "hyperdrive/web",
        "state": "INPROGRESS",
        "url": "http://hq/events",
        "name": "hyperdrive/web",
        "description": "queued",
    }


def test_a_long_description_is_cut_to_githubs_limit() -> None:
    long = forges.Status(SHA, forges.FAILURE, "http://x/", "word " * 100, "c")
    _, body = forges.status_request(Forge("github", "a/b"), long)
    assert len(body["description"]) == forges.DESCRIPTION_MAX


def test_forge_and_notify_orders() -> None:
    orders = parse_orders(
        "forge gitea acme/web https://git.example/api/v1/\nnotify https://chat.example/hook\n",
        "web/orders",
    )
    assert orders.forge == Forge("gitea", "acme/web", "https://git.example/api/v1")
    assert orders.notify == ("https://chat.example/hook",)
    bad = (
        "forge sourceforge acme/web",
        "forge github acme",
        "forge github ../etc",
        "forge gitea acme/web",
        "notify ftp://x/",
        "notify https://user:pw@x/",
    )
    for line in bad:
        with pytest.raises(OrdersRejected, match=r"web/orders:1"):
            parse_orders(line + "\n", "web/orders")


# ─── Standard Webhooks ───────────────────────────────────────────────────────


def test_signature_matches_the_specs_example() -> None:
    """The example of the Standard Webhooks spec (and svix's documentation)."""
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert signature(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == expected


def test_our_receiver_accepts_what_we_sign() -> None:
    secret, body = "whsec_" + "QUJDREVGR0hJSktMTU5PUA==", b'{"a": 1}'
    headers = signed_headers(secret, "msg_1", 1_800_000_000, body)
    verify_gitlab(headers, secret.encode(), body, 1_800_000_010)  # raises if it does not match


# ─── keys ────────────────────────────────────────────────────────────────────


def test_secrets_are_kept_0600_and_refused_when_odd(tmp_path: Path) -> None:
    path = keys.store(tmp_path / "pk", "web", keys.FORGE_TOKEN, "  tok-123\n")
    assert path == tmp_path / "pk" / "web.forge-token"
    assert path.stat().st_mode & 0o777 == 0o600
    assert keys.load(tmp_path / "pk", "web", keys.FORGE_TOKEN) == "tok-123"
    assert keys.load(tmp_path / "pk", "api", keys.FORGE_TOKEN) is None
    for bad in ("", "a\nb", "x" * 5000):
        with pytest.raises(HyperdriveError):
            keys.store(tmp_path / "pk", "web", keys.NOTIFY_SECRET, bad)
    with pytest.raises(HyperdriveError):
        keys.store(tmp_path / "pk", "../etc", keys.FORGE_TOKEN, "tok")


# ─── the journal ─────────────────────────────────────────────────────────────


def delivery(n: int, chain: str = "") -> Delivery:
    return Delivery(f"msg_{n}", "web", "notify", "http://x/", {"n": n}, chain=chain, created=n)


def test_the_journal_survives_a_restart_and_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "outbound" / "deliveries.jsonl"
    journal = DeliveryJournal(path)
    journal.open()
    for n in range(3):
        journal.put(delivery(n))
    journal.tried(journal.pending["msg_1"], "HTTP 500", 42.0)
    journal.done(journal.pending["msg_0"], "sent")
    with path.open("ab") as fh:
        fh.write(b'{"op": "put", "deliv')  # a crash mid-append
    again = DeliveryJournal(path)
    again.open()
    assert sorted(again.pending) == ["msg_1", "msg_2"]
    assert again.pending["msg_1"].attempts == 1
    assert again.pending["msg_1"].due == 42.0
    assert "token" not in path.read_text()


def test_a_newer_status_replaces_an_undelivered_one_of_its_chain(tmp_path: Path) -> None:
    journal = DeliveryJournal(tmp_path / "j.jsonl")
    journal.open()
    journal.put(delivery(1, chain="web@sha"))
    replaced = journal.put(delivery(2, chain="web@sha"))
    assert [d.id for d in replaced] == ["msg_1"]
    assert list(journal.pending) == ["msg_2"]


# ─── the courier ─────────────────────────────────────────────────────────────


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff(30) == 600.0


class FakeForge:
    """Answers with the given statuses in turn (then 201), keeping every request."""

    def __init__(self, *answers: int | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[Request] = []

    async def __call__(self, request: Request) -> int:
        self.requests.append(request)
        answer = self.answers.pop(0) if self.answers else 201
        if isinstance(answer, Exception):
            raise answer
        return answer


def courier(tmp_path: Path, send: FakeForge, text: str, clock: FakeClock) -> Courier:
    journal = DeliveryJournal(tmp_path / "j.jsonl")
    journal.open()
    keys.store(tmp_path / "pk", "web", keys.FORGE_TOKEN, "sekrit-token")
    keys.store(tmp_path / "pk", "web", keys.NOTIFY_SECRET, "whsec_QUJDREVGR0hJSktMTU5PUA==")
    orders = parse_orders(text, "web/orders")
    emitted: list[ev.Event] = []

    def orders_of(app: str) -> Orders:
        return orders

    found = Courier(
        journal=journal,
        private_keys=tmp_path / "pk",
        orders=orders_of,
        owner=lambda app: app,
        mask=lambda text: text.replace("hunter2", "••••"),
        links=Links("hd.example", 80, 8421),
        clock=clock,
        emit=emitted.append,
        send=send,
    )
    found.emitted = emitted  # type: ignore[attr-defined]
    return found


async def test_statuses_go_pending_then_success_with_the_app_url(tmp_path: Path) -> None:
    forge, clock = FakeForge(), FakeClock()
    c = courier(tmp_path, forge, "forge github acme/web\n", clock)
    await c.on_event(ev.DeployQueued(app="web", deploy="t-1", sha=SHA))
    await c.send_due()
    await c.on_event(ev.DeployFinished(app="web", deploy="t-1", sha=SHA, url="http://web.hd/"))
    await c.send_due()
    states = [json.loads(r.body) for r in forge.requests]
    assert [s["state"] for s in states] == ["pending", "success"]
    assert states[0]["target_url"] == "http://hd.example:8421/apps/web/deploys/t-1"
    assert states[1]["target_url"] == "http://web.hd/"
    assert forge.requests[0].headers["Authorization"] == "Bearer sekrit-token"
    assert "sekrit" not in c.journal.path.read_text()


async def test_a_500_is_retried_after_the_backoff_on_the_clock(tmp_path: Path) -> None:
    forge, clock = FakeForge(500, TimeoutError()), FakeClock()
    c = courier(tmp_path, forge, "forge gitlab acme/web\n", clock)
    await c.on_event(ev.DeployFailed(app="web", deploy="t-1", sha=SHA, message="bad hunter2"))
    wait = await c.send_due()
    assert wait == pytest.approx(1.0, abs=0.1)
    assert await c.send_due() == pytest.approx(1.0, abs=0.1)  # not due yet: nothing sent
    assert len(forge.requests) == 1
    clock.advance(1.0)
    assert await c.send_due() == pytest.approx(2.0, abs=0.1)  # the hang: tried again later
    clock.advance(2.0)
    assert await c.send_due() is None
    assert len(forge.requests) == 3
    body = json.loads(forge.requests[-1].body)
    assert body["state"] == "failed"
    assert body["description"] == "bad ••••"
    names = [e.name for e in c.emitted]  # type: ignore[attr-defined]
    assert names == ["DeliveryDeferred", "DeliveryDeferred", "DeliverySent"]


async def test_a_final_refusal_or_a_missing_token_is_abandoned_and_said(tmp_path: Path) -> None:
    forge, clock = FakeForge(401), FakeClock()
    c = courier(tmp_path, forge, "forge github acme/web\n", clock)
    await c.on_event(ev.DeployQueued(app="web", deploy="t-1", sha=SHA))
    assert await c.send_due() is None
    (tmp_path / "pk" / "web.forge-token").unlink()
    await c.on_event(ev.DeployQueued(app="web", deploy="t-2", sha="b" * 40))
    await c.send_due()
    abandoned = [e.message for e in c.emitted if e.name == "DeliveryAbandoned"]  # type: ignore[attr-defined]
    assert "HTTP 401" in abandoned[0]
    assert "hd forge-token web" in abandoned[1]
    assert len(forge.requests) == 1


async def test_notify_is_signed_and_carries_no_env(tmp_path: Path) -> None:
    forge, clock = FakeForge(), FakeClock()
    c = courier(tmp_path, forge, "export DB=hunter2\nnotify https://chat.example/h\n", clock)
    await c.on_event(ev.DeployFinished(app="web", deploy="t-1", sha=SHA, url="http://w/"))
    await c.send_due()
    (request,) = forge.requests
    verify_gitlab(request.headers, b"whsec_QUJDREVGR0hJSktMTU5PUA==", request.body, clock.time())
    payload = json.loads(request.body)
    assert payload["type"] == "deploy.finished"
    assert payload["data"]["url"] == "http://w/"
    assert "hunter2" not in request.body.decode()


async def test_deliveries_resume_after_a_restart(tmp_path: Path) -> None:
    forge, clock = FakeForge(503), FakeClock()
    c = courier(tmp_path, forge, "forge github acme/web\n", clock)
    await c.on_event(ev.DeployQueued(app="web", deploy="t-1", sha=SHA))
    await c.send_due()
    clock.advance(5)
    later = FakeForge()
    again = courier(tmp_path, later, "forge github acme/web\n", clock)  # reopens the journal
    await again.send_due()
    assert [json.loads(r.body)["state"] for r in later.requests] == ["pending"]
    assert again.journal.pending == {}


async def test_a_forge_that_hangs_holds_up_only_its_own_deliveries(tmp_path: Path) -> None:
    release = asyncio.Event()
    seen: list[str] = []

    async def send(request: Request) -> int:
        seen.append(request.url)
        if "github" in request.url:
            await release.wait()  # the forge hangs (the real sender gives up after 10 s)
        return 204

    clock = FakeClock()
    c = courier(
        tmp_path, FakeForge(), "forge github acme/web\nnotify https://chat.example/h\n", clock
    )
    c.send = send
    await c.on_event(ev.DeployQueued(app="web", deploy="t-1", sha=SHA))
    tasks = c.start_due()
    for _ in range(500):  # bounded: the journal writes in a thread
        if c.emitted:  # type: ignore[attr-defined]
            break
        await asyncio.sleep(0.01)
    assert "DeliverySent" in [e.name for e in c.emitted]  # type: ignore[attr-defined]
    assert len(c.journal.pending) == 1  # the status, still on the wire
    assert c.start_due() == []  # not sent twice while it hangs
    release.set()
    await asyncio.gather(*tasks)
    assert c.journal.pending == {}
    assert len(seen) == 2


async def test_a_push_of_a_branch_that_does_not_deploy_tells_nobody(tmp_path: Path) -> None:
    forge, clock = FakeForge(), FakeClock()
    c = courier(tmp_path, forge, "forge github acme/web\n", clock)

    async def followed(app: str, orders: Orders) -> str:
        return "main"

    c.followed = followed
    await c.on_event(ev.DeployQueued(app="web", deploy="t-1", sha=SHA, ref="refs/heads/feature"))
    assert c.journal.pending == {}
    await c.on_event(ev.DeployQueued(app="web", deploy="t-2", sha=SHA, ref="refs/heads/main"))
    await c.send_due()
    assert [json.loads(r.body)["state"] for r in forge.requests] == ["pending"]


async def test_a_preview_reports_under_its_own_context_with_its_apps_token(
    tmp_path: Path,
) -> None:
    forge, clock = FakeForge(), FakeClock()
    c = courier(tmp_path, forge, "forge github acme/web\n", clock)
    c.owner = lambda app: "web"  # web--feature-x previews web
    await c.on_event(
        ev.DeployFinished(app="web--feature-x", deploy="t-1", sha=SHA, url="http://p/")
    )
    await c.send_due()
    (request,) = forge.requests
    assert json.loads(request.body)["context"] == "hyperdrive/web--feature-x"
    assert request.headers["Authorization"] == "Bearer sekrit-token"
