"""Hull and build figures: the Debian hull cold and rebuilt warm, ship create → app answering
on Debian, and a Python build with dependencies from a cold pip cache vs a warm one.

    sudo .venv/bin/python bench/hulls.py [--skip-cold] [ROUNDS]

Uses a private lxcpath in a temp folder and a bridge `hdb<hex4>br0` on 10.213.202.0/24; removes
everything at the end. The cold hull build uses an empty LXC cache (LXC_CACHE_PATH in the temp
folder) and so downloads Debian from the mirror the host's apt sources name (or
HYPERDRIVE_APT_MIRROR), then keeps its tree there; the warm rebuild copies that kept tree.
With --skip-cold both use /var/cache/lxc. Each build prints where its time went (the seconds
between its progress steps). Dependencies come from a package index served on the bridge, as
in tests/e2e/test_builds.py.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv4Address
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from hyperdrive.aptsource import from_host
from hyperdrive.hull_debian import DebianHullBuild, Progress
from hyperdrive.idmap import for_ships
from hyperdrive.lxc_async import Lxc
from hyperdrive.network import bridge_name, ensure_bridge, teardown_bridge
from hyperdrive.pipeline.model import Mount, ShipSpec
from tests.conftest import open_for_ships
from tests.e2e.test_builds import PY_APP, PackageIndex
from tests.integration.lxc_fixtures import get_until_ok

SUBNET = "10.213.202.0/24"
PATH = "/usr/local/bin:/usr/bin:/bin"
APP = "GREETING = 'bench'\n" + PY_APP


async def hull_build(root: Path, name: str, cache: Path | None) -> float:
    """One Debian hull build; prints how it went and the seconds each step took."""
    apt = await from_host(os.environ.get("HYPERDRIVE_APT_MIRROR", ""))
    build = DebianHullBuild(
        root / "containers", name, root / "lxc" / name / "setup.log", apt=apt, cache_dir=cache
    )
    steps: list[tuple[float, str]] = []

    def step(progress: Progress) -> None:
        steps.append((time.monotonic(), progress.step))

    t0 = time.monotonic()
    how = await build.run(step)
    took = time.monotonic() - t0
    ends = [t for t, _ in steps[1:]]
    phases = ", ".join(
        f"{what} {end - t:.1f} s" for (t, what), end in zip(steps[:-1], ends, strict=True)
    )
    print(f"  {name}: {how}\n  seconds per step (until the next one): {phases}")
    return took


class Bench:
    def __init__(self, root: Path, tag: str, gateway: IPv4Address) -> None:
        self.root, self.tag, self.gateway = root, tag, gateway
        self.lxc = Lxc(root / "containers", root / "logs", ids=for_ships())
        self.n = 10

    def spec(self, app: Path, cache: Path) -> ShipSpec:
        self.n += 1
        return ShipSpec(
            ip=IPv4Address(f"10.213.202.{self.n}"),
            gateway=self.gateway,
            prefixlen=24,
            bridge=bridge_name(self.tag),
            hostname="bench",
            mounts=(
                Mount(app, "/app", readonly=False),
                Mount(cache, "/var/cache/hyperdrive", False),
            ),
        )

    async def ship(self, hull: str, app: Path, cache: Path) -> tuple[str, ShipSpec]:
        name = f"{self.tag}-s{self.n + 1}"
        spec = self.spec(app, cache)
        await self.lxc.snapshot(hull, name)
        await self.lxc.write_config(name, spec)
        await self.lxc.start(name)
        return name, spec

    async def answering(self, hull: str) -> float:
        """Snapshot → config → start → app started → first HTTP 200, for a stdlib Python app."""
        app = self.root / f"app{self.n}"
        app.mkdir()
        (app / "app.py").write_text(APP)
        t0 = time.monotonic()
        (self.root / "cache-none").mkdir(exist_ok=True)
        name, spec = await self.ship(hull, app, self.root / "cache-none")
        serve = "cd /app && (PORT=8000 python3 app.py >/dev/null 2>&1 &)"
        await self.lxc.attach(name, ["/bin/sh", "-c", serve], {"PATH": PATH}, 10)
        await get_until_ok(f"http://{spec.ip}:8000/")
        took = time.monotonic() - t0
        await self.lxc.destroy(name)
        return took

    async def pip_build(self, hull: str, cache: Path, index: PackageIndex) -> float:
        """venv + pip install -r requirements.txt (one wheel from the bridge's index)."""
        app = self.root / f"app{self.n}"
        app.mkdir()
        (app / "requirements.txt").write_text("hdtdemo==1.0\n")
        name, _ = await self.ship(hull, app, cache)
        host = index.url.split("/")[2].split(":")[0]
        env = {
            "PATH": PATH,
            "HOME": "/app",
            "PIP_CACHE_DIR": "/var/cache/hyperdrive/pip",
            "PIP_INDEX_URL": index.url,
            "PIP_TRUSTED_HOST": host,
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        }
        script = "cd /app && python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt"
        t0 = time.monotonic()
        code = await self.lxc.attach(name, ["/bin/sh", "-c", script], env, 300)
        took = time.monotonic() - t0
        assert code == 0, f"the pip build exited {code}"
        await self.lxc.destroy(name)
        return took


def ms(values: list[float]) -> str:
    return f"median {statistics.median(values) * 1000:.0f} ms, worst {max(values) * 1000:.0f} ms"


async def main(rounds: int, skip_cold: bool) -> None:
    root = open_for_ships(tempfile.mkdtemp(prefix="hdbench-hulls-"))
    tag = "hdb" + secrets.token_hex(2)
    gateway = await ensure_bridge(tag, SUBNET)
    bench = Bench(root, tag, gateway)
    index = PackageIndex(root / "index", str(gateway))
    try:
        cache = None if skip_cold else root / "lxc-cache"
        if not skip_cold:
            cold = await hull_build(root, f"{tag}-cold", cache)
            print(f"debian hull, cold: empty LXC cache, downloads Debian: {cold:.1f} s")
            await bench.lxc.destroy(f"{tag}-cold")
        warm = await hull_build(root, f"{tag}-hull", cache)
        print(f"debian hull, rebuilt with the cache warm: {warm:.1f} s")
        hull = f"{tag}-hull"
        times = [await bench.answering(hull) for _ in range(rounds)]
        print(f"ship create → Python app answering (debian, {rounds} rounds): {ms(times)}")
        pip_cache = root / "pip-cache"
        pip_cache.mkdir()
        cold_build = await bench.pip_build(hull, pip_cache, index)
        warm_builds = [await bench.pip_build(hull, pip_cache, index) for _ in range(3)]
        print(
            f"pip build with a dependency: cold cache {cold_build:.2f} s, warm cache "
            f"{statistics.median(warm_builds):.2f} s "
            f"(ratio {statistics.median(warm_builds) / cold_build:.2f}); "
            f"wheel downloads: {len(index.downloads)}"
        )
    finally:
        index.close()
        for entry in sorted((root / "containers").glob("*"), key=lambda p: "-hull" in p.name):
            subprocess.run(
                ["lxc-destroy", "-P", str(root / "containers"), "-n", entry.name, "-f"],
                capture_output=True,
                timeout=120,
                check=False,
            )
        await teardown_bridge(tag)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    asyncio.run(main(int(args[0]) if args else 5, "--skip-cold" in sys.argv))
