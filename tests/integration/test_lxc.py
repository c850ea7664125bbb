"""lxc_async against real LXC: busybox hull, overlay ships on a private bridge, attach, limits."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from hyperdrive.errors import AttachTimedOut, ContainerError
from hyperdrive.lxc_async import Lxc
from hyperdrive.network import mac_for_ip
from hyperdrive.pipeline.model import BUILD_CPU_WEIGHT, RUNNING_CPU_WEIGHT
from tests.integration.lxc_fixtures import (
    Bridge,
    app_mount,
    get_until_ok,
    host_cpu_idle,
    host_cpu_weight,
)

# The fixtures, re-exported so pytest finds them here (conftest.py belongs to everyone).
from tests.integration.lxc_fixtures import bridge as bridge  # noqa: PLC0414
from tests.integration.lxc_fixtures import hull as hull  # noqa: PLC0414
from tests.integration.lxc_fixtures import lxc as lxc  # noqa: PLC0414
from tests.integration.lxc_fixtures import site as site  # noqa: PLC0414
from tests.integration.lxc_fixtures import tag as tag  # noqa: PLC0414

pytestmark = [pytest.mark.root, pytest.mark.lxc]

MiB = 1024 * 1024
PATH = "/bin:/sbin:/usr/bin:/usr/sbin"


async def running_ship(lxc: Lxc, hull: str, bridge: Bridge, site: Path, host: int, **kw) -> str:
    """Snapshot, configure and start a ship at the subnet's `host`-th address."""
    ship = f"{hull.removesuffix('-hull')}-s{host}"
    await lxc.snapshot(hull, ship)
    await lxc.write_config(ship, bridge.spec(host, f"ship{host}", mounts=app_mount(site), **kw))
    await lxc.start(ship)
    return ship


async def run(lxc: Lxc, ship: str, *argv: str, timeout: float = 10) -> tuple[int, list[str]]:
    lines: list[str] = []
    code = await lxc.attach(ship, argv, {"PATH": PATH}, timeout, lines.append)
    return code, lines


async def test_busybox_hull_boots_without_dhcp(lxc: Lxc, hull: str) -> None:
    config = (lxc.lxcpath / hull / "config").read_text()
    rootfs = lxc.lxcpath / hull / "rootfs"
    assert "lxc.net." not in config
    assert "lxc.init.cmd = /sbin/hd-init" in config
    assert (rootfs / "sbin" / "hd-init").stat().st_mode & 0o111
    assert "udhcpc" not in (rootfs / "etc" / "init.d" / "rcS").read_text()
    assert [(c.name, c.state) for c in await lxc.list()] == [(hull, "STOPPED")]


async def test_ship_serves_http_on_its_static_address(
    lxc: Lxc, hull: str, bridge: Bridge, site: Path
) -> None:
    ship = await running_ship(lxc, hull, bridge, site, 10)
    info = await lxc.info(ship)
    assert info is not None
    assert info.state == "RUNNING"
    assert info.pid
    code, _ = await run(lxc, ship, "httpd", "-h", "/app", "-p", "8080")
    assert code == 0
    body = await get_until_ok(f"http://{bridge.subnet.network_address + 10}:8080/index.html")
    assert body == "hello from a ship\n"
    _, mac = await run(lxc, ship, "cat", "/sys/class/net/eth0/address")
    assert mac == [mac_for_ip(bridge.subnet.network_address + 10)]
    _, names = await run(lxc, ship, "hostname")
    assert names == ["ship10"]
    _, processes = await run(lxc, ship, "ps")
    assert not any("udhcpc" in line for line in processes)


async def test_files_put_in_rootfs_before_start_are_in_the_ship(
    lxc: Lxc, hull: str, bridge: Bridge, site: Path, tag: str
) -> None:
    ship = f"{tag}-copied"
    await lxc.snapshot(hull, ship)
    await lxc.write_config(ship, bridge.spec(24, "copied"))
    (lxc.rootfs(ship) / "app").mkdir()
    (lxc.rootfs(ship) / "app" / "Procfile").write_text("web: httpd -f\n")
    await lxc.start(ship)
    _, lines = await run(lxc, ship, "cat", "/app/Procfile")
    assert lines == ["web: httpd -f"]
    assert not (lxc.lxcpath / hull / "rootfs" / "app").exists()  # the hull is untouched


def hull_etc(lxc: Lxc, hull: str, name: str, text: str) -> Path:
    """A file in the hull's /etc, the ships' root's as the hull's own files are."""
    path = lxc.rootfs(hull) / "etc" / name
    path.write_text(text)
    os.chown(path, lxc.ids.uid, lxc.ids.gid)
    return path


