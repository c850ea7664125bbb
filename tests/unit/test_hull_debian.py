"""The Debian hull's patch, its progress steps, hull bookkeeping and OOM counting, on files."""

from __future__ import annotations

import os
from pathlib import Path

from hyperdrive.hull_debian import Progress, ProgressTracker, mirror_from, patch_debian_hull
from hyperdrive.lxc_async import Lxc
from hyperdrive.pipeline.health import oom_kills
from hyperdrive.pipeline.hulls import Hulls


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
    patch_debian_hull(tmp_path)  # patching twice is harmless


def test_progress_only_moves_forward() -> None:
    seen: list[Progress] = []
    tracker = ProgressTracker(seen.append)
    for line in ("I: Retrieving a", "I: Retrieving b", "Unpacking x", "I: Extracting y", "noise"):
        tracker.line(line)
    tracker.done(100, "ready")
    assert [p.percent for p in seen] == [15, 65, 100]


def test_mirror_comes_from_the_environment_or_defaults() -> None:
    assert mirror_from({}) == "http://deb.debian.org/debian"
    assert mirror_from({"HYPERDRIVE_APT_MIRROR": "http://m.example/debian"}) == (
        "http://m.example/debian"
    )


def test_hulls_know_their_versions_and_which_hull_a_ship_came_from(tmp_path: Path) -> None:
    lxcpath = tmp_path / "containers"
    hulls = Hulls("hd", Lxc(lxcpath, tmp_path / "logs"), tmp_path / "records" / "hulls.json")
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
    assert hulls.logs == tmp_path / "lxc"


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
