"""The Debian hull's patch, its progress steps, hull bookkeeping and OOM counting, on files."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

from hyperdrive.aptsource import AptSource
from hyperdrive.hull_builder import LxcHullBuilder
from hyperdrive.hull_debian import (
    PACKAGES,
    DebianHullBuild,
    Progress,
    ProgressTracker,
    Seed,
    _replace,
    create_argv,
    create_env,
    patch_debian_hull,
)
from hyperdrive.idmap import IdMap
from hyperdrive.lxc_async import Lxc
from hyperdrive.pipeline import events as ev
from hyperdrive.pipeline.health import oom_kills
from hyperdrive.pipeline.hulls import Hulls

IDS = IdMap(100000, 100000)  # the ships' id range; nothing is shifted in these tests


def fake_hull(folder: Path) -> Path:
    rootfs = folder / "rootfs"
    (rootfs / "etc" / "network").mkdir(parents=True)
    wants = rootfs / "etc" / "systemd" / "system" / "multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants / "ssh.service").symlink_to("/lib/systemd/system/ssh.service")
    (wants / "networking.service").symlink_to("/lib/systemd/system/networking.service")
    getty = rootfs / "etc" / "systemd" / "system" / "getty.target.wants"
    getty.mkdir()
    (getty / "getty@tty1.service").symlink_to("/lib/systemd/system/getty@.service")
    (rootfs / "etc" / "network" / "interfaces").write_text("auto eth0\niface eth0 inet dhcp\n")
    (folder / "config").write_text(
        "lxc.net.0.type = veth\nlxc.net.0.link = lxcbr0\nlxc.rootfs.path = dir:x\n"
    )
    return rootfs


def test_patch_makes_the_address_static_and_masks_slow_units(tmp_path: Path) -> None:
    rootfs = fake_hull(tmp_path)
    patch_debian_hull(tmp_path)
    assert (tmp_path / "config").read_text() == "lxc.rootfs.path = dir:x\n"
    interfaces = (rootfs / "etc" / "network" / "interfaces").read_text()
    assert "iface eth0 inet manual" in interfaces
    assert "dhcp" not in interfaces.replace("no DHCP", "")
    system = rootfs / "etc" / "systemd" / "system"
    assert os.readlink(system / "ssh.service") == "/dev/null"
    assert not (system / "multi-user.target.wants" / "ssh.service").is_symlink()
    assert (system / "multi-user.target.wants" / "networking.service").is_symlink()
    assert not (system / "getty.target.wants" / "getty@tty1.service").is_symlink()
    assert "d /tmp" in (rootfs / "etc" / "tmpfiles.d" / "tmp.conf").read_text()
    assert os.readlink(system / "tmp.mount") == "/dev/null", "trixie's tmpfs /tmp stays off"
    patch_debian_hull(tmp_path)  # patching twice is harmless


def test_the_release_is_a_parameter_of_the_build_and_each_keeps_its_own_seed(
    tmp_path: Path,
) -> None:
    argv = create_argv(tmp_path, "hd-hull-debian-13-1", tmp_path / "lxc.log", "trixie")
    assert argv[argv.index("-r") + 1] == "trixie"
    assert create_argv(tmp_path, "h", tmp_path / "l")[argv.index("-r") + 1] == "bookworm"
    trixie, bookworm = Seed.in_cache(tmp_path, "trixie"), Seed.in_cache(tmp_path, "bookworm")
    assert trixie.folder.name.startswith("debian-trixie-")
    assert bookworm.folder.name.startswith("debian-bookworm-")


def test_progress_only_moves_forward() -> None:
    seen: list[Progress] = []
    tracker = ProgressTracker(seen.append)
    for line in ("I: Retrieving a", "I: Retrieving b", "Unpacking x", "I: Extracting y", "noise"):
        tracker.line(line)
    tracker.done(100, "ready")
    assert [p.percent for p in seen] == [15, 65, 100]


def test_the_template_gets_mirrors_proxies_and_a_dpkg_without_fsync(tmp_path: Path) -> None:
    apt = AptSource("http://m.lan/debian", "here", "http://m.lan/sec", (("http", "http://p:1"),))
    env = create_env(apt, tmp_path)
    assert env["MIRROR"] == "http://m.lan/debian"
    assert env["SECURITY_MIRROR"] == "http://m.lan/sec"
    assert env["http_proxy"] == "http://p:1"
    assert env["DPKG_FORCE"] == "unsafe-io"
    assert env["LXC_CACHE_PATH"] == str(tmp_path)


def fake_seed(cache: Path, built: float) -> Seed:
    seed = Seed.in_cache(cache)
    (seed.folder / "rootfs" / "etc").mkdir(parents=True)
    (seed.folder / "rootfs" / "etc" / "hostname").write_text("seed\n")
    (seed.folder / "rootfs" / "etc" / "hosts").write_text("127.0.1.1   old-hull\n")
    os.symlink("hostname", seed.folder / "rootfs" / "etc" / "link")
    (seed.folder / "config").write_text(
        "lxc.rootfs.path = dir:/old/place/rootfs\nlxc.uts.name = old-hull\nlxc.arch = amd64\n"
    )
    stamp = {"built": built, "packages": list(PACKAGES), "mirror": "http://m"}
    (seed.folder / "seed.json").write_text(json.dumps(stamp))
    return seed


def test_a_build_copies_a_recent_seed_unless_fresh_or_too_old(tmp_path: Path) -> None:
    def build(**kw: object) -> DebianHullBuild:
        return DebianHullBuild(tmp_path / "c", "hd-hull-debian-2", tmp_path / "log", **kw)  # type: ignore[arg-type]

    assert build(cache_dir=tmp_path / "empty").seed_built() is None
    assert "from mirror http://deb.debian.org/debian" in build(cache_dir=tmp_path).plan()
    seed = fake_seed(tmp_path, time.time() - 3600)
    assert seed.built() is not None
    assert build(cache_dir=tmp_path).seed_built() == seed.built()
    assert "from the Debian tree kept " in build(cache_dir=tmp_path).plan()
    assert build(cache_dir=tmp_path, fresh=True).seed_built() is None
    assert build(cache_dir=tmp_path, seed_max_age_s=60).seed_built() is None
    stamp = json.loads((seed.folder / "seed.json").read_text())
    (seed.folder / "seed.json").write_text(json.dumps({**stamp, "packages": ["python3"]}))
    assert seed.built() is None, "a seed made for another package list is not used"


def test_a_seed_copy_is_a_container_of_its_own(tmp_path: Path) -> None:
    seed = fake_seed(tmp_path / "cache", time.time())
    target = tmp_path / "containers" / "hd-hull-debian-2"
    asyncio.run(seed.copy_to(target, "hd-hull-debian-2"))
    assert (target / "rootfs" / "etc" / "hostname").read_text() == "seed\n"
    assert os.readlink(target / "rootfs" / "etc" / "link") == "hostname"
    assert (target / "config").read_text() == (
        f"lxc.rootfs.path = dir:{target / 'rootfs'}\nlxc.uts.name = hd-hull-debian-2\n"
        "lxc.arch = amd64\n"
    )
    copied, kept = (
        target / "rootfs" / "etc" / "hostname",
        seed.folder / "rootfs" / "etc" / "hostname",
    )
    assert copied.stat().st_ino == kept.stat().st_ino, "one filesystem: hard links, no data copied"
    rootfs = fake_hull(tmp_path / "patched")
    shared = tmp_path / "seed-interfaces"
    os.link(rootfs / "etc" / "network" / "interfaces", shared)
    patch_debian_hull(tmp_path / "patched")  # the patch replaces files, never writes into them
    assert shared.read_text() == "auto eth0\niface eth0 inet dhcp\n"
    _replace(copied, "changed\n")
    assert kept.read_text() == "seed\n"
    hosts = "127.0.1.1   hd-hull-debian-2\n"  # as lxc-create would write it: lxc-copy renames it
    assert (target / "rootfs" / "etc" / "hosts").read_text() == hosts
    assert (seed.folder / "rootfs" / "etc" / "hosts").read_text() == "127.0.1.1   old-hull\n"


def test_keeping_a_hull_replaces_the_seed_and_leaves_nothing_aside(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    seed = fake_seed(cache, time.time() - 10 * 24 * 3600)
    hull = tmp_path / "containers" / "hd-hull-debian-3"
    (hull / "rootfs" / "usr").mkdir(parents=True)
    (hull / "rootfs" / "usr" / "new").write_text("new\n")
    (hull / "config").write_text("lxc.uts.name = hd-hull-debian-3\n")
    asyncio.run(seed.keep(hull, "http://m.lan/debian"))
    assert (seed.folder / "rootfs" / "usr" / "new").read_text() == "new\n"
    assert not (seed.folder / "rootfs" / "etc").exists()
    built = seed.built()
    assert built is not None
    assert time.time() - built < 60
    assert sorted(p.name for p in seed.folder.parent.iterdir()) == [
        seed.folder.name,
        seed.folder.name + ".lock",
    ]


class FakeLxc(Lxc):
    """Busybox hulls that take a while to create, counted; nothing real runs."""

    def __init__(self, root: Path) -> None:
        super().__init__(root / "containers", root / "logs", ids=IDS)
        self.created: list[str] = []
        self.release = asyncio.Event()

    async def create_busybox_hull(self, name: str) -> None:
        self.created.append(name)
        await self.release.wait()
        (self.lxcpath / name).mkdir(parents=True)
        (self.lxcpath / name / "config").write_text("\n".join(IDS.lxc_lines()))

    async def destroy(self, ship: str) -> None:
        pass

    async def exists(self, ship: str) -> bool:
        return (self.lxcpath / ship / "config").is_file()


class Heard:
    def __init__(self) -> None:
        self.events: list[ev.Event] = []

    def emit(self, event: ev.Event) -> None:
        self.events.append(event)


async def test_who_needs_a_hull_under_construction_waits_for_that_one_build(
    tmp_path: Path,
) -> None:
    lxc = FakeLxc(tmp_path)
    hulls = Hulls(
        "hd", lxc, LxcHullBuilder(lxc, tmp_path / "lxc"), tmp_path / "records" / "hulls.json"
    )
    first, second = Heard(), Heard()
    one = asyncio.create_task(hulls.ensure("busybox", first))
    await asyncio.sleep(0.01)
    two = asyncio.create_task(hulls.ensure("busybox", second))
    await asyncio.sleep(0.01)
    building = hulls.status()["busybox"]["building"]
    assert building["hull"] == "hd-hull-busybox-1"
    lxc.release.set()
    assert await one == await two == "hd-hull-busybox-1"
    assert lxc.created == ["hd-hull-busybox-1"]
    assert "waiting for it" in second.events[0].message
    assert [e.name for e in first.events] == ["HullBuildStarted", "HullAssembled"]
    assert second.events[-1].name == "HullAssembled"
    assert hulls.status()["busybox"] == {
        "current": "hd-hull-busybox-1",
        "building": None,
        "runtimes": {},
    }


async def test_a_waiter_that_leaves_does_not_stop_the_build(tmp_path: Path) -> None:
    lxc = FakeLxc(tmp_path)
    hulls = Hulls(
        "hd", lxc, LxcHullBuilder(lxc, tmp_path / "lxc"), tmp_path / "records" / "hulls.json"
    )
    waiter = asyncio.create_task(hulls.ensure("busybox", Heard()))
    await asyncio.sleep(0.01)
    waiter.cancel()  # a superseded deploy
    await asyncio.gather(waiter, return_exceptions=True)
    lxc.release.set()
    assert await hulls.ensure("busybox", Heard()) == "hd-hull-busybox-1"
    assert lxc.created == ["hd-hull-busybox-1"]


async def test_closing_stops_the_build_and_its_waiters(tmp_path: Path) -> None:
    lxc = FakeLxc(tmp_path)
    hulls = Hulls(
        "hd", lxc, LxcHullBuilder(lxc, tmp_path / "lxc"), tmp_path / "records" / "hulls.json"
    )
    heard = Heard()
    waiter = asyncio.create_task(hulls.ensure("busybox", heard))
    await asyncio.sleep(0.01)
    await hulls.close()
    (result,) = await asyncio.gather(waiter, return_exceptions=True)
    assert isinstance(result, asyncio.CancelledError), "its trigger stays in the spool"
    assert heard.events[-1].name == "HullBuildFailed"
    assert "stopped with the daemon" in heard.events[-1].message
    assert hulls.current("busybox") is None
    assert hulls.status()["busybox"]["building"] is None


async def test_only_the_slow_hull_is_built_in_the_background(tmp_path: Path) -> None:
    lxc = FakeLxc(tmp_path)
    hulls = Hulls(
        "hd", lxc, LxcHullBuilder(lxc, tmp_path / "lxc"), tmp_path / "records" / "hulls.json"
    )
    assert await hulls.prepare("busybox", Heard()) is False


def test_hulls_know_their_versions_and_which_hull_a_ship_came_from(tmp_path: Path) -> None:
    lxcpath = tmp_path / "containers"
    lxc = Lxc(lxcpath, tmp_path / "logs", ids=IDS)
    hulls = Hulls(
        "hd", lxc, LxcHullBuilder(lxc, tmp_path / "lxc"), tmp_path / "records" / "hulls.json"
    )
    for name in (
        "hd-hull-debian-1",
        "hd-hull-debian-3",
        "hd-hull-busybox-2",
        "other-hull-debian-9",
    ):
        (lxcpath / name).mkdir(parents=True)
        (lxcpath / name / "config").write_text("")
    (lxcpath / "hd-hull-debian-7").mkdir()  # no config: not a container
    assert hulls.versions("debian") == [1, 3]
    ship = lxcpath / "hd-web-abc1234"
    ship.mkdir()
    (ship / "config").write_text(
        f"lxc.rootfs.path = overlay:{lxcpath}/hd-hull-debian-3/rootfs:{ship}/overlay/delta\n"
    )
    assert hulls.hull_of("hd-web-abc1234") == "hd-hull-debian-3"
    assert hulls.hull_of("nope") is None
    assert (
        hulls.setup_log("hd-hull-debian-3") == tmp_path / "lxc" / "hd-hull-debian-3" / "setup.log"
    )


def test_oom_kills_are_read_from_the_ships_memory_cgroup(tmp_path: Path) -> None:
    own = Path("/proc/self/cgroup").read_text().splitlines()
    memory = next((line for line in own if ":memory:" in line), None)
    top = memory.split(":", 2)[2].strip("/").split("/")[0] if memory else ""
    control = tmp_path / "memory" / top / "memory.oom_control"
    control.parent.mkdir(parents=True, exist_ok=True)
    control.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    if memory is None:  # a pure cgroup v2 host: memory.events in the unified tree
        events = tmp_path / top / "memory.events"
        events.parent.mkdir(parents=True, exist_ok=True)
        events.write_text("low 0\nhigh 0\nmax 5\noom 3\noom_kill 3\n")
    assert oom_kills(os.getpid(), tmp_path) == 3
    assert oom_kills(None, tmp_path) == 0
