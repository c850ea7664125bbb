"""Ship life-cycle figures on the busybox hull: snapshot, start, start → HTTP, stop, destroy.

    sudo .venv/bin/python bench/lxc_ship.py [ROUNDS]

Uses a private lxcpath in a temp folder, a bridge `hdb<hex4>br0` on 10.213.201.0/24 and
removes everything at the end. Prints the median and worst time of each step in ms.
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hyperdrive.idmap import for_ships
from hyperdrive.lxc_async import Lxc
from hyperdrive.network import IpAllocator, bridge_name, ensure_bridge, teardown_bridge
from hyperdrive.pipeline.model import Mount, ShipSpec
from tests.conftest import open_for_ships
from tests.integration.lxc_fixtures import get_until_ok

SUBNET = "10.213.201.0/24"


async def one_round(lxc: Lxc, hull: str, spec: ShipSpec, ship: str, times: dict) -> None:
    def lap(step: str, since: float) -> float:
        now = time.perf_counter()
        times[step].append((now - since) * 1000)
        return now

    t = created = time.perf_counter()
    await lxc.snapshot(hull, ship)
    t = lap("snapshot (lxc-copy -s -B overlayfs)", t)
    await lxc.write_config(ship, spec)
    t = lap("write_config", t)
    start = t
    await lxc.start(ship)
    t = lap("start (lxc-start -d)", t)
    await lxc.attach(ship, ["httpd", "-h", "/app", "-p", "8080"], {"PATH": "/bin"}, 10)
    t = lap("attach (httpd)", t)
    await get_until_ok(f"http://{spec.ip}:8080/index.html")
    lap("HTTP answering after start", t)
    lap("start -> HTTP answering (total)", start)
    lap("create -> HTTP answering (total)", created)
    t = time.perf_counter()
    await lxc.stop(ship)
    t = lap("stop (graceful)", t)
    await lxc.destroy(ship)
    lap("destroy", t)


async def main(rounds: int) -> None:
    tag = "hdb" + secrets.token_hex(2)
    with tempfile.TemporaryDirectory() as tmp:
        open_for_ships(tmp)
        root = Path(tmp)
        (root / "site").mkdir()
        (root / "site" / "index.html").write_text("bench\n")
        lxc = Lxc(root / "containers", root / "logs", ids=for_ships())
        gateway = await ensure_bridge(tag, SUBNET)
        allocator = IpAllocator(root / "ips.json", SUBNET)
        times: dict[str, list[float]] = defaultdict(list)
        try:
            t = time.perf_counter()
            await lxc.create_busybox_hull(f"{tag}-hull")
            made = (time.perf_counter() - t) * 1000
            print(f"busybox hull (lxc-create -t busybox + patch + shift ids): {made:.0f} ms")
            for n in range(rounds):
                ship = f"{tag}-ship{n}"
                spec = ShipSpec(
                    ip=allocator.allocate(ship),
                    gateway=gateway,
                    prefixlen=24,
                    bridge=bridge_name(tag),
                    hostname=f"ship{n}",
                    mounts=(Mount(root / "site", "/app"),),
                    memory_bytes=1024**3,  # the defaults every ship gets
                    pids=1024,
                )
                await one_round(lxc, f"{tag}-hull", spec, ship, times)
                allocator.release(ship)
        finally:
            for info in await lxc.list():
                if info.name != f"{tag}-hull":
                    await lxc.destroy(info.name)
            await lxc.destroy(f"{tag}-hull")
            await teardown_bridge(tag)
    print(f"{rounds} rounds, ms:           median    worst")
    for step, values in times.items():
        print(f"  {step:34} {statistics.median(values):7.1f} {max(values):8.1f}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 10))
