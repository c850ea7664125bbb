"""Ship configs without LXC: cgroup keys per host layout, rendering, validation."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from hyperdrive.errors import ContainerError
from hyperdrive.idmap import IdMap
from hyperdrive.lxc_async import (
    MARKER,
    CgroupKeys,
    Lxc,
    cgroup_settings,
    detect_cgroups,
    lxcfs_serves,
    rename_in_hosts,
    render_config,
    snapshot_by_hand,
)
from hyperdrive.pipeline.model import Mount, ShipSpec

HULL_CONFIG = """lxc.rootfs.path = overlay:/c/hull/rootfs:/c/ship/overlay/delta
lxc.uts.name = ship
lxc.net.0.type = veth
lxc.net.0.link = lxcbr0
lxc.init.cmd = /sbin/hd-init
"""
V1 = CgroupKeys(memory="v1", cpu="v1", memsw=True, pids="v1")
V2 = CgroupKeys(memory="v2", cpu="v2", memsw=False, pids="v2")


def spec(**kw: object) -> ShipSpec:
    base: dict[str, object] = {
        "ip": IPv4Address("10.213.0.7"),
        "gateway": IPv4Address("10.213.0.1"),
        "prefixlen": 24,
        "bridge": "hyperdrivebr0",
        "hostname": "web",
    }
    return ShipSpec(**{**base, **kw})  # type: ignore[arg-type]


def test_detects_v1_controllers_on_a_hybrid_host(tmp_path: Path) -> None:
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text("max")
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    (tmp_path / "pids").mkdir()
    (tmp_path / "pids" / "cgroup.procs").write_text("1\n")
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.controllers").write_text("")
    found = detect_cgroups(tmp_path, kernel=(5, 10))
    assert found == CgroupKeys(memory="v1", cpu="v1", memsw=False, pids="v1")
    assert detect_cgroups(tmp_path, kernel=(6, 1)).cpu_idle


def test_detects_a_pure_v2_host(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    found = detect_cgroups(tmp_path, kernel=(5, 15))
    assert found == CgroupKeys(memory="v2", cpu="v2", memsw=False, pids="v2", cpu_idle=True)


def test_limits_use_the_keys_that_take_effect() -> None:
    limited = spec(memory_bytes=64 * 2**20, cpus=1.5)
    assert cgroup_settings(limited, V1) == [
        ("lxc.cgroup.memory.limit_in_bytes", "67108864"),
        ("lxc.cgroup.memory.memsw.limit_in_bytes", "67108864"),
        ("lxc.cgroup.cpu.cfs_period_us", "100000"),
        ("lxc.cgroup.cpu.cfs_quota_us", "150000"),
    ]
    assert cgroup_settings(limited, V2) == [
        ("lxc.cgroup2.memory.max", "67108864"),
        ("lxc.cgroup2.memory.swap.max", "0"),
        ("lxc.cgroup2.cpu.max", "150000 100000"),
    ]
    assert cgroup_settings(spec(), CgroupKeys(None, None, memsw=False)) == []
    assert cgroup_settings(spec(pids=512), V1)[-1] == ("lxc.cgroup.pids.max", "512")
    assert cgroup_settings(spec(pids=512), V2)[-1] == ("lxc.cgroup2.pids.max", "512")
    with pytest.raises(ContainerError, match="no memory cgroup"):
        cgroup_settings(limited, CgroupKeys(None, "v1", memsw=False))


def test_an_idle_ship_is_idle_where_the_kernel_can_and_at_its_weight_elsewhere() -> None:
    idle = spec(cpu_weight=10, cpu_idle=True)
    assert cgroup_settings(idle, replace(V1, cpu_idle=True)) == [("lxc.cgroup.cpu.idle", "1")]
    assert cgroup_settings(idle, replace(V2, cpu_idle=True)) == [("lxc.cgroup2.cpu.idle", "1")]
    assert cgroup_settings(idle, V2) == [("lxc.cgroup2.cpu.weight", "10")]


def test_a_cpu_weight_is_v1_shares_or_v2_weight_and_a_preference_without_a_controller() -> None:
    assert cgroup_settings(spec(cpu_weight=10), V1) == [("lxc.cgroup.cpu.shares", "102")]
    assert cgroup_settings(spec(cpu_weight=100), V1) == [("lxc.cgroup.cpu.shares", "1024")]
    assert cgroup_settings(spec(cpu_weight=1), V1) == [("lxc.cgroup.cpu.shares", "10")]
    assert cgroup_settings(spec(cpu_weight=10), V2) == [("lxc.cgroup2.cpu.weight", "10")]
    assert cgroup_settings(spec(cpu_weight=10), CgroupKeys("v1", None, memsw=False)) == []
    assert "lxc.cgroup.cpu.shares = 102" in render_config(HULL_CONFIG, spec(cpu_weight=10), V1)
    with pytest.raises(ContainerError, match="cpu weight 0 is out of range"):
        spec(cpu_weight=0)


def test_lxcfs_mount_hook_runs_only_where_lxcfs_serves(tmp_path: Path) -> None:
    """Without lxcfs its hook (a shell script LXC runs at every start) has nothing to bind."""
    assert not lxcfs_serves(tmp_path)
    (tmp_path / "proc").mkdir()
    assert lxcfs_serves(tmp_path)
    without = render_config(HULL_CONFIG, spec(), V1, lxcfs=False)
    assert without.endswith("\nlxc.hook.mount =\n")
    assert without == render_config(without, spec(), V1, lxcfs=False)
    assert "lxc.hook.mount" not in render_config(HULL_CONFIG, spec(), V1, lxcfs=True)


def test_render_keeps_hull_lines_and_replaces_managed_ones(tmp_path: Path) -> None:
    ship = spec(mounts=(Mount(tmp_path, "/app"), Mount(tmp_path, "/cache/pip", readonly=False)))
    text = render_config(HULL_CONFIG, ship, V1)
    assert text == render_config(text, ship, V1)  # rendering over itself changes nothing
    hull, ours = text.split(MARKER + "\n")
    assert hull == "lxc.rootfs.path = overlay:/c/hull/rootfs:/c/ship/overlay/delta\n" + (
        "lxc.init.cmd = /sbin/hd-init\n"
    )
    assert "lxc.net.0.hwaddr = 02:48:0a:d5:00:07\n" in ours
    assert "lxc.net.0.ipv4.address = 10.213.0.7/24 10.213.0.255\n" in ours
    assert "lxc.net.0.ipv4.gateway = 10.213.0.1\n" in ours
    assert "lxc.uts.name = web\n" in ours
    assert f"lxc.mount.entry = {tmp_path} app none ro,bind,create=dir 0 0\n" in ours
    assert f"lxc.mount.entry = {tmp_path} cache/pip none bind,create=dir 0 0\n" in ours


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("gateway", IPv4Address("10.99.0.1"), "gateway"),
        ("hostname", "web\nlxc.init.cmd = /evil", "hostname"),
        ("bridge", "br0 evil", "bridge"),
        ("memory_bytes", 1024, "below 4 MiB"),
        ("mounts", (Mount(Path("/srv/my app"), "/app"),), "mount path"),
        ("mounts", (Mount(Path("/srv"), "/app/../etc"),), "mount path"),
        ("mounts", (Mount(Path("/srv"), "/"),), "root"),
    ],
)
def test_specs_that_could_break_the_config_are_refused(
    field: str, value: object, message: str
) -> None:
    with pytest.raises(ContainerError, match=message):
        spec(**{field: value})


def test_a_missing_mount_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ContainerError, match="does not exist"):
        render_config(HULL_CONFIG, spec(mounts=(Mount(tmp_path / "gone", "/app"),)), V1)


@pytest.mark.parametrize(
    ("rootfs_line", "expected"),
    [
        ("overlay:/c/hull/rootfs:/c/ship/overlay/delta", "/c/ship/overlay/delta"),
        ("dir:/c/ship/rootfs", "/c/ship/rootfs"),
        ("/c/ship/rootfs", "/c/ship/rootfs"),
    ],
)
def test_rootfs_is_where_the_ship_sees_new_files(
    tmp_path: Path, rootfs_line: str, expected: str
) -> None:
    lxc = Lxc(tmp_path, tmp_path / "logs", ids=IdMap(100000, 100000), cgroups=V1)
    (tmp_path / "ship").mkdir()
    (tmp_path / "ship" / "config").write_text(f"lxc.rootfs.path = {rootfs_line}\n")
    assert lxc.rootfs("ship") == Path(expected)
    with pytest.raises(ContainerError, match="does not exist"):
        lxc.rootfs("other")


def test_the_hulls_name_in_etc_hosts_becomes_the_ships_in_the_ships_own_copy(
    tmp_path: Path,
) -> None:
    lower, upper = tmp_path / "hull" / "rootfs", tmp_path / "ship" / "delta"
    (lower / "etc").mkdir(parents=True)
    upper.mkdir(parents=True)
    hosts = lower / "etc" / "hosts"
    hosts.write_text("127.0.0.1 localhost\n127.0.1.1 hull-1 hull-1.local\n")
    hosts.chmod(0o640)
    rename_in_hosts(lower, upper, "hull-1", "ship-a")
    copy = upper / "etc" / "hosts"
    # as LXC's clonehostname hook (sed s|old|new|): the first on each line
    assert copy.read_text() == "127.0.0.1 localhost\n127.0.1.1 ship-a hull-1.local\n"
    assert copy.stat().st_mode & 0o777 == 0o640
    assert hosts.read_text().startswith("127.0.0.1 localhost\n127.0.1.1 hull-1 ")
    copy.write_text("kept\n")  # the snapshot has its own (the hook ran): left as it is
    rename_in_hosts(lower, upper, "hull-1", "ship-a")
    assert copy.read_text() == "kept\n"


def test_a_hull_whose_hosts_does_not_name_it_gives_its_ships_no_copy(tmp_path: Path) -> None:
    lower, upper = tmp_path / "hull", tmp_path / "delta"
    (lower / "etc").mkdir(parents=True)
    upper.mkdir()
    rename_in_hosts(lower, upper, "hull-1", "ship-a")  # no /etc/hosts (busybox)
    (lower / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    rename_in_hosts(lower, upper, "hull-1", "ship-a")
    assert not (upper / "etc").exists()


@pytest.mark.parametrize(
    "lines",
    [
        ["lxc.rootfs.path = dir:{hull}/rootfs", "lxc.hook.clone = /bin/hook"],  # a hook of its own
        ["lxc.rootfs.path = dir:{hull}/rootfs", "lxc.hook.clone =", "lxc.include = x.conf"],
        ["lxc.rootfs.path = overlay:/a:/b", "lxc.hook.clone ="],  # not a folder: lxc-copy's
        [
            "lxc.rootfs.path = dir:{hull}/rootfs",
            "lxc.mount.fstab = {hull}/fstab",
            "lxc.hook.clone =",
        ],
        ["lxc.rootfs.path = dir:{hull}/rootfs"],  # an old hull: common.conf's clone hook runs
    ],
)
def test_a_hull_only_lxc_copy_can_snapshot_is_left_to_it(tmp_path: Path, lines: list[str]) -> None:
    hull = tmp_path / "hull"
    hull.mkdir()
    (hull / "config").write_text("\n".join(lines).format(hull=hull) + "\n")
    assert not snapshot_by_hand(tmp_path, "hull", "ship", IdMap(100000, 100000))
    assert not (tmp_path / "ship").exists()
    assert not (hull / "lxc_snapshots").exists()


def test_a_missing_hull_is_left_to_lxc_copy_and_its_log(tmp_path: Path) -> None:
    assert not snapshot_by_hand(tmp_path, "nohull", "ship", IdMap(100000, 100000))
    assert not (tmp_path / "ship").exists()
