"""The fleet's trigger stream on a real three-node nats-server cluster (loopback).

Run: .venv/bin/python bench/fleet.py [--triggers 300] [--missed 20]

1. Trigger taken by squadron A's spool → in the spools of A's two peers (B and C), p50/p99:
   A's put returns once the stream holds it; B and C take it from their durable consumers.
2. Durable shared triggers/s into A's spool (each one fsynced locally, then acked by the R3
   stream), sequential, beside the same spool with no fleet (the peer: a squadron alone).
3. Catch-up: C's link stopped, `--missed` triggers taken by A, C's link started again: the
   time until all of them are in C's spool (its deploys of the newest would start then).
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

from hyperdrive.fleet.link import CONNECTED, FleetLink, Identity  # noqa: E402
from hyperdrive.fleet.outbox import Outbox  # noqa: E402
from hyperdrive.names import ZERO_SHA  # noqa: E402
from hyperdrive.spool import FileSpool  # noqa: E402
from hyperdrive.triggers import RefUpdate, Trigger  # noqa: E402
from tests.integration.nats_fixtures import CREDS, start_nodes, until  # noqa: E402


def webhook(delivery: str) -> Trigger:
    update = RefUpdate("refs/heads/main", ZERO_SHA, "c" * 40)
    return Trigger.webhook(
        delivery,
        provider="github",
        repository="acme/shop",
        targets={"shop": update},
        fingerprint=f"fp-{delivery}",
        received=time.time(),
    )


class Member:
    def __init__(self, root: Path, name: str, url: str) -> None:
        self.root, self.name, self.url = root, name, url
        self.spool = FileSpool(root / name / "spool")
        self.link: FleetLink | None = None

    async def start(self) -> None:
        if self.link is None:
            await self.spool.open()
        outbox = Outbox(self.root / self.name / "spool" / "fleet-outbox.jsonl")
        identity = Identity(self.name, f"id-{self.name}", "bench")
        self.link = FleetLink(identity, (self.url,), CREDS, self.spool, outbox)
        await self.link.start()
        await until(lambda: self.link is not None and self.link.state == CONNECTED, "connected")

    async def close(self) -> None:
        if self.link is not None:
            await self.link.stop()
        await self.spool.close()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def latency(a: Member, peers: list[Member], count: int) -> list[float]:
    times = []
    for n in range(count):
        trigger = webhook(f"lat-{n}")
        start = time.perf_counter()
        await a.spool.put(trigger)
        while not all(p.spool.knows(trigger.id) for p in peers):
            await asyncio.sleep(0)
        times.append((time.perf_counter() - start) * 1000)
        for member in (a, *peers):
            await member.spool.done(trigger.id, "finished")
    return times


async def rate(spool: FileSpool, count: int, prefix: str) -> float:
    start = time.perf_counter()
    for n in range(count):
        await spool.put(webhook(f"{prefix}-{n}"))
    return count / (time.perf_counter() - start)


async def catch_up(a: Member, c: Member, missed: int) -> float:
    assert c.link is not None
    await c.link.stop()
    triggers = [webhook(f"missed-{n}") for n in range(missed)]
    for trigger in triggers:
        await a.spool.put(trigger)
    start = time.perf_counter()
    await c.start()
    await until(lambda: all(c.spool.knows(t.id) for t in triggers), "caught up", timeout=60)
    return (time.perf_counter() - start) * 1000


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="hd-bench-fleet-") as tmp:
        root = Path(tmp)
        nodes = await start_nodes(root / "nats", 3)
        members = [Member(root, name, node.url) for name, node in zip("abc", nodes, strict=True)]
        alone = FileSpool(root / "alone" / "spool")
        try:
            for member in members:
                await member.start()
            await alone.open()
            a, peers = members[0], members[1:]
            await latency(a, peers, 20)  # warm-up
            times = await latency(a, peers, args.triggers)
            fleet_rate = await rate(a.spool, args.triggers, "rate")
            alone_rate = await rate(alone, args.triggers, "alone")
            caught = await catch_up(a, members[2], args.missed)
        finally:
            for member in members:
                await member.close()
            await alone.close()
            for node in nodes:
                await node.node.stop()
    print(f"load average {os.getloadavg()[0]:.1f}")
    print(
        f"taken by A -> in B's and C's spools ({args.triggers}): "
        f"p50 {statistics.median(times):.2f} ms, p99 {pct(times, 0.99):.2f} ms"
    )
    print(
        f"durable shared triggers/s, sequential: fleet {fleet_rate:,.0f}/s, "
        f"alone {alone_rate:,.0f}/s (ratio {fleet_rate / alone_rate:.2f})"
    )
    print(f"catch-up of {args.missed} missed triggers: {caught:.0f} ms (link start included)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--triggers", type=int, default=300)
    parser.add_argument("--missed", type=int, default=20)
    asyncio.run(main(parser.parse_args()))
