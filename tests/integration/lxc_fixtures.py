"""Real LXC for tests: a private lxcpath, a private bridge, a busybox hull; all removed after.

Names carry a random `hdt<hex4>` tag so runs never meet each other's containers or bridges.
The ships' subnet 10.213.200.0/24 belongs to these tests; no other address is ever contacted.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import aiohttp
import pytest

from hyperdrive.idmap import for_ships
from hyperdrive.lxc_async import Lxc
from hyperdrive.network import bridge_name, ensure_bridge, teardown_bridge
from hyperdrive.pipeline.model import Mount, ShipSpec

SUBNET = IPv4Network("10.213.200.0/24")
LXC_PROGRAMS = ("lxc-create", "lxc-copy", "lxc-start", "lxc-attach", "lxc-stop", "lxc-destroy")


@dataclass(frozen=True)
class Bridge:
    name: str
    address: IPv4Address
    subnet: IPv4Network

    def spec(
        self,
        host: int,
        hostname: str,
        *,
        mounts: tuple[Mount, ...] = (),
        memory_bytes: int | None = None,
        cpus: float | None = None,
        pids: int | None = None,
        cpu_weight: int | None = None,
        cpu_idle: bool = False,
    ) -> ShipSpec:
        """A ShipSpec for the subnet's `host`-th address on this bridge."""
        return ShipSpec(
            ip=self.subnet.network_address + host,
            gateway=self.address,
            prefixlen=self.subnet.prefixlen,
            bridge=self.name,
            hostname=hostname,
            memory_bytes=memory_bytes,
            cpus=cpus,
            mounts=mounts,
            pids=pids,
            cpu_weight=cpu_weight,
            cpu_idle=cpu_idle,
        )


def host_cpu_weight(pid: int) -> str:
    """The CPU weight of the cgroup process `pid` is in, read on the host: v1 `cpu.shares` on
    a hybrid host, else v2 `cpu.weight`."""
    root = Path("/sys/fs/cgroup")
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(",") and (root / "cpu" / "cpu.shares").exists():
            return (root / "cpu" / path.lstrip("/") / "cpu.shares").read_text().strip()
        if controllers == "" and (root / "cgroup.controllers").exists():
            return (root / path.lstrip("/") / "cpu.weight").read_text().strip()
    raise AssertionError(f"no cpu cgroup found for pid {pid}")


def host_cpu_idle(pid: int) -> str:
    """`cpu.idle` of the cgroup process `pid` is in, read on the host (v1 on a hybrid host)."""
    root = Path("/sys/fs/cgroup")
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(",") and (root / "cpu" / "cpu.idle").exists():
            return (root / "cpu" / path.lstrip("/") / "cpu.idle").read_text().strip()
        if controllers == "" and (root / "cgroup.controllers").exists():
            return (root / path.lstrip("/") / "cpu.idle").read_text().strip()
    raise AssertionError(f"no cpu cgroup found for pid {pid}")


def require_lxc() -> None:
    """Integration tests fail, never skip, when the real programs are missing."""
    missing = [p for p in (*LXC_PROGRAMS, "lxc-ls", "ip") if shutil.which(p) is None]
    assert not missing, f"integration tests need these programs installed: {missing}"


def subnet_in_use(subnet: IPv4Network) -> list[str]:
    """Interfaces that already hold an address in `subnet` (a leftover would break routing)."""
    out = subprocess.run(
        ["ip", "-j", "addr"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    return [
        f"{link['ifname']} {info['local']}"
        for link in json.loads(out)
        for info in link.get("addr_info", [])
        if info.get("family") == "inet" and IPv4Address(info["local"]) in subnet
    ]


def destroy_everything(lxcpath: Path) -> list[str]:
    """Force-destroy every container under lxcpath, snapshots before hulls; return leftovers."""
    if not lxcpath.is_dir():
        return []
    names = [d.name for d in lxcpath.iterdir() if (d / "config").is_file()]
    snapshots_first = sorted(names, key=lambda n: "overlay" not in _config(lxcpath, n))
    for name in snapshots_first:
        subprocess.run(
            ["lxc-destroy", "-P", str(lxcpath), "-n", name, "-f"],
            capture_output=True,
            timeout=30,
            check=False,
        )
    return [d.name for d in lxcpath.iterdir() if (d / "config").is_file()]


def _config(lxcpath: Path, name: str) -> str:
    try:
        return (lxcpath / name / "config").read_text()
    except OSError:
        return ""


@pytest.fixture
def tag() -> str:
    """`hdt` + 4 hex digits: unique per test, short enough for `<tag>br0` (≤ 15 chars)."""
    return "hdt" + secrets.token_hex(2)


@pytest.fixture
async def bridge(tag: str) -> AsyncIterator[Bridge]:
    """A fresh bridge on the test subnet, deleted afterwards even if the test failed."""
    require_lxc()
    holders = subnet_in_use(SUBNET)
    assert not holders, f"{SUBNET} is already in use on this host: {holders}"
    address = await ensure_bridge(tag, SUBNET)
    try:
        yield Bridge(bridge_name(tag), address, SUBNET)
    finally:
        await teardown_bridge(tag)


@pytest.fixture
async def lxc(tmp_path: Path) -> AsyncIterator[Lxc]:
    """An Lxc on a private lxcpath; every container there is destroyed afterwards."""
    require_lxc()
    client = Lxc(tmp_path / "containers", tmp_path / "logs", ids=for_ships(), timeout=30)
    try:
        yield client
    finally:
        leftovers = destroy_everything(client.lxcpath)
        assert not leftovers, f"containers could not be destroyed: {leftovers}"


@pytest.fixture
async def hull(lxc: Lxc, tag: str) -> str:
    """A patched busybox hull (0.3 s to make); destroyed with the lxcpath."""
    name = f"{tag}-hull"
    await lxc.create_busybox_hull(name)
    return name


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A folder with one page, bind-mounted read-only into ships at /app."""
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "index.html").write_text("hello from a ship\n")
    return folder


def app_mount(site: Path) -> tuple[Mount, ...]:
    return (Mount(site, "/app", readonly=True),)


async def get_until_ok(url: str, seconds: float = 5.0, step: float = 0.005) -> str:
    """GET `url` until it answers 200 (bounded by `seconds`); return the body."""
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
        while True:
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return await response.text()
            except (aiohttp.ClientError, TimeoutError):
                pass
            assert time.monotonic() < deadline, f"{url} did not answer within {seconds} s"
            await asyncio.sleep(step)
