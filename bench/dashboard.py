"""The dashboard's pages: bytes, server time and first render in Chromium, on a busy squadron.

The dashboard of a real `hd`-shaped state (40 apps, 3 kept ships each, 30 deploys each with
their stages and 50 build-output lines, a failed deploy with a 1 MB setup.log: ~95,000 events
in a real events.jsonl) is served by aiohttp on loopback, as the daemon serves it. Each page is
fetched 50 times with a session cookie (server time: request sent → whole body read), then
opened 10 times in Debian's headless chromium (Playwright): first contentful paint and the load
event, from the browser's own Performance API. Run:
    .venv/bin/python bench/dashboard.py [--apps 40] [--deploys 30]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiohttp import web
from playwright.sync_api import sync_playwright

from hyperdrive.api import TokenStore
from hyperdrive.eventlog import JsonlEventLog
from hyperdrive.hooks.deliveries import Deliveries
from hyperdrive.pipeline.fleet import Fleet
from hyperdrive.pipeline.model import LIVE, STOPPED, Records, Ship
from hyperdrive.triggers import Trigger
from hyperdrive.web.routes import COOKIE, Dashboard, Sources
from hyperdrive.web.sessions import Sessions

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# the first contentful paint, as the browser itself timed it (it may be reported after load)
FIRST_PAINT = """new Promise((done) => {
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) if (e.name === "first-contentful-paint") done(e.startTime);
  }).observe({ type: "paint", buffered: true });
  setTimeout(() => done(-1), 5000);
})"""


class Spool:
    async def put(self, trigger: Trigger) -> bool:
        return True

    def pending(self) -> list[Trigger]:
        return []


def sha(n: int) -> str:
    return f"{n:040x}"


def fill(root: Path, log: JsonlEventLog, records: Records, apps: int, deploys: int) -> None:
    """Apps with kept ships, and each app's deploys as the pipeline writes them."""
    for a in range(apps):
        name = f"app{a:02d}"
        app = records.get(name)
        app.ships = [
            Ship(f"hd-{name}-{sha(a * 1000 + n)[:7]}", sha(a * 1000 + n), "10.0.0.2", 3000,
                 LIVE if n == 2 else STOPPED, float(n), True, f"d{n}")
            for n in range(3)
        ]  # fmt: skip
        app.live, app.routed, app.since = app.ships[-1].name, True, time.time()
        app.last_deploy = {"deploy": "x", "result": "finished", "ms": 812}
        records.save(app)
        for d in range(deploys):
            deploy(log, name, f"{name}-d{d}", sha(a * 1000 + d), failed=d == deploys - 1)
    ship = root / "lxc" / "hd-app07-failed"
    ship.mkdir(parents=True)
    lines = (f"build line {n} of a long build\n" for n in range(35_000))
    (ship / "setup.log").write_text("".join(lines))  # ~1 MB


def deploy(log: JsonlEventLog, app: str, did: str, commit: str, failed: bool) -> None:
    def emit(event: str, **fields: Any) -> None:
        log.append({"event": event, "app": app, "deploy": did, "sha": commit, **fields})

    emit("PushReceived", admiral="alice", message=f"alice pushed {commit[:7]}")
    emit("DeployQueued", source="push", message="queued")
    emit("DeployStarted", message="started")
    for stage, ms in (("fetch", 30), ("plan", 2), ("export", 4)):
        emit("StageFinished", stage=stage, ms=ms, message=stage)
    for n in range(50):
        emit("BuildOutput", message=f"step {n}: compiling module {n}")
    ship = "hd-app07-failed" if failed else f"hd-{app}-{commit[:7]}"
    emit("ShipAssembled", ship=ship, ms=60, message="assembled")
    if failed:
        emit("DeployFailed", ship=ship, stage="build", message="bin/build exited 3")
        return
    for event, ms in (("ShipStarted", 7), ("ShipHealthy", 10), ("TrafficSwapped", 40)):
        emit(event, ship=ship, ms=ms, message=event)
    emit("DeployFinished", ship=ship, ms=190, message="live")


