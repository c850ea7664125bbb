"""Zero-downtime swaps under load: nftables map (Hyperdrive) vs a plain nginx reload per swap.

Two namespace ships behind Hyperdrive's own nginx; wrk (keep-alive) and a Python client that
opens a NEW connection per request hammer /a/ while the app is swapped back and forth. After each
swap the old ship keeps serving for `--drain` seconds, then it is killed (retired) and restarted
only when it becomes the target again. Run as root:  .venv/bin/python bench/zero_downtime.py
"""

import argparse
import asyncio
import re
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hyperdrive.nginx_reload import AppRoute, Nginx, Routes
from hyperdrive.traffic import Traffic
from tests.integration.net_fixtures import (
    Counts,
    Ship,
    ShipNet,
    free_port,
    new_connection_client,
)

STABLE = 20000


@dataclass
class WrkResult:
    requests: int
    non_2xx: int
    errors: int
    raw: str


def parse_wrk(text: str) -> WrkResult:
    """Requests, non-2xx/3xx and socket errors from wrk's report."""
    requests = int(re.search(r"(\d+) requests in", text).group(1))  # type: ignore[union-attr]
    non = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sock = re.search(r"connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    errors = sum(int(n) for n in sock.groups()) if sock else 0
    return WrkResult(requests, int(non.group(1)) if non else 0, errors, text)


async def swap(mode: str, routes: Routes, traffic: Traffic, target: Ship) -> None:
    """Move app `a` to `target`: one nft transaction, or a rewritten upstream + nginx reload."""
    if mode == "nft":
        await traffic.point(STABLE, target.ip, target.port)
    else:
        await routes.apply([AppRoute("a", target.ip, target.port)])


async def run_mode(mode: str, net: ShipNet, traffic: Traffic, args: argparse.Namespace) -> dict:
    """One measured run: load on, N swaps with drain + retire, load off."""
    one, two = net.ships
    for ship in (one, two):
        if ship.proc is None:
            await asyncio.to_thread(ship.start)
    with tempfile.TemporaryDirectory(prefix="hd-bench-") as tmp:
        nginx = Nginx(Path(tmp) / "nginx")
        routes = Routes(nginx, http_port=free_port(), workers="2")
        try:
            await traffic.point(STABLE, one.ip, one.port)
            first = AppRoute("a", net.bridge_ip, STABLE) if mode == "nft" else None
            await routes.apply([first or AppRoute("a", one.ip, one.port)])
            return await measure(mode, routes, traffic, (one, two), args)
        finally:
            await nginx.stop()


async def measure(
    mode: str, routes: Routes, traffic: Traffic, ships: tuple[Ship, Ship], args: argparse.Namespace
) -> dict:
    """Start both load generators, swap `args.swaps` times, stop them, collect the counts."""
    url = f"http://127.0.0.1:{routes.http_port}/a/"
    wrk = await asyncio.create_subprocess_exec(
        "wrk", "-t1", f"-c{args.connections}", "-d300s", url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    stop, counts = asyncio.Event(), Counts()
    clients = [
        asyncio.create_task(new_connection_client(routes.http_port, "/a/", stop, counts))
        for _ in range(args.clients)
    ]
    await asyncio.sleep(1.0)
    started, live = time.monotonic(), 0
    for _ in range(args.swaps):
        old, new = ships[live], ships[1 - live]
        if new.proc is None:
            await asyncio.to_thread(new.start)
        await swap(mode, routes, traffic, new)
        await asyncio.sleep(args.drain)
        old.stop()
        live = 1 - live
    elapsed = time.monotonic() - started
    await asyncio.sleep(0.5)
    stop.set()
    wrk.send_signal(signal.SIGINT)
    out, _ = await asyncio.wait_for(wrk.communicate(), 30)
    await asyncio.wait_for(asyncio.gather(*clients), 30)
    return {"mode": mode, "wrk": parse_wrk(out.decode()), "new": counts, "seconds": elapsed}


def report(result: dict) -> None:
    wrk, new = result["wrk"], result["new"]
    failed = wrk.non_2xx + wrk.errors
    ratio = 100.0 * failed / max(wrk.requests, 1)
    print(
        f"{result['mode']:>7} | keep-alive (wrk): {wrk.requests:>7} req, {wrk.non_2xx} non-2xx, "
        f"{wrk.errors} errors = {ratio:.4f}% | new conn: {new.requests:>6} req, "
        f"{new.non_2xx} non-2xx, {new.errors} errors | swaps took {result['seconds']:.1f} s"
    )
    print(f"{'':>7}   new-connection answers by ship: {new.answers}")


async def main(args: argparse.Namespace) -> None:
    net = ShipNet().open()
    traffic = Traffic(net.tag, net.bridge_cidr)
    try:
        net.ship("one")
        net.ship("two")
        await traffic.ensure_table()
        print(
            f"{args.swaps} swaps per mode, drain {args.drain} s, then the old ship is killed; "
            f"wrk -t1 -c{args.connections} keep-alive + {args.clients} new-connection clients"
        )
        results = [await run_mode(mode, net, traffic, args) for mode in ("nft", "reload")]
        for result in results:
            report(result)
        if args.verbose:
            print(results[0]["wrk"].raw, results[1]["wrk"].raw)
    finally:
        await traffic.drop_table()
        net.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--swaps", type=int, default=20)
    parser.add_argument("--drain", type=float, default=1.5)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--verbose", action="store_true")
    asyncio.run(main(parser.parse_args()))
