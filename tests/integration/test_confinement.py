"""Ships are unprivileged and confined: the attacks an app tried as root now fail.

A hostile tester's build script made a block device of the host's disk, mounted it and printed
a host-only file; 300 processes forked freely. Each attack runs here in a real busybox ship.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hyperdrive.errors import ContainerError
from hyperdrive.idmap import for_ships
from hyperdrive.lxc_async import Lxc
from hyperdrive.pipeline.model import Mount
from tests.integration.lxc_fixtures import Bridge
from tests.integration.lxc_fixtures import bridge as bridge  # noqa: PLC0414
from tests.integration.lxc_fixtures import hull as hull  # noqa: PLC0414
from tests.integration.lxc_fixtures import lxc as lxc  # noqa: PLC0414
from tests.integration.lxc_fixtures import tag as tag  # noqa: PLC0414

pytestmark = [pytest.mark.root, pytest.mark.lxc]

PATH = "/bin:/sbin:/usr/bin:/usr/sbin"


async def ship(lxc: Lxc, hull: str, bridge: Bridge, host: int, **kw) -> str:
    name = f"{hull.removesuffix('-hull')}-c{host}"
    await lxc.snapshot(hull, name)
    await lxc.write_config(name, bridge.spec(host, f"c{host}", **kw))
    await lxc.start(name)
    return name


async def sh(lxc: Lxc, name: str, script: str, timeout: float = 20) -> tuple[int, str]:
    lines: list[str] = []
    code = await lxc.attach(name, ["/bin/sh", "-c", script], {"PATH": PATH}, timeout, lines.append)
    return code, "\n".join(lines)


def host_uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(ln for ln in status.splitlines() if ln.startswith("Uid:")).split()[1])


async def test_root_in_a_ship_is_an_ordinary_uid_on_the_host(
    lxc: Lxc, hull: str, bridge: Bridge
) -> None:
    ids = for_ships()
    name = await ship(lxc, hull, bridge, 40)
    _, maps = await sh(lxc, name, "cat /proc/self/uid_map /proc/self/gid_map; id -u")
    assert maps.split() == ["0", str(ids.uid), "65536", "0", str(ids.gid), "65536", "0"]
    info = await lxc.info(name)
    assert info is not None
    assert info.pid
    assert host_uid_of(info.pid) == ids.uid
    hull_root = (lxc.lxcpath / hull / "rootfs" / "bin").stat()
    assert (hull_root.st_uid, hull_root.st_gid) == (ids.uid, ids.gid)


async def test_a_ship_cannot_make_or_mount_the_hosts_disk(
    lxc: Lxc, hull: str, bridge: Bridge
) -> None:
    disk = os.stat("/").st_dev
    name = await ship(lxc, hull, bridge, 41)
    attack = (
        f"mknod /tmp/hostdisk b {os.major(disk)} {os.minor(disk)} && echo MADE; "
        "mkdir -p /mnt/h; mount -t ext4 /tmp/hostdisk /mnt/h && echo MOUNTED; "
        "mount -t ext4 /dev/root /mnt/h 2>/dev/null && echo MOUNTED; "
        "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status"
    )
    _, out = await sh(lxc, name, attack)
    assert "MADE" not in out
    assert "MOUNTED" not in out
    assert "Operation not permitted" in out  # mknod
    assert "Seccomp:\t2" in out  # LXC's seccomp filter is on


async def test_a_ship_cannot_write_host_files_it_is_given(
    lxc: Lxc, hull: str, bridge: Bridge, tmp_path: Path
) -> None:
    """A host file mounted writable but owned by host root stays the host's: uid 0 inside
    is not uid 0 outside. What the ship writes in a tree handed to it is owned by its uid."""
    ids = for_ships()
    hosts = tmp_path / "host-only"
    hosts.mkdir()
    (hosts / "secret").write_text("host root's\n")
    (hosts / "secret").chmod(0o600)
    given = tmp_path / "given"
    given.mkdir()
    await lxc.hand_over(given)
    mounts = (Mount(hosts, "/host", readonly=False), Mount(given, "/given", readonly=False))
    name = await ship(lxc, hull, bridge, 42, mounts=mounts)
    _, out = await sh(lxc, name, "cat /host/secret; echo x > /host/new; echo ok > /given/mine")
    assert "host root's" not in out
    assert "Permission denied" in out
    assert not (hosts / "new").exists()
    made = (given / "mine").stat()
    assert (made.st_uid, made.st_gid) == (ids.uid, ids.gid)


async def test_a_fork_bomb_stops_at_the_pids_limit(lxc: Lxc, hull: str, bridge: Bridge) -> None:
    name = await ship(lxc, hull, bridge, 43, pids=64)
    # busybox sh gives up at its first failed fork; the count uses only the shell's own glob
    bomb = "i=0; while [ $i -lt 300 ]; do sleep 5 >/dev/null 2>&1 & i=$((i+1)); done"
    script = f"sh -c '{bomb}' 2>/dev/null; set -- /proc/[0-9]*; echo processes $#"
    _, out = await sh(lxc, name, script)
    assert "processes" in out, out
    counted = int(out.split("processes")[-1])
    assert 10 < counted <= 64


async def test_a_ship_that_cannot_reach_its_trees_is_refused_clearly(
    lxc: Lxc, hull: str, bridge: Bridge, tmp_path: Path
) -> None:
    closed = tmp_path / "closed"
    (closed / "tree").mkdir(parents=True)
    closed.chmod(0o700)
    name = f"{hull.removesuffix('-hull')}-c44"
    await lxc.snapshot(hull, name)
    mounts = (Mount(closed / "tree", "/app", readonly=False),)
    with pytest.raises(ContainerError, match=r"cannot pass .*closed \(mode 0700\)"):
        await lxc.write_config(name, bridge.spec(44, "c44", mounts=mounts))


async def test_a_tree_handed_over_again_gives_the_ship_what_root_wrote_since(
    lxc: Lxc, tmp_path: Path
) -> None:
    """A deploy cut short and run again re-exports into a ship folder handed over before: the
    new files must be the ship's too (a stale shortcut once left them root's, and the ship
    could not pass its own /app)."""
    ids = for_ships()
    folder = tmp_path / "ship"
    (folder / "app").mkdir(parents=True)
    await lxc.hand_over(folder)
    (folder / "app").rmdir()
    (folder / "app").mkdir(mode=0o750)
    (folder / "app" / "index.html").write_text("again\n")
    await lxc.hand_over(folder)
    for path in (folder / "app", folder / "app" / "index.html"):
        st = path.stat()
        assert (st.st_uid, st.st_gid) == (ids.uid, ids.gid), path
