"""The dashboard without a browser: sessions, CSRF, sign-in refusals, the deploy history, and
its pages over real HTTP (aiohttp's test server) with an in-memory spool."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from hyperdrive.api import TokenStore
from hyperdrive.eventlog import JsonlEventLog
from hyperdrive.headquarters import Headquarters, parse_orders
from hyperdrive.hooks.deliveries import Deliveries
from hyperdrive.hooks.refusals import RefusalTally
from hyperdrive.pipeline.fleet import Fleet
from hyperdrive.pipeline.model import LIVE, STOPPED, Records, Ship
from hyperdrive.triggers import Trigger, TriggerKind
from hyperdrive.web.history import DeployHistory
from hyperdrive.web.routes import Dashboard, Sources
from hyperdrive.web.sessions import Sessions, SignInRefusals

SHA1, SHA2 = "1" * 40, "2" * 40


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_token_in_force_opens_a_session_and_a_wrong_one_does_not(tmp_path: Path) -> None:
    tokens = TokenStore(tmp_path / "tokens.json")
    token = tokens.create("alice")
    sessions = Sessions(tokens)
    session = sessions.sign_in(f" {token}\n")
    assert session is not None
    assert session.admiral == "alice"
    assert token not in repr(session), "a session keeps the token's digest, not the token"
    assert sessions.get(session.id) is session
    assert sessions.sign_in("not-a-token") is None
    assert sessions.sign_in("") is None
    assert sessions.sign_in("x" * 10_000) is None
    assert sessions.get("unknown") is None
    assert sessions.get(None) is None


def test_revoking_the_token_ends_its_sessions(tmp_path: Path) -> None:
    tokens = TokenStore(tmp_path / "tokens.json")
    sessions = Sessions(tokens)
    session = sessions.sign_in(tokens.create("alice"))
    assert session is not None
    (tmp_path / "tokens.json").write_text("{}")  # the admiral's token taken out
    assert sessions.get(session.id) is None
    assert len(sessions) == 0


def test_sessions_end_when_idle_or_old_and_are_bounded(tmp_path: Path) -> None:
    tokens = TokenStore(tmp_path / "tokens.json")
    token = tokens.create("alice")
    clock = Clock()
    sessions = Sessions(tokens, clock=clock, idle=60, max_age=300, limit=2)
    first = sessions.sign_in(token)
    assert first is not None
    for _ in range(5):  # used every 50 s: idle never ends it, age does
        clock.now += 50
        assert sessions.get(first.id) is first
    clock.now += 51
    assert sessions.get(first.id) is None
    idle = sessions.sign_in(token)
    assert idle is not None
    clock.now += 61
    assert sessions.get(idle.id) is None
    made = [sessions.sign_in(token) for _ in range(3)]
    assert len(sessions) == 2
    assert sessions.get(made[0].id if made[0] else "") is None, "the oldest made way"
    assert sessions.sign_out(made[2].id if made[2] else "") is not None
    assert sessions.get(made[2].id if made[2] else "") is None


def test_a_flood_of_bad_sign_ins_is_one_event_then_a_summary() -> None:
    written: list[dict[str, Any]] = []
    clock = Clock()
    refusals = SignInRefusals(written.append, RefusalTally(interval=60, clock=clock))
    for _ in range(500):
        refusals("192.0.2.7", "a wrong or revoked token")
    assert [e["event"] for e in written] == ["SignInRefused"]
    assert written[0]["source"] == "192.0.2.7"
    clock.now += 61
    refusals("198.51.100.1", "a wrong or revoked token")
    assert len(written) == 3
    summary = written[1]
    assert summary["more"] == 499
    assert "499 more refusals from 192.0.2.7" in summary["message"]


def event(name: str, deploy: str, **fields: Any) -> dict[str, Any]:
    return {"event": name, "deploy": deploy, "ts": "2026-12-01T10:00:00.000Z", **fields}


def deploy_events(deploy: str, app: str = "web", fail: bool = False) -> list[dict[str, Any]]:
    events = [
        event("PushReceived", deploy, app=app, sha=SHA1, admiral="alice"),
        event("DeployQueued", deploy, app=app, source="push"),
        event("StageFinished", deploy, app=app, stage="fetch", ms=30),
        event("HullBuildStarted", deploy, hull="busybox-1"),  # no app: known by its deploy
        event("ShipAssembled", deploy, app=app, ship=f"hd-{app}-1111111", ms=400),
    ]
    if fail:
        events.append(event("DeployFailed", deploy, app=app, stage="build", message="exit 3"))
        return events
    return [
        *events,
        event("ShipHealthy", deploy, app=app, ms=10),
        event("TrafficSwapped", deploy, app=app, ms=40),
        event("DeployFinished", deploy, app=app, ms=500),
    ]


def test_the_history_keeps_each_deploys_stages_and_outcome_newest_first() -> None:
    history = DeployHistory(per_app=3)
    for n in range(5):
        for e in deploy_events(f"d{n}", fail=n == 4):
            history.feed(e)
    runs = history.of("web")
    assert [r.id for r in runs] == ["d4", "d3", "d2"]
    failed, finished = runs[0], runs[1]
    assert (failed.outcome, failed.failed_stage, failed.message) == ("failed", "build", "exit 3")
    assert finished.outcome == "finished"
    assert finished.trigger == "push by alice"
    assert [(s.name, s.ms) for s in finished.stages] == [
        ("fetch", 30), ("assemble", 400), ("health", 10), ("swap", 40)
    ]  # fmt: skip
    assert finished.ship == "hd-web-1111111"
    history.feed(event("DeployQueued", "d9", app="web"))
    assert [r.id for r in history.in_flight()] == ["d9"]
    assert history.of("other") == []


def test_the_delivery_ring_keeps_the_newest_per_forge() -> None:
    ring = Deliveries(per_forge=2)
    for n in range(3):
        ring.answered("github", f"g{n}", 202, {"status": "queued", "deploys": {"web": "x"}}, "a")
    ring.answered("gitlab", "l0", 401, {"status": "rejected", "reason": "bad token"}, "b")
    assert [d.delivery for d in ring.recent("github")] == ["g2", "g1"]
    assert ring.recent("github")[0].deploys == (("web", "x"),)
    (refused,) = ring.recent("gitlab")
    assert (refused.status, refused.answer, refused.reason) == (401, "rejected", "bad token")
    assert ring.recent("gitea") == []


class MemorySpool:
    def __init__(self) -> None:
        self.put_: list[Trigger] = []

    async def put(self, trigger: Trigger) -> bool:
        self.put_.append(trigger)
        return True

    def pending(self) -> list[Trigger]:
        return list(self.put_)


class Site:
    """A dashboard on a real loopback HTTP server, with records, an event log and a token."""

    def __init__(self, root: Path) -> None:
        self.eventlog = JsonlEventLog(root / "events.jsonl")
        self.spool = MemorySpool()
        self.records = Records(root / "records")
        self.tokens = TokenStore(root / "tokens.json")
        self.token = self.tokens.create("alice")
        self.fleet = Fleet("busybox")
        app = self.records.get("web")
        app.ships = [
            Ship("hd-web-1111111", SHA1, "10.0.0.2", 3000, STOPPED, 1.0, True, "d0"),
            Ship("hd-web-2222222", SHA2, "10.0.0.3", 3000, LIVE, 2.0, True, "d1"),
        ]
        app.live, app.routed = "hd-web-2222222", True
        app.last_deploy = {"deploy": "d1", "result": "finished", "ms": 812}
        self.records.save(app)
        self.root = root

    def status(self) -> dict[str, Any]:
        return {
            "name": "hd",
            "version": "0",
            "headquarters": "hosted here",
            "headquarters_sha": None,
            "hulls": {"busybox": {"current": "hd-hull-busybox-1", "building": None}},
            "certificates": [
                {"name": "www.web.test", "expires": "2027-03-01T12:00:00Z", "issuer": "R11"},
                {
                    "name": "new.web.test",
                    "expires": "",
                    "error": "connection refused",
                    "retry": "2026-12-01T12:01:00Z",
                },
            ],
            "apps": [{"app": "web", "ship": "hd-web-2222222", "sha": SHA2[:7], "url": "/web/"}],
        }

    def dashboard(self) -> Dashboard:
        sources = Sources(
            self.eventlog, self.spool, self.status, self.records, self.fleet,
            self.root / "lxc", self.root / "git",
        )  # fmt: skip
        return Dashboard(sources, Sessions(self.tokens), Deliveries())


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[tuple[Site, TestClient[Any, Any]]]:
    s = Site(tmp_path)
    s.eventlog.open()
    app = web.Application()
    s.dashboard().add_routes(app)
    async with TestClient(TestServer(app)) as client:
        yield s, client
    s.eventlog.close()


def hidden(html: str, name: str = "csrf") -> str:
    found = re.search(rf'name="{name}" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


async def sign_in(client: TestClient[Any, Any], token: str) -> Any:
    page = await client.get("/sign-in")
    csrf = hidden(await page.text())
    return await client.post("/sign-in", data={"token": token, "csrf": csrf}, allow_redirects=False)


async def test_signed_out_only_the_sign_in_page_and_static_assets_show(
    site: tuple[Site, TestClient[Any, Any]],
) -> None:
    _, client = site
    for path in ("/", "/apps/web", "/webhooks", "/live", "/apps/web/rollback"):
        answer = await client.get(path, allow_redirects=False)
        assert (answer.status, answer.headers["Location"]) == (303, "/sign-in"), path
    page = await client.get("/sign-in")
    text = await page.text()
    assert '<label for="token">Token</label>' in text
    assert "web" not in text
    assert (await client.get("/static/live.js")).status == 200
    refused = await client.post("/apps/web/redeploy", data={"csrf": "x"}, allow_redirects=False)
    assert refused.status == 403


async def test_sign_in_refused_then_accepted_with_a_strict_http_only_cookie(
    site: tuple[Site, TestClient[Any, Any]],
) -> None:
    s, client = site
    refused = await sign_in(client, "wrong")
    assert refused.status == 401
    assert "Sign-in refused" in await refused.text()
    assert [e["event"] for e in s.eventlog.stored()] == ["SignInRefused"]
    accepted = await sign_in(client, s.token)
    assert (accepted.status, accepted.headers["Location"]) == (303, "/")
    cookie = next(c for c in accepted.headers.getall("Set-Cookie") if c.startswith("hd_session="))
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Secure" not in cookie, "plain HTTP here"
    events = list(s.eventlog.stored())
    assert events[-1]["event"] == "SignedIn"
    assert s.token not in str(events)
    overview = await client.get("/")
    text = await overview.text()
    assert '<a href="/apps/web">web</a>' in text
    assert len(text.encode()) < 100_000


async def test_the_sign_in_form_needs_its_csrf_token(
    site: tuple[Site, TestClient[Any, Any]],
) -> None:
    s, client = site
    answer = await client.post("/sign-in", data={"token": s.token}, allow_redirects=False)
    assert answer.status == 403
    assert "hd_session" not in answer.cookies


async def test_posts_need_the_sessions_csrf_token_and_then_queue_the_hd_triggers(
    site: tuple[Site, TestClient[Any, Any]],
) -> None:
    s, client = site
    await sign_in(client, s.token)
    page = await client.get("/apps/web")
    text = await page.text()
    assert ">Redeploy</button>" in text
    assert ">Rollback</button>" in text
    assert "live-marker" in text
    for data in ({}, {"csrf": "forged"}):
        answer = await client.post("/apps/web/redeploy", data=data, allow_redirects=False)
        assert answer.status == 403
        assert "CSRF" in await answer.text()
    assert s.spool.put_ == [], "a refused POST does nothing"
    csrf = hidden(text)
    answer = await client.post("/apps/web/redeploy", data={"csrf": csrf}, allow_redirects=False)
    assert answer.status == 303
    (redeploy,) = s.spool.put_
    assert (redeploy.kind, redeploy.app, redeploy.data["sha"]) == (TriggerKind.DEPLOY, "web", SHA2)
    assert redeploy.data["admiral"] == "alice"
    assert answer.headers["Location"] == f"/apps/web/deploys/{redeploy.id}"
    confirm = await client.get("/apps/web/rollback")
    assert ">Confirm</button>" in await confirm.text()
    answer = await client.post("/apps/web/rollback", data={"csrf": csrf}, allow_redirects=False)
    assert answer.status == 303
    assert s.spool.put_[-1].kind == TriggerKind.ROLLBACK
    out = await client.post("/sign-out", data={"csrf": csrf}, allow_redirects=False)
    assert out.status == 303
    assert (await client.get("/", allow_redirects=False)).status == 303


async def test_a_failed_deploys_page_shows_its_masked_setup_log(
    site: tuple[Site, TestClient[Any, Any]],
) -> None:
    s, client = site
    ship = s.root / "lxc" / "hd-web-1111111"
    ship.mkdir(parents=True)
    s.fleet.includes = {"DB_PASSWORD": "hunter2-the-secret"}
    (ship / "setup.log").write_text("compiling hunter2-the-secret\nerror: the build broke\n")
    for e in deploy_events("d7", fail=True):
        s.eventlog.append(e)
    await sign_in(client, s.token)
    page = await client.get("/apps/web/deploys/d7")
    text = await page.text()
    assert "error: the build broke" in text
    assert "exit 3" in text
    assert (await client.get("/apps/web/deploys/nope")).status == 404
    raw = await client.get("/apps/web/deploys/d7/setup.log")
    assert "compiling" in await raw.text()
    assert (await client.get("/apps/Bad..Name")).status == 404
    assert "hunter2-the-secret" not in text + await raw.text()
    assert "********" in text


async def test_behind_tls_the_cookie_is_secure_and_a_revoked_token_says_the_session_ended(
    site: tuple[Site, TestClient[Any, Any]],
) -> None:
    s, client = site
    page = await client.get("/sign-in")
    csrf = hidden(await page.text())
    accepted = await client.post(
        "/sign-in",
        data={"token": s.token, "csrf": csrf},
        headers={"X-Forwarded-Proto": "https"},
        allow_redirects=False,
    )
    cookie = next(c for c in accepted.headers.getall("Set-Cookie") if c.startswith("hd_session="))
    assert "Secure" in cookie
    client.session.cookie_jar.update_cookies({"hd_session": accepted.cookies["hd_session"].value})
    assert (await client.get("/", allow_redirects=False)).status == 200
    (s.root / "tokens.json").write_text("{}")  # revoked
    gone = await client.get("/apps/web")
    assert gone.url.path == "/sign-in"
    assert "Your session has ended" in await gone.text()


async def test_a_form_larger_than_any_of_ours_is_refused_unread(
    site: tuple[Site, TestClient[Any, Any]],
) -> None:
    _, client = site
    answer = await client.post("/sign-in", data={"token": "x" * 100_000}, allow_redirects=False)
    assert answer.status == 413


async def test_the_orders_in_force_show_with_their_secrets_masked(
    site: tuple[Site, TestClient[Any, Any]],
) -> None:
    s, client = site
    text = "export API_TOKEN=topsecret-value-1\nexport GREETING=hello\nhealthcheck /up 9\n"
    s.fleet.hq = Headquarters(apps={"web": parse_orders(text, "web/orders", app="web")})
    await sign_in(client, s.token)
    page = await (await client.get("/apps/web")).text()
    assert "GREETING=hello" in page
    assert "/up 9 s" in page
    assert "topsecret-value-1" not in page
    assert "API_TOKEN=********" in page


async def test_a_failed_health_checks_reason_is_on_the_deploy_page(
    site: tuple[Site, TestClient[Any, Any]],
) -> None:
    s, client = site
    for e in deploy_events("d8")[:5]:
        s.eventlog.append(e)
    why = "http://10.0.0.4:3000/up answered 500 for 5 s"
    s.eventlog.append(event("HealthCheckFailed", "d8", app="web", message=why))
    s.eventlog.append(event("DeployFailed", "d8", app="web", stage="health", message="unhealthy"))
    await sign_in(client, s.token)
    page = await (await client.get("/apps/web/deploys/d8")).text()
    assert f"HealthCheckFailed: {why}" in page


async def test_the_overview_shows_each_names_certificate_and_trouble(
    site: tuple[Site, TestClient[Any, Any]],
) -> None:
    s, client = site
    await sign_in(client, s.token)
    page = await (await client.get("/")).text()
    assert '<th scope="row">www.web.test</th><td>2027-03-01T12:00:00Z</td>' in page
    assert '<th scope="row">new.web.test</th><td>none yet</td>' in page
    assert "connection refused; retry 2026-12-01T12:01:00Z" in page
