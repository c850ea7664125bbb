"""WebSockets held open through redeploys: none is cut before its ship's drain limit.

`--clients` WebSocket clients (aiohttp) stay connected to a busybox app (tests/fixtures/
busybox_ws.sh: a frame every 0.2 s) while it is redeployed `--redeploys` times, one push
every `--every` s. A client whose socket closes reconnects at once (reaching the live ship).
A close counts as *cut* when it came while its ship was still live, or less than the drain
limit after the swap away from it (minus 0.5 s for the frame interval and the SIGTERM); a
close at the drain limit is the drain doing its job. Each round a new connection (a plain GET)
must get the new version. Run as root:
    .venv/bin/python bench/websockets.py [--clients 20] [--redeploys 10] [--drain 15]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from tempfile import TemporaryDirectory

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import Daemon, open_for_ships
from tests.e2e.squadron import AppRepo, http_get, make_squadron, teardown, wait_outcome

WS_SH = (Path(__file__).parents[1] / "tests" / "fixtures" / "busybox_ws.sh").read_text()
TOLERANCE_S = 0.5


@dataclass
class Held:
    """One socket's life: the version it talked to, and when (wall clock) it opened and closed."""

    version: str
    opened: float
    closed: float | None = None


@dataclass
class Clients:
    url: str
    count: int
    lives: list[Held] = field(default_factory=list)
    unopened: int = 0  # connection attempts that got no socket within 10 s
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        asyncio.run(self._all())

    async def _all(self) -> None:
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(self._one(session) for _ in range(self.count)))

    async def _one(self, session: aiohttp.ClientSession) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with asyncio.timeout(10):
                    ws = await session.ws_connect(self.url)
                    first = await ws.receive(timeout=5)
                async with ws:
                    held = Held(str(first.data), time.time())
                    self.lives.append(held)
                    while not self.stop.is_set():
                        with contextlib.suppress(TimeoutError):
                            message = await ws.receive(timeout=0.5)
                            if message.type != aiohttp.WSMsgType.TEXT:
                                break
                    if not self.stop.is_set():
                        held.closed = time.time()
                continue
            self.unopened += 1
            await asyncio.sleep(0.05)


def stamp(event: dict) -> float:
    return datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()


def procfile(version: str) -> str:
    return f"web: VERSION={version} exec busybox nc -ll -p $PORT -e /app/ws.sh\n"


def main(args: argparse.Namespace) -> None:
    with TemporaryDirectory(prefix="hd-bench-ws-") as tmp:
        open_for_ships(tmp)
        d = make_squadron(
            Path(tmp) / "hd", HYPERDRIVE_DRAIN_SECONDS=str(args.drain), HYPERDRIVE_GUARD="60 20 20"
        )
        try:
            d.start()
            report(d, Path(tmp), args)
        finally:
            teardown(d)


def report(d: Daemon, tmp: Path, args: argparse.Namespace) -> None:
    repo = AppRepo(d, "ws", tmp / "ws")
    push = {"ws.sh": WS_SH, "Procfile": procfile("v0")}
    assert wait_outcome(d, repo.push_trigger(repo.commit(push, executable=("ws.sh",))))
    url = f"http://127.0.0.1:{d.http_port}/ws/"
    clients = Clients(url, args.clients)
    thread = threading.Thread(target=clients.run, daemon=True)
    thread.start()
    swapped_away: dict[str, float] = {}  # version → when traffic left its ship
    fresh_ok = 0
    for n in range(1, args.redeploys + 1):
        time.sleep(args.every)
        outcome = wait_outcome(d, repo.push_trigger(repo.commit({"Procfile": procfile(f"v{n}")})))
        assert outcome["event"] == "DeployFinished", outcome
        swap = next(
            e
            for e in d.events()
            if e["event"] == "TrafficSwapped" and e.get("deploy") == outcome["deploy"]
        )
        swapped_away[f"v{n - 1}"] = stamp(swap)
        fresh_ok += http_get(d.http_port, "/ws/") == (200, f"v{n}")
    time.sleep(args.drain + 5)  # every old ship's drain is over
    clients.stop.set()
    thread.join(15)
    closed = [h for h in clients.lives if h.closed is not None]
    cut = [
        h
        for h in closed
        if h.version not in swapped_away
        or h.closed - swapped_away[h.version] < args.drain - TOLERANCE_S  # type: ignore[operator]
    ]
    at_limit = [h.closed - swapped_away[h.version] for h in closed if h not in cut]  # type: ignore[operator]
    shown = f"{min(at_limit):.1f}–{max(at_limit):.1f} s" if at_limit else "none"
    print(
        f"{args.clients} WebSocket clients through {args.redeploys} redeploys (one every "
        f"~{args.every:g} s, drain {args.drain:g} s): {len(clients.lives)} sockets opened, "
        f"{len(closed)} closed by the drain after the swap away from their ship ({shown}), "
        f"cut before the drain limit: {len(cut)}; a new connection reached the new version "
        f"{fresh_ok}/{args.redeploys}; socket attempts that got no socket: {clients.unopened}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--redeploys", type=int, default=10)
    parser.add_argument("--every", type=float, default=2.0)
    parser.add_argument("--drain", type=float, default=15.0)
    main(parser.parse_args())
