"""After the swap, end to end on real LXC, nginx and the nftables map: the guard sends traffic
back when the new version answers real users with 5xx, and WebSockets open on the old ship
live through a redeploy while new connections reach the new one. Bad `guard`/`drain` orders
are refused at the HQ push with file:line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import Daemon, wait_for
from tests.e2e.squadron import (
    Admiral,
    AppRepo,
    Prober,
    http_get,
    keygen,
    make_squadron,
    teardown,
    wait_outcome,
)

pytestmark = [pytest.mark.root, pytest.mark.lxc, pytest.mark.nginx, pytest.mark.slow]

PAGE = "cgi-bin/page"
GOOD_CGI = '#!/bin/sh\necho "Content-Type: text/plain"\necho\necho one\n'
BAD_CGI = '#!/bin/sh\necho "Status: 500 Internal Server Error"\necho\necho broken\n'
WS_SH = (Path(__file__).parents[1] / "fixtures" / "busybox_ws.sh").read_text()
WS_PROCFILE = "web: exec busybox nc -ll -p $PORT -e /app/ws.sh\n"
DRAIN_S = 20
WS_ORDERS = f"healthcheck / 3\ndrain {DRAIN_S}\nguard off\nexport VERSION=v1\n"
GUARDED_ORDERS = "healthcheck / 3\nguard 30 20 10\n"


@dataclass
class Squadron:
    d: Daemon
    admiral: Admiral
    hq: Path
    tmp: Path
    accepted: dict[str, str]  # HQ's files as last pushed

    def repo(self, app: str) -> AppRepo:
        return AppRepo(self.d, app, self.tmp / "work" / app)

    def hq_push(self, files: dict[str, str]) -> subprocess.CompletedProcess[str]:
        self.admiral.commit(self.hq, files)
        pushed = self.admiral.git("push", "hyperdrive", "master", cwd=self.hq, check=False)
        if pushed.returncode == 0:
            self.accepted.update(files)
        return pushed


@pytest.fixture(scope="module")
def squadron(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Squadron]:
    tmp = tmp_path_factory.mktemp("guard")
    d = make_squadron(tmp / "hd")
    key = keygen(tmp / "admiral")
    pub = Path(f"{key}.pub").read_text()
    (d.root / "admirals.pub").write_text(pub)
    try:
        d.start()
        admiral = Admiral(d, key)
        hq = admiral.working_copy(tmp / "hq", "headquarters")
        orders = {
            "guarded/orders": GUARDED_ORDERS,
            "ws/orders": WS_ORDERS,
        }
        admiral.commit(hq, {"authorized_keys/alice.pub": pub, **orders})
        admiral.git("push", "hyperdrive", "master", cwd=hq)
        d.wait_event("HeadquartersSynced", timeout=30)
        yield Squadron(d, admiral, hq, tmp, dict(orders))
    finally:
        teardown(d)


def deploy(repo: AppRepo, files: dict[str, str], executable: tuple[str, ...] = ()) -> dict:
    return wait_outcome(repo.d, repo.push_trigger(repo.commit(files, executable=executable)))


def status_row(d: Daemon, app: str) -> dict:
    status = json.loads(d.hd("status", "--json").stdout)
    return next(row for row in status["apps"] if row["app"] == app)


def metrics(d: Daemon) -> str:
    url = f"http://127.0.0.1:{d.api_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


# ─── the guard ───────────────────────────────────────────────────────────────


def test_5xx_to_real_traffic_after_a_healthy_swap_send_it_back_to_the_old_version(
    squadron: Squadron,
) -> None:
    d, repo = squadron.d, squadron.repo("guarded")
    page = ("cgi-bin/page",)
    first = deploy(repo, {"index.html": "home\n", PAGE: GOOD_CGI}, page)
    assert first["event"] == "DeployFinished", first
    old = status_row(d, "guarded")["ship"]
    second = deploy(repo, {"index.html": "home\n", PAGE: BAD_CGI}, page)  # / still answers
    assert second["event"] == "DeployFinished", second  # nobody asked for the page yet
    assert http_get(d.http_port, "/guarded/cgi-bin/page")[0] == 500
    with Prober(d.http_port, "/guarded/cgi-bin/page", step=0.01) as users:
        back = d.wait_event("RolledBack", timeout=30, deploy=second["deploy"])
        wait_for(lambda: users.answers.get((200, "one\n"), 0) >= 20, 30, 0.05, "v1 again")
    assert back["ship"] == old
    assert back["requests"] >= 10, back
    assert back["errors"] * 100 > 20 * back["requests"], back
    assert "responses were 5xx" in back["message"], back
    assert set(users.answers) <= {(500, "broken\n"), (200, "one\n")}, users.answers
    with Prober(d.http_port, "/guarded/cgi-bin/page", step=0.01) as after:
        wait_for(lambda: after.served >= 20, 30, 0.05, "20 answers from the old version")
    assert after.failures == [], after.failures[:5]
    assert after.bodies == {"one\n"}
    row = status_row(d, "guarded")
    assert row["ship"] == old
    assert "rolled back by the guard" in row["last_deploy"], row
    shown = metrics(d)
    assert 'hyperdrive_app_requests_total{app="guarded",code="5xx"}' in shown, shown
    assert 'hyperdrive_app_request_duration_seconds_bucket{app="guarded",le="+Inf"}' in shown


# ─── long-lived connections ──────────────────────────────────────────────────


@dataclass
class Socket:
    """A WebSocket client in a thread: every message it got, and when it was closed."""

    url: str
    messages: list[str] = field(default_factory=list)
    closed_at: float | None = None
    error: str = ""
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def __enter__(self) -> Socket:
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.thread.start()
        wait_for(lambda: self.messages or self.closed_at, 15, 0.02, f"a message on {self.url}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(10)

    async def _run(self) -> None:
        try:
            async with aiohttp.ClientSession() as session, session.ws_connect(self.url) as ws:
                while not self.stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        message = await ws.receive(timeout=0.5)
                        if message.type != aiohttp.WSMsgType.TEXT:
                            break
                        self.messages.append(message.data)
        except (aiohttp.ClientError, OSError) as err:
            self.error = f"{type(err).__name__}: {err}"
        if not self.stop.is_set():
            self.closed_at = time.monotonic()


def test_a_websocket_open_on_the_old_ship_outlives_a_redeploy(squadron: Squadron) -> None:
    d, repo = squadron.d, squadron.repo("ws")
    ws_sh = ("ws.sh",)
    first = deploy(repo, {"ws.sh": WS_SH, "Procfile": WS_PROCFILE}, ws_sh)
    assert first["event"] == "DeployFinished", first
    old = status_row(d, "ws")["ship"]
    url = f"http://127.0.0.1:{d.http_port}/ws/"
    with Socket(url) as held:
        assert held.messages[:1] == ["v1"], held
        pushed = squadron.hq_push({"ws/orders": WS_ORDERS.replace("v1", "v2")})  # a redeploy
        assert pushed.returncode == 0, pushed.stderr
        swapped = d.wait_event("TrafficSwapped", timeout=60, app="ws", previous=old)
        outcome = wait_outcome(d, swapped["deploy"])
        assert outcome["event"] == "DeployFinished", outcome
        assert http_get(d.http_port, "/ws/") == (200, "v2"), "new connections: the new ship"
        with Socket(url) as fresh:
            wait_for(lambda: len(fresh.messages) >= 3, 10, 0.05, "messages from the new ship")
        assert set(fresh.messages) == {"v2"}, fresh.messages
        count = len(held.messages)
        time.sleep(2)  # well inside the drain: the old ship keeps talking on the old socket
        assert held.closed_at is None, held
        assert len(held.messages) > count + 3, held.messages
        assert set(held.messages) == {"v1"}, "it stayed on the old ship"
    drained = d.wait_event("ShipDrained", timeout=DRAIN_S, deploy=swapped["deploy"])
    assert drained["ship"] == swapped["previous"]
    assert drained["ms"] < DRAIN_S * 1000, "stopped once its last client left, not at the limit"


# ─── bad orders ──────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("app", "orders", "says"),
    [
        ("guarded", "healthcheck / 3\nguard 30 twenty\n", "guarded/orders:2: guard max-5xx"),
        ("guarded", "guard 0 20\n", "guarded/orders:1: guard seconds '0'"),
        ("ws", "drain forever\n", "ws/orders:1: drain seconds 'forever'"),
        ("ws", "drain 30\ndrain 40\n", "ws/orders:2: duplicate drain"),
    ],
)
def test_nonsense_guard_and_drain_are_refused_at_the_push_with_file_and_line(
    squadron: Squadron, app: str, orders: str, says: str
) -> None:
    d = squadron.d
    before = status_row(d, app)["ship"]
    pushed = squadron.hq_push({f"{app}/orders": orders})
    said = pushed.stdout + pushed.stderr
    assert pushed.returncode != 0, said
    assert says in said, said
    assert status_row(d, app)["ship"] == before, "the app kept its ship"
    name = f"{app}/orders"
    restored = squadron.hq_push({name: squadron.accepted[name]})  # as it was: no redeploy
    assert restored.returncode == 0, restored.stderr
