"""One view of the fleet's events, on a real three-node nats-server cluster (loopback).

Run: .venv/bin/python bench/fleet_events.py [--events 2000]

1. An event appended to squadron B's event log → seen by a `hd logs -f --fleet` reader on
   squadron A (FleetLink.fleet_events, follow), p50/p99, one at a time.
2. Appends/s to an event log whose events the fleet link shares, against the same log alone
   (the peer): sharing must not slow the pipeline's appends.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hyperdrive.eventlog import Filter, JsonlEventLog  # noqa: E402
from hyperdrive.fleet.link import CONNECTED, FleetLink, Identity  # noqa: E402
from hyperdrive.fleet.outbox import Outbox  # noqa: E402
from hyperdrive.spool import FileSpool  # noqa: E402
from tests.integration.nats_fixtures import CREDS, start_nodes, until  # noqa: E402


class Member:
    def __init__(self, root: Path, name: str, url: str) -> None:
        self.root, self.name, self.url = root / name, name, url
        self.spool = FileSpool(self.root / "spool")
        self.log = JsonlEventLog(self.root / "events.jsonl")
        self.link: FleetLink | None = None

    async def start(self) -> FleetLink:
        self.log.open()
        await self.spool.open()
        outbox = Outbox(self.root / "spool" / "fleet-outbox.jsonl")
        identity = Identity(self.name, f"id-{self.name}", "bench")
        link = FleetLink(identity, (self.url,), CREDS, self.spool, outbox, events=self.log)
        self.link = link
        await link.start()
        await until(lambda: link.state == CONNECTED, "connected")
        return link

    async def close(self) -> None:
        if self.link is not None:
            await self.link.stop()
        await self.spool.close()
        self.log.close()


async def seen_latency(a: FleetLink, b: Member, count: int) -> list[float]:
    reader = await a.fleet_events(Filter(app="site"), history=0, follow=True)
    times = []
    for n in range(count):
        start = time.perf_counter()
        b.log.append({"event": "BuildOutput", "app": "site", "message": f"line {n}"})
        event = await asyncio.wait_for(anext(reader), 10)
        assert (event["squadron"], event["message"]) == (b.name, f"line {n}")
        times.append((time.perf_counter() - start) * 1000)
    await reader.aclose()  # type: ignore[attr-defined]
    return times


async def appends_per_s(log: JsonlEventLog, count: int) -> float:
    """Appends as a deploy makes them, the loop free every 100 (the link publishes then)."""
    start = time.perf_counter()
    for n in range(count):
        log.append({"event": "BuildOutput", "app": "site", "message": f"line {n}"})
        if n % 100 == 99:
            await asyncio.sleep(0)
    return count / (time.perf_counter() - start)


async def in_stream(a: FleetLink, squadron: str, expected: int) -> int:
    """How many of B's events the fleet's stream holds once B's link is done publishing."""
    stored = 0
    for _ in range(100):  # bounded: up to 10 s for the last publishes to land
        reader = await a.fleet_events(Filter(), history=None, follow=False)
        stored = sum([1 async for e in reader if e.get("squadron") == squadron])
        if stored >= expected:
            break
        await asyncio.sleep(0.1)
    return stored


async def main(events: int) -> None:
    with tempfile.TemporaryDirectory(prefix="hd-bench-fleet-events-") as tmp:
        root = Path(tmp)
        nodes = await start_nodes(root, 3)
        a, b = Member(root, "alpha", nodes[0].url), Member(root, "bravo", nodes[1].url)
        alone = JsonlEventLog(root / "alone" / "events.jsonl")
        alone.open()
        try:
            link_a = await a.start()
            await b.start()
            await seen_latency(link_a, b, 50)  # warm-up: consumers, connections
            times = await seen_latency(link_a, b, min(events, 500))
            rounds = [
                (await appends_per_s(b.log, events), await appends_per_s(alone, events))
                for _ in range(3)
            ]
            shared = statistics.median(r[0] for r in rounds)
            peer = statistics.median(r[1] for r in rounds)
            stored = await in_stream(link_a, b.name, 3 * events + 550)
        finally:
            alone.close()
            await a.close()
            await b.close()
            for node in nodes:
                await node.node.stop()
    p99 = statistics.quantiles(times, n=100)[98]
    print(f"load average {os.getloadavg()[0]:.1f}")
    print(f"event on B -> seen by A's fleet reader: p50 {statistics.median(times):.2f} ms, "
          f"p99 {p99:.2f} ms ({len(times)} events)")  # fmt: skip
    print(f"appends/s, shared with the fleet / alone: {shared:,.0f} / {peer:,.0f} "
          f"({shared / peer:.2f})")  # fmt: skip
    print(f"B's events in HD_EVENTS: {stored} of {3 * events + 550}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=2000)
    asyncio.run(main(parser.parse_args().events))