async def test_a_ship_names_itself_in_etc_hosts_where_its_hull_named_the_hull(
    lxc: Lxc, hull: str, bridge: Bridge, tag: str
) -> None:
    # what LXC's clone hook did (confine_hull clears it): Debian's hull names itself there
    hosts = hull_etc(lxc, hull, "hosts", f"127.0.0.1 localhost\n127.0.1.1 {hull}\n")
    assert "lxc.hook.clone =" in (lxc.lxcpath / hull / "config").read_text().splitlines()
    ship = f"{tag}-named"
    await lxc.snapshot(hull, ship)
    await lxc.write_config(ship, bridge.spec(25, "named"))
    await lxc.start(ship)
    _, lines = await run(lxc, ship, "cat", "/etc/hosts")
    assert lines == ["127.0.0.1 localhost", f"127.0.1.1 {ship}"]
    _, owner = await run(lxc, ship, "stat", "-c", "%u:%g %a", "/etc/hosts", "/etc")
    assert owner == ["0:0 644", "0:0 755"]  # the ship's root's, as the hull's were
    assert hosts.read_text().endswith(f" {hull}\n")  # the hull is untouched


def _tree(folder: Path) -> list[str]:
    """Each path under a container's folder with its mode and owner."""
    return sorted(
        f"{p.relative_to(folder)} {oct(p.lstat().st_mode)} {p.lstat().st_uid}:{p.lstat().st_gid}"
        for p in folder.rglob("*")
        if p.relative_to(folder).parts[:3] != ("overlay", "work", "work")  # made by the mount
    )


async def test_a_snapshot_written_without_lxc_copy_is_what_lxc_copy_makes(
    lxc: Lxc, hull: str, bridge: Bridge, tag: str
) -> None:
    hull_etc(lxc, hull, "hostname", f"{hull}\n")
    ours, theirs = f"{tag}-ours", f"{tag}-theirs"
    await lxc.snapshot(hull, ours)
    argv = ["lxc-copy", "-P", str(lxc.lxcpath), "-n", hull, "-N", theirs, "-s", "-B", "overlayfs"]
    copy = await asyncio.create_subprocess_exec(*argv)
    assert await copy.wait() == 0
    mine, lxcs = lxc.lxcpath / ours, lxc.lxcpath / theirs
    assert _tree(mine) == _tree(lxcs)

    def lines(folder: Path, name: str) -> list[str]:
        return sorted(filter(None, (folder / "config").read_text().replace(name, "X").splitlines()))

    assert lines(mine, ours) == lines(lxcs, theirs)
    assert (mine / "overlay" / "delta" / "etc" / "hostname").read_text().strip() == ours
    assert (mine / "lxc_rdepends").read_text() == (lxcs / "lxc_rdepends").read_text()
    assert lxc.snapshot_source(ours) == hull
    listed = (lxc.lxcpath / hull / "lxc_snapshots").read_text().split()
    assert listed.count(ours) == 1
    await lxc.write_config(ours, bridge.spec(26, "ours"))
    await lxc.start(ours)
    _, name = await run(lxc, ours, "cat", "/etc/hostname")
    assert name == [ours]
    await lxc.destroy(ours)  # lxc-destroy takes it out of the hull's list, as for lxc-copy's
    await lxc.destroy(theirs)
    assert not lxc.has_snapshots(hull)
    await lxc.destroy(hull)
    assert await lxc.list() == []


async def test_app_mount_is_read_only(lxc: Lxc, hull: str, bridge: Bridge, site: Path) -> None:
    ship = await running_ship(lxc, hull, bridge, site, 11)
    code, lines = await run(lxc, ship, "sh", "-c", "echo x > /app/index.html")
    assert code != 0
    assert any("Read-only" in line for line in lines)
    assert (site / "index.html").read_text() == "hello from a ship\n"


async def test_stop_is_quick_and_destroy_removes_the_ship(
    lxc: Lxc, hull: str, bridge: Bridge, site: Path
) -> None:
    ship = await running_ship(lxc, hull, bridge, site, 12)
    started = time.monotonic()
    await lxc.stop(ship)
    # our init honours the halt signal: not the kill after lxc-stop's own 10 s (its speed is
    # measured in bench/lxc_ship.py)
    assert time.monotonic() - started < 8
    info = await lxc.info(ship)
    assert info is not None
    assert info.state == "STOPPED"
    await lxc.stop(ship)  # stopping a stopped ship is fine
    await lxc.start(ship)
    await lxc.destroy(ship)  # running: killed first
    assert not await lxc.exists(ship)
    assert await lxc.info(ship) is None
    assert [c.name for c in await lxc.list()] == [hull]
    await lxc.destroy(ship)  # already gone: nothing to do