def app_row(app: Any) -> dict[str, Any]:
    """What `hd status` says of an app (status.app_rows)."""
    live = app.live_ship
    return {
        "app": app.name, "ship": app.live, "sha": live.sha[:7] if live else None,
        "since": "2026-12-01 10:00 UTC", "url": f"http://vm/{app.name}/",
        "last_deploy": "finished 812 ms", "orders": "hosted here, PORT 3000",
    }  # fmt: skip


def serve(dashboard: Dashboard, port: int, ready: threading.Event) -> None:
    async def main() -> None:
        app = web.Application()
        dashboard.add_routes(app)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


def server_times(port: int, path: str, cookie: str, rounds: int) -> tuple[list[float], int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times, size = [], 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        conn.request("GET", path, headers={"Cookie": f"{COOKIE}={cookie}"})
        response = conn.getresponse()
        body = response.read()
        times.append((time.perf_counter() - t0) * 1000)
        assert response.status == 200, (path, response.status)
        size = len(body)
    conn.close()
    return times, size


def browser_times(port: int, paths: list[str], cookie: str, rounds: int) -> dict[str, Any]:
    found: dict[str, Any] = {}
    with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=ARGS
        )
        context.add_cookies([{"name": COOKIE, "value": cookie, "domain": "127.0.0.1",
                              "path": "/", "httpOnly": True, "sameSite": "Strict"}])  # fmt: skip
        page = context.new_page()
        for path in paths:
            fcp, load = [], []
            for _ in range(rounds):
                page.goto(f"http://127.0.0.1:{port}{path}", wait_until="load")
                fcp.append(page.evaluate(FIRST_PAINT))
                load.append(
                    page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")
                )
            found[path] = (fcp, load)
        context.close()
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--apps", type=int, default=40)
    parser.add_argument("--deploys", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        log = JsonlEventLog(root / "events.jsonl", max_bytes=256 << 20)
        log.open()
        records = Records(root / "records")
        fill(root, log, records, args.apps, args.deploys)
        tokens = TokenStore(root / "tokens.json")
        sessions = Sessions(tokens)
        session = sessions.sign_in(tokens.create("alice"))
        assert session is not None
        status = {
            "name": "hd", "version": "0", "headquarters": "hosted here",
            "hulls": {"busybox": {"current": "hd-hull-busybox-1", "building": None}},
            "apps": [app_row(a) for a in records.all()],
        }  # fmt: skip
        sources = Sources(log, Spool(), lambda: status, records, Fleet("busybox"),
                          root / "lxc", root / "git")  # fmt: skip
        dashboard = Dashboard(sources, sessions, Deliveries())
        port = 20000 + os.getpid() % 10000
        ready = threading.Event()
        threading.Thread(target=serve, args=(dashboard, port, ready), daemon=True).start()
        assert ready.wait(30)
        t0 = time.perf_counter()
        while not dashboard.history.loaded:
            time.sleep(0.05)
        print(
            f"events: {log.seq}, log {log.path.stat().st_size / 1e6:.1f} MB; "
            f"history read in {time.perf_counter() - t0:.2f} s; load {os.getloadavg()[0]:.1f}"
        )
        paths = ["/", "/apps/app07", f"/apps/app07/deploys/app07-d{args.deploys - 1}",
                 "/apps/app07/deploys/app07-d3", "/webhooks"]  # fmt: skip
        print(f"{'page':40} {'bytes':>8} {'server p50':>11} {'p95':>8}")
        for path in paths:
            times, size = server_times(port, path, session.id, 50)
            p95 = statistics.quantiles(times, n=20)[-1]
            print(f"{path:40} {size:8d} {statistics.median(times):8.1f} ms {p95:5.1f} ms")
        print(f"{'page':40} {'first paint p50':>16} {'max':>8} {'load p50':>9}")
        for path, (fcp, load) in browser_times(port, paths, session.id, 10).items():
            print(
                f"{path:40} {statistics.median(fcp):13.0f} ms {max(fcp):5.0f} ms "
                f"{statistics.median(load):6.0f} ms"
            )
        for name in ("dashboard.css", "live.js"):
            print(f"static/{name}: {(Path('hyperdrive/web/static') / name).stat().st_size} bytes")


if __name__ == "__main__":
    main()
