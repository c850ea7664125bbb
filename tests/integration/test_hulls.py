"""Hulls against real LXC: the Debian hulls (debootstrap, patched), versions, pruning, failures.

The Debian hull is built once for the module: a copy of the tree kept in
/var/cache/lxc/hyperdrive (seconds), or on the first run on a machine a full build that keeps
it (1–2 minutes). A second version is then made from the kept tree. The debian-13 hull
(trixie) is built the same way, once, from a kept tree of its own.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hyperdrive.errors import ContainerError
from hyperdrive.hull_builder import LxcHullBuilder
from hyperdrive.hull_debian import Seed
from hyperdrive.idmap import for_ships
from hyperdrive.lxc_async import Lxc
from hyperdrive.pipeline import events as ev
from hyperdrive.pipeline.hulls import Hulls
from hyperdrive.pipeline.model import Mount
from tests.integration.lxc_fixtures import Bridge, destroy_everything, get_until_ok, require_lxc

# The fixtures, re-exported so pytest finds them here (conftest.py belongs to everyone).
from tests.integration.lxc_fixtures import bridge as bridge  # noqa: PLC0414
from tests.integration.lxc_fixtures import tag as tag  # noqa: PLC0414

pytestmark = [pytest.mark.root, pytest.mark.lxc, pytest.mark.slow]

PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
MiB = 1024 * 1024


class Recorder:
    """An Emitter that keeps what it is told."""

    def __init__(self) -> None:
        self.events: list[ev.Event] = []

    def emit(self, event: ev.Event) -> None:
        self.events.append(event)

    def names(self) -> list[str]:
        return [e.name for e in self.events]


def make_hulls(root: Path, **kw: Any) -> Hulls:
    lxc = Lxc(root / "containers", root / "logs", ids=for_ships(), timeout=60)
    builder = LxcHullBuilder(lxc, root / "data" / "lxc", **kw)
    return Hulls("hdth", lxc, builder, root / "data" / "records" / "hulls.json")


def one_hull(
    tmp_path_factory: pytest.TempPathFactory, kind: str
) -> Iterator[tuple[Hulls, str, Recorder]]:
    """One hull of `kind` for a module, destroyed (with every ship on it) afterwards."""
    require_lxc()
    hulls = make_hulls(tmp_path_factory.mktemp(kind))
    out = Recorder()
    try:
        name = asyncio.run(hulls.ensure(kind, out))
        yield hulls, name, out
    finally:
        leftovers = destroy_everything(hulls.runtime.lxcpath)
        assert not leftovers, f"containers could not be destroyed: {leftovers}"


@pytest.fixture(scope="module")
def debian(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Hulls, str, Recorder]]:
    """One Debian (bookworm) hull for the module."""
    yield from one_hull(tmp_path_factory, "debian")


@pytest.mark.timeout(900)
def test_debian_hull_is_built_patched_and_reported(debian: tuple[Hulls, str, Recorder]) -> None:
    hulls, name, out = debian
    assert name == "hdth-hull-debian-1"
    assert hulls.current("debian") == name
    assert out.names()[0] == "HullBuildStarted"
    assert out.names()[-1] == "HullAssembled"
    assembled = out.events[-1]
    assert assembled.ms is not None
    assert assembled.ms > 0
    percents = [e.percent for e in out.events if isinstance(e, ev.HullBuildProgress)]
    assert percents == sorted(percents)
    assert percents[-1] == 100
    setup_log = hulls.setup_log(name)
    assert setup_log == hulls.builder.logs / name / "setup.log"
    log = setup_log.read_text()
    assert "Installing packages" in log or "copying the Debian tree kept" in log
    folder = hulls.runtime.lxcpath / name
    assert "lxc.net." not in (folder / "config").read_text()
    interfaces = (folder / "rootfs" / "etc" / "network" / "interfaces").read_text()
    assert "iface eth0 inet manual" in interfaces
    assert "dhcp" not in interfaces
    assert "d /tmp " in (folder / "rootfs" / "etc" / "tmpfiles.d" / "tmp.conf").read_text()
    for program in ("python3", "node", "npm", "git", "curl"):
        assert (folder / "rootfs" / "usr" / "bin" / program).exists(), program
    runtimes = hulls.runtimes("debian")
    assert runtimes["python"].startswith("3.11."), runtimes
    assert runtimes["node"].startswith("18."), runtimes


@pytest.fixture(scope="module")
def trixie(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Hulls, str, Recorder]]:
    """One debian-13 hull for the module (from trixie's kept tree when there is one)."""
    yield from one_hull(tmp_path_factory, "debian-13")


@pytest.mark.timeout(900)
async def test_the_debian_13_hull_is_trixie_with_python_313_and_node_20(
    trixie: tuple[Hulls, str, Recorder], bridge: Bridge
) -> None:
    hulls, name, out = trixie
    assert name == "hdth-hull-debian-13-1"
    assert out.names()[-1] == "HullAssembled"
    rootfs = hulls.runtime.lxcpath / name / "rootfs"
    assert "VERSION_CODENAME=trixie" in (rootfs / "etc" / "os-release").read_text()
    runtimes = json.loads(hulls.records_file.read_text())["debian-13"]["runtimes"]
    assert runtimes["python"].startswith("3.13."), runtimes
    assert runtimes["node"].startswith("20."), runtimes
    assert Seed.in_cache(None, "trixie").built() is not None, "trixie keeps a tree of its own"
    assert Seed.in_cache(None, "trixie").folder != Seed.in_cache(None, "bookworm").folder

    ship = f"{name}-ship"
    await hulls.runtime.snapshot(name, ship)
    await hulls.runtime.write_config(ship, bridge.spec(24, "trixieship"))
    await hulls.runtime.start(ship)
    lines: list[str] = []
    probe = ["python3", "-c", "import sys; print('python', sys.version_info[:2])"]
    assert await hulls.runtime.attach(ship, probe, {"PATH": PATH}, 30, lines.append) == 0
    assert lines == ["python (3, 13)"]
    await hulls.runtime.destroy(ship)


@pytest.mark.timeout(900)
async def test_debian_ship_answers_quickly_with_a_static_address_and_its_limit(
    debian: tuple[Hulls, str, Recorder], bridge: Bridge, tmp_path: Path
) -> None:
    hulls, hull, _ = debian
    lxc = hulls.runtime
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("hello from debian\n")
    ship = f"{hull}-ship"
    spec = bridge.spec(
        21, "debianship", mounts=(Mount(site, "/app", readonly=True),), memory_bytes=96 * MiB
    )
    await lxc.snapshot(hull, ship)
    await lxc.write_config(ship, spec)
    t0 = time.monotonic()
    await lxc.start(ship)
    serve = "cd /app && (python3 -m http.server 8000 >/dev/null 2>&1 &)"
    assert await lxc.attach(ship, ["/bin/sh", "-c", serve], {"PATH": PATH}, 10) == 0
    body = await get_until_ok(f"http://{spec.ip}:8000/", seconds=5)
    took = time.monotonic() - t0
    assert body == "hello from debian\n"
    assert took < 1.5, f"start → HTTP took {took:.2f} s"

    assert hulls.hull_of(ship) == hull
    await asyncio.sleep(1)  # let systemd finish booting: no DHCP client may appear
    lines: list[str] = []
    script = (
        "ps -e -o comm=; ip -4 -o addr show eth0; cat /sys/fs/cgroup/memory/memory.limit_in_bytes"
    )
    await lxc.attach(ship, ["/bin/sh", "-c", script], {"PATH": PATH}, 10, lines.append)
    output = "\n".join(lines)
    assert "dhclient" not in output
    assert f"inet {spec.ip}/24" in output
    assert str(96 * MiB) in lines
    await lxc.destroy(ship)


@pytest.mark.timeout(900)
async def test_a_build_started_during_boot_keeps_its_tmp_files(
    debian: tuple[Hulls, str, Recorder], bridge: Bridge
) -> None:
    """systemd-tmpfiles would empty /tmp under pip's ensurepip: the hull keeps /tmp."""
    hulls, hull, _ = debian
    ship = f"{hull}-venv"
    await hulls.runtime.snapshot(hull, ship)
    await hulls.runtime.write_config(ship, bridge.spec(22, "venvship"))
    await hulls.runtime.start(ship)
    lines: list[str] = []
    venv = ["python3", "-m", "venv", "/tmp/venv"]
    code = await hulls.runtime.attach(ship, venv, {"PATH": PATH}, 120, lines.append)
    assert code == 0, "\n".join(lines)
    assert (hulls.runtime.rootfs(ship) / "tmp" / "venv" / "bin" / "pip").exists()
    await hulls.runtime.destroy(ship)


@pytest.mark.timeout(900)
async def test_a_rebuild_copies_the_kept_tree_and_its_ships_serve(
    debian: tuple[Hulls, str, Recorder], bridge: Bridge, tmp_path: Path
) -> None:
    hulls, _, _ = debian
    out = Recorder()
    second = await hulls.assemble("debian", out)
    assert second == "hdth-hull-debian-2"
    assert hulls.current("debian") == second
    assert "from the Debian tree kept" in out.events[0].message
    assert "copied from the tree kept" in out.events[-1].message
    config = (hulls.runtime.lxcpath / second / "config").read_text()
    assert f"lxc.rootfs.path = dir:{hulls.runtime.lxcpath / second / 'rootfs'}" in config
    assert f"lxc.uts.name = {second}" in config
    assert "lxc.net." not in config

    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("hello from the kept tree\n")
    ship = f"{second}-ship"
    spec = bridge.spec(23, "keptship", mounts=(Mount(site, "/app", readonly=True),))
    await hulls.runtime.snapshot(second, ship)
    await hulls.runtime.write_config(ship, spec)
    await hulls.runtime.start(ship)
    serve = "cd /app && (python3 -m http.server 8000 >/dev/null 2>&1 &)"
    assert await hulls.runtime.attach(ship, ["/bin/sh", "-c", serve], {"PATH": PATH}, 10) == 0
    assert await get_until_ok(f"http://{spec.ip}:8000/", seconds=10) == "hello from the kept tree\n"
    await hulls.runtime.destroy(ship)


async def test_a_new_version_serves_new_ships_and_the_old_goes_with_its_last_ship(
    tmp_path: Path,
) -> None:
    require_lxc()
    hulls = make_hulls(tmp_path)
    out = Recorder()
    try:
        first = await hulls.ensure("busybox", out)
        assert await hulls.ensure("busybox", out) == first  # built once
        await hulls.runtime.snapshot(first, "hdth-old-ship")
        second = await hulls.assemble("busybox", out)
        assert (first, second) == ("hdth-hull-busybox-1", "hdth-hull-busybox-2")
        assert hulls.current("busybox") == second
        assert await hulls.ensure("busybox", out) == second

        assert await hulls.prune(["hdth-old-ship"], out) == []
        assert await hulls.runtime.exists(first)
        # even when the records forget the ship, LXC's own list of clones protects the hull
        assert await hulls.prune([], out) == []

        await hulls.runtime.destroy("hdth-old-ship")
        assert await hulls.prune([], out) == [first]
        assert not await hulls.runtime.exists(first)
        assert await hulls.runtime.exists(second)
        assert "HullRetired" in out.names()
        third = await hulls.assemble("busybox", out)
        assert third == "hdth-hull-busybox-3"
    finally:
        destroy_everything(hulls.runtime.lxcpath)


async def test_unknown_hull_kind_is_refused(tmp_path: Path) -> None:
    hulls = make_hulls(tmp_path)
    with pytest.raises(Exception, match="there is no hull 'alpine'"):
        await hulls.ensure("alpine", Recorder())


@pytest.mark.timeout(900)
async def test_a_failed_debian_build_leaves_no_hull_and_shows_the_log(tmp_path: Path) -> None:
    """A mirror nothing answers on (loopback, closed port) and no kept tree to copy (an empty
    LXC cache): debootstrap fails at once, the hull is removed."""
    require_lxc()
    hulls = make_hulls(tmp_path, mirror="http://127.0.0.1:9/debian", cache_dir=tmp_path / "cache")
    out = Recorder()
    with pytest.raises(ContainerError, match=r"127\.0\.0\.1:9") as failure:
        await hulls.ensure("debian", out)
    assert "full log:" in str(failure.value)
    name = "hdth-hull-debian-1"
    assert not (hulls.runtime.lxcpath / name).exists()
    assert hulls.current("debian") is None
    assert out.names()[-1] == "HullBuildFailed"
    assert hulls.setup_log(name).read_text().strip()