async def test_attach_passes_exactly_the_given_env(
    lxc: Lxc, hull: str, bridge: Bridge, site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HD_HOST_SECRET", "must-not-leak")
    ship = await running_ship(lxc, hull, bridge, site, 13)
    env = {"PATH": PATH, "PORT": "3000", "GREETING": "hello world; $(not run)"}
    lines: list[str] = []
    code = await lxc.attach(ship, ["env"], env, 10, lines.append)
    assert code == 0
    assert "GREETING=hello world; $(not run)" in lines
    assert "PORT=3000" in lines
    assert not any("HD_HOST_SECRET" in line for line in lines)


async def test_attach_streams_lines_as_they_come_and_returns_the_status(
    lxc: Lxc, hull: str, bridge: Bridge, site: Path
) -> None:
    ship = await running_ship(lxc, hull, bridge, site, 14)
    seen: list[tuple[float, str]] = []
    script = "echo one; sleep 1; echo two >&2; exit 3"
    code = await lxc.attach(
        ship, ["sh", "-c", script], {"PATH": PATH}, 10, lambda s: seen.append((time.monotonic(), s))
    )
    assert code == 3
    assert [line for _, line in seen] == ["one", "two"]
    assert seen[1][0] - seen[0][0] > 0.5  # "one" arrived before the command slept


async def test_a_command_in_a_ship_may_open_its_output_as_dev_stdout_and_dev_stderr(
    lxc: Lxc, hull: str, bridge: Bridge, site: Path
) -> None:
    """Build scripts write `>/dev/stderr`: the output pipe is the ship's root's to reopen."""
    ship = await running_ship(lxc, hull, bridge, site, 25)
    script = "echo out > /dev/stdout && echo err > /dev/stderr"
    code, lines = await run(lxc, ship, "sh", "-c", script)
    assert (code, lines) == (0, ["out", "err"])


async def test_attach_timeout_kills_the_command_and_its_children(
    lxc: Lxc, hull: str, bridge: Bridge, site: Path
) -> None:
    ship = await running_ship(lxc, hull, bridge, site, 15)
    started = time.monotonic()
    with pytest.raises(AttachTimedOut, match="killed after 1 s") as caught:
        await lxc.attach(ship, ["sh", "-c", "echo started; sleep 37 & sleep 38"], {}, 1.0)
    assert time.monotonic() - started < 5
    assert "started" in caught.value.output_tail
    _, processes = await run(lxc, ship, "ps")
    assert not any(("sleep 37" in ln or "sleep 38" in ln) for ln in processes), processes


async def test_cancelling_attach_kills_the_command(
    lxc: Lxc, hull: str, bridge: Bridge, site: Path
) -> None:
    ship = await running_ship(lxc, hull, bridge, site, 23)
    task = asyncio.create_task(lxc.attach(ship, ["sleep", "39"], {"PATH": PATH}, 60))
    await asyncio.sleep(0.5)  # a superseded deploy cancels its build like this
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    _, processes = await run(lxc, ship, "ps")
    assert not any("sleep 39" in line for line in processes), processes


async def test_attach_of_a_missing_program_is_a_container_error(
    lxc: Lxc, hull: str, bridge: Bridge, site: Path
) -> None:
    ship = await running_ship(lxc, hull, bridge, site, 16)
    with pytest.raises(ContainerError, match="Failed to exec"):
        await lxc.attach(ship, ["/app/no-such-build-script"], {}, 10)


async def test_attach_to_a_stopped_ship_is_a_container_error(
    lxc: Lxc, hull: str, bridge: Bridge, site: Path
) -> None:
    ship = await running_ship(lxc, hull, bridge, site, 17)
    await lxc.stop(ship, kill=True)
    with pytest.raises(ContainerError, match="lxc-attach"):
        await lxc.attach(ship, ["true"], {}, 10)


async def test_memory_and_cpu_limits_are_visible_and_enforced(
    lxc: Lxc, hull: str, bridge: Bridge, site: Path
) -> None:
    ship = await running_ship(lxc, hull, bridge, site, 18, memory_bytes=32 * MiB, cpus=0.5)
    if lxc.cgroups.memory == "v1":
        limit_file, quota_file = "memory/memory.limit_in_bytes", "cpu/cpu.cfs_quota_us"
    else:
        limit_file, quota_file = "memory.max", "cpu.max"
    _, limit = await run(lxc, ship, "cat", f"/sys/fs/cgroup/{limit_file}")
    assert limit == [str(32 * MiB)]
    _, quota = await run(lxc, ship, "cat", f"/sys/fs/cgroup/{quota_file}")
    assert quota[0].split()[0] == "50000"
    small, _ = await run(lxc, ship, "dd", "if=/dev/zero", "of=/dev/null", "bs=4M", "count=1")
    assert small == 0
    big, _ = await run(lxc, ship, "dd", "if=/dev/zero", "of=/dev/null", "bs=96M", "count=1")
    assert big == 128 + 9  # SIGKILLed by the OOM killer: a 96 MiB buffer in a 32 MiB ship


async def test_a_ship_starts_at_its_configured_cpu_weight_and_can_be_given_another(
    lxc: Lxc, hull: str, bridge: Bridge, site: Path
) -> None:
    """How a build runs at a low weight and its app at the normal one (pipeline/start.py)."""
    ship = await running_ship(lxc, hull, bridge, site, 19, cpu_weight=BUILD_CPU_WEIGHT)
    low, normal = ("102", "1024") if lxc.cgroups.cpu == "v1" else ("10", "100")
    inside = (
        "/sys/fs/cgroup/cpu/cpu.shares" if lxc.cgroups.cpu == "v1" else "/sys/fs/cgroup/cpu.weight"
    )
    assert await run(lxc, ship, "cat", inside) == (0, [low])
    info = await lxc.info(ship)
    assert info is not None
    assert info.pid is not None
    assert host_cpu_weight(info.pid) == low
    await lxc.set_cpu_weight(ship, RUNNING_CPU_WEIGHT)
    assert host_cpu_weight(info.pid) == normal
    assert await run(lxc, ship, "cat", inside) == (0, [normal])
    with pytest.raises(ContainerError, match="out of range"):
        await lxc.set_cpu_weight(ship, 0)
    await lxc.stop(ship, kill=True)
    with pytest.raises(ContainerError, match="lxc-cgroup"):
        await lxc.set_cpu_weight(ship, RUNNING_CPU_WEIGHT)


async def test_a_ship_started_idle_runs_on_spare_cpu_until_it_is_given_a_weight(
    lxc: Lxc, hull: str, bridge: Bridge, site: Path
) -> None:
    """How a build runs (SCHED_IDLE: every running ship goes first) and its app then does."""
    assert lxc.cgroups.cpu_idle, "this kernel has cpu.idle (5.15 or later)"
    ship = await running_ship(
        lxc, hull, bridge, site, 20, cpu_weight=BUILD_CPU_WEIGHT, cpu_idle=True
    )
    info = await lxc.info(ship)
    assert info is not None
    assert info.pid is not None
    assert host_cpu_idle(info.pid) == "1"
    await lxc.set_cpu_weight(ship, RUNNING_CPU_WEIGHT)
    assert host_cpu_idle(info.pid) == "0"
    assert host_cpu_weight(info.pid) == ("1024" if lxc.cgroups.cpu == "v1" else "100")


async def test_snapshot_of_a_missing_hull_shows_lxc_copys_log(lxc: Lxc, tag: str) -> None:
    with pytest.raises(ContainerError) as caught:
        await lxc.snapshot(f"{tag}-nohull", f"{tag}-ship")
    message = str(caught.value)
    assert "lxc-copy" in message
    assert f"{tag}-nohull is not defined" in message
    assert str(lxc.log_dir / f"{tag}-ship.log") in message
    assert not await lxc.exists(f"{tag}-ship")


async def test_a_hull_with_ships_cannot_be_destroyed(
    lxc: Lxc, hull: str, bridge: Bridge, site: Path
) -> None:
    ship = await running_ship(lxc, hull, bridge, site, 19)
    await lxc.stop(ship, kill=True)
    with pytest.raises(ContainerError, match="lxc-destroy"):
        await lxc.destroy(hull)
    assert await lxc.exists(hull)
    await lxc.destroy(ship)
    await lxc.destroy(hull)
    assert await lxc.list() == []


async def test_write_config_twice_keeps_one_network(
    lxc: Lxc, hull: str, bridge: Bridge, site: Path, tag: str
) -> None:
    ship = f"{tag}-twice"
    await lxc.snapshot(hull, ship)
    await lxc.write_config(ship, bridge.spec(20, "first", mounts=app_mount(site)))
    await lxc.write_config(ship, bridge.spec(21, "second", mounts=app_mount(site)))
    config = (lxc.lxcpath / ship / "config").read_text()
    assert config.count("lxc.net.0.type") == 1
    assert config.count("lxc.mount.entry = " + str(site)) == 1
    assert "lxc.uts.name = second" in config
    assert "lxc.rootfs.path = overlay:" in config  # the hull's own lines are kept
    with pytest.raises(ContainerError, match="does not exist"):
        await lxc.write_config(f"{tag}-nothere", bridge.spec(22, "x"))
