"""asyncio wrapper of the lxc-* programs: hulls, ship snapshots, ship config, start, attach, stop.

The python lxc bindings leak monitor cgroups, so every operation runs an `lxc-*` program as an
asyncio subprocess: argument list, `-P lxcpath`, a timeout, and `-l INFO -o <log_dir>/<name>.log`
whose new lines (lxc-copy fails with no word on stderr) go into every ContainerError.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import fcntl
import functools
import math
import os
import re
import shutil
import signal
import stat
import struct
from asyncio.subprocess import DEVNULL, PIPE
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from hyperdrive.errors import AttachTimedOut, ContainerError
from hyperdrive.files import write_atomically
from hyperdrive.idmap import IdMap, hand_over, passage_error, shift_tree
from hyperdrive.pipeline.model import ContainerInfo, Mount, ShipSpec, check_cpu_weight
from hyperdrive.procs import dying_with_us, in_thread_to_its_end, run, spawn

if TYPE_CHECKING:
    import jinja2

CONTAINER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
STATE_LINE = re.compile(r"'(?P<name>[^']+)' changed state to \[(?P<state>[A-Z]+)\]")
ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MARKER = "# --- hyperdrive: the lines below are generated from ShipSpec; edits are lost ---"
MANAGED_KEYS = ("lxc.net.", "lxc.uts.name", "lxc.cgroup.", "lxc.cgroup2.")
CFS_PERIOD_US = 100_000
LOG_TAIL_LINES = 30
MAX_LINE = 64 * 1024
DRAIN_S = 1.0  # after the command exits, how long its background children may hold the pipe
TEMPLATES = Path(__file__).parent / "templates"
LXCFS = Path("/var/lib/lxcfs")  # where lxcfs mounts the files its LXC mount hook binds
LXC_LOCKS = Path("/run/lxc/lock")  # root's LXC locks a container at <here>/<lxcpath>/.<name>

# The busybox hull's init. busybox init runs udhcpc (which clears the static address) and
# takes ~2 s to stop; this one runs nothing, gives processes up to 1 s after SIGTERM, then exits.
BUSYBOX_INIT = """#!/bin/sh
# Hyperdrive's init for busybox ships: the address is static (no udhcpc), and stop is quick.
others() {
  for d in /proc/[0-9]*; do
    case "${d#/proc/}" in 1) ;; *) return 0 ;; esac
  done
  return 1
}
stop() {
  kill -TERM -1 2>/dev/null
  i=0
  while [ $i -lt 100 ] && others; do sleep 0.01; i=$((i+1)); done
  kill -KILL -1 2>/dev/null
  exit 0
}
trap stop TERM USR1 USR2 PWR INT
/bin/mount -a 2>/dev/null
while :; do sleep 3600 & wait $!; done
"""
# LXC's default confinement (capabilities dropped, seccomp, the device allow-list); the
# Debian template's config includes it through debian.common.conf.
COMMON_CONF = "/usr/share/lxc/config/common.conf"
BUSYBOX_HULL_LINES = (
    f"lxc.include = {COMMON_CONF}",
    "lxc.init.cmd = /sbin/hd-init",
    "lxc.signal.halt = SIGTERM",
    # LXC skips cgroup mounts when the container keeps CAP_SYS_ADMIN, unless forced; with them
    # a ship can read its own limits.
    "lxc.mount.auto = cgroup:mixed:force proc:mixed sys:ro",
)


@dataclass(frozen=True)
class CgroupKeys:
    """Which cgroup version each controller lives on here: LXC ignores keys for the other."""

    memory: str | None  # "v1", "v2" or None (no controller)
    cpu: str | None
    memsw: bool  # v1 swap accounting: limit memory+swap too
    pids: str | None = None
    cpu_idle: bool = False  # cpu.idle (Linux 5.15): a cgroup that runs only on spare CPU time


class _Result(NamedTuple):
    argv: list[str]
    returncode: int | None  # None: timed out and killed
    stdout: str
    stderr: str
    logfile: Path
    offset: int


def detect_cgroups(
    root: Path = Path("/sys/fs/cgroup"), kernel: tuple[int, int] | None = None
) -> CgroupKeys:
    """Find where the memory and cpu controllers are mounted (v1, hybrid or pure v2 hosts)."""
    unified = root if (root / "cgroup.controllers").exists() else root / "unified"
    try:
        v2 = set((unified / "cgroup.controllers").read_text().split())
    except OSError:
        v2 = set()
    memory = "v1" if (root / "memory" / "memory.limit_in_bytes").exists() else None
    cpu = "v1" if (root / "cpu" / "cpu.cfs_quota_us").exists() else None
    pids = "v1" if (root / "pids" / "cgroup.procs").exists() else None
    return CgroupKeys(
        memory=memory or ("v2" if "memory" in v2 else None),
        cpu=cpu or ("v2" if "cpu" in v2 else None),
        memsw=(root / "memory" / "memory.memsw.limit_in_bytes").exists(),
        pids=pids or ("v2" if "pids" in v2 else None),
        cpu_idle=(cpu is not None or "cpu" in v2) and (kernel or _kernel()) >= (5, 15),
    )


def _kernel() -> tuple[int, int]:
    major, minor, *_ = [*re.findall(r"[0-9]+", os.uname().release), "0", "0"]
    return int(major), int(minor)


def cgroup_settings(spec: ShipSpec, keys: CgroupKeys) -> list[tuple[str, str]]:
    """The lxc config keys that apply the spec's limits on this host, in the order to set them."""
    settings: list[tuple[str, str]] = []
    if spec.memory_bytes is not None:
        size = str(spec.memory_bytes)
        if keys.memory == "v1":
            settings.append(("lxc.cgroup.memory.limit_in_bytes", size))
            if keys.memsw:
                settings.append(("lxc.cgroup.memory.memsw.limit_in_bytes", size))
        elif keys.memory == "v2":
            settings += [("lxc.cgroup2.memory.max", size), ("lxc.cgroup2.memory.swap.max", "0")]
        else:
            raise ContainerError("a memory limit was ordered but this host has no memory cgroup")
    if spec.cpus is not None:
        quota = str(max(1000, round(spec.cpus * CFS_PERIOD_US)))
        if keys.cpu == "v1":
            settings.append(("lxc.cgroup.cpu.cfs_period_us", str(CFS_PERIOD_US)))
            settings.append(("lxc.cgroup.cpu.cfs_quota_us", quota))
        elif keys.cpu == "v2":
            settings.append(("lxc.cgroup2.cpu.max", f"{quota} {CFS_PERIOD_US}"))
        else:
            raise ContainerError("a cpu limit was ordered but this host has no cpu cgroup")
    if spec.pids is not None and keys.pids is not None:  # no controller: no limit (doctor says)
        key = "lxc.cgroup.pids.max" if keys.pids == "v1" else "lxc.cgroup2.pids.max"
        settings.append((key, str(spec.pids)))
    if spec.cpu_idle and keys.cpu_idle:  # the kernel refuses a weight while idle is set
        settings.append((f"lxc.{_cpu_group(keys)}.cpu.idle", "1"))
    else:
        settings += [(f"lxc.{g}.{k}", v) for g, k, v in cpu_weight(spec.cpu_weight, keys)]
    return settings


def _cpu_group(keys: CgroupKeys) -> str:
    return "cgroup" if keys.cpu == "v1" else "cgroup2"


def cpu_weight(weight: int | None, keys: CgroupKeys) -> list[tuple[str, str, str]]:
    """(lxc.cgroup or lxc.cgroup2, key, value) for a CPU weight in v2 units: v1 counts it in
    cpu.shares (1024 is normal, so 100 → 1024); nothing where there is no cpu controller."""
    if weight is None:
        return []
    if keys.cpu == "v1":
        return [("cgroup", "cpu.shares", str(max(2, round(weight * 1024 / 100))))]
    if keys.cpu == "v2":
        return [("cgroup2", "cpu.weight", str(weight))]
    return []


@functools.cache
def _template() -> jinja2.Template:
    import jinja2  # noqa: PLC0415 - ~2 MB an idle daemon never needs: loaded at the first ship

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - an LXC config, not HTML; every value is validated
    )
    return env.get_template("ship.conf.j2")


def render_config(hull_config: str, spec: ShipSpec, keys: CgroupKeys, *, lxcfs: bool = True) -> str:
    """The ship's config: the hull's lines minus the keys Hyperdrive manages, then its own.
    `lxcfs`: whether lxcfs serves here; if not, its mount hook (common.conf.d), which would
    find nothing to mount, is not run at every start (a shell and five programs)."""
    return _template().render(
        base=_hull_lines(hull_config),
        marker=MARKER,
        spec=spec,
        broadcast=spec.broadcast,
        cgroup=cgroup_settings(spec, keys),
        mounts=[_mount_entry(m) for m in spec.mounts],
        lxcfs=lxcfs,
    )


def lxcfs_serves(root: Path = LXCFS) -> bool:
    """Is lxcfs mounted (its /proc files there for containers' mount hook to bind)?"""
    return (root / "proc").is_dir()


def patch_busybox_hull(folder: Path) -> None:
    """Give a fresh busybox container a static-address init that stops fast, and no network."""
    config = folder / "config"
    keep = [
        line
        for line in config.read_text().splitlines()
        if not line.strip().startswith(
            ("lxc.net.", "lxc.init.cmd", "lxc.signal.halt", "lxc.mount.auto")
        )
    ]
    config.write_text("\n".join([*keep, *BUSYBOX_HULL_LINES]) + "\n")
    rootfs = _rootfs(config.read_text(), folder)
    init = rootfs / "sbin" / "hd-init"
    init.write_text(BUSYBOX_INIT)
    init.chmod(0o755)
    rcs = rootfs / "etc" / "init.d" / "rcS"
    if rcs.exists():  # in case someone boots busybox init after all: never run udhcpc
        lines = [ln for ln in rcs.read_text().splitlines() if "udhcpc" not in ln]
        rcs.write_text("\n".join(lines) + "\n")


def confine_hull(folder: Path, ids: IdMap) -> None:
    """Make a fresh hull unprivileged: its tree shifted into the ships' id range, its folder
    theirs (LXC mounts a ship's root as the ship's root), and its config mapping the ids and
    including LXC's default confinement. Ships snapshotted from it inherit all three."""
    shift_tree(_rootfs((folder / "config").read_text(), folder), ids)
    os.chown(folder, ids.uid, ids.gid)
    config = folder / "config"
    ours = ("lxc.idmap", "lxc.tty.dir", "lxc.hook.post-stop", "lxc.hook.clone")  # set below
    lines = [ln for ln in config.read_text().splitlines() if _key(ln) not in ours]
    if not any(_key(ln) == "lxc.include" and "common.conf" in ln for ln in lines):
        lines.insert(0, f"lxc.include = {COMMON_CONF}")
    # the ship's root may not move bind mounts: no /dev/lxc (as LXC's userns.conf says); no
    # post-stop hooks: lxcfs's (common.conf.d) sleeps 0.5 s for a reboot ships never make;
    # no clone hook: common.conf's clonehostname ran two shells and a sed at every lxc-copy
    # to rename the hull in /etc/hosts, which Lxc.snapshot does itself (rename_in_hosts)
    lines += [*ids.lxc_lines(), "lxc.tty.dir =", "lxc.hook.post-stop =", "lxc.hook.clone ="]
    write_atomically(config, "\n".join(lines) + "\n")


def _key(line: str) -> str:
    return line.partition("=")[0].strip()


def rename_in_hosts(lower: Path, upper: Path, old: str, new: str) -> None:
    """What LXC's clonehostname hook does at lxc-copy, in-process: the first `old` of each line
    of the hull's /etc/hosts (`lower`) becomes `new`, in the snapshot's own copy (`upper`, its
    overlay's upper dir: its /etc made as the hull's). No-op when the hull's file does not name
    `old` or the snapshot has its own file already (a hull whose config still runs the hook)."""
    text = _etc_text(lower, "hosts")
    if text is not None and old in text:
        renamed = "".join(ln.replace(old, new, 1) for ln in text.splitlines(keepends=True))
        _etc_write(lower, upper, "hosts", renamed)


def name_in_hostname(lower: Path, upper: Path, new: str) -> None:
    """What lxc-copy does to a snapshot's /etc/hostname: the new name, when the hull has one."""
    if _etc_text(lower, "hostname") is not None:
        _etc_write(lower, upper, "hostname", new)


def _etc_text(lower: Path, name: str) -> str | None:
    """The hull's /etc/<name> when it is a regular file, else None."""
    source = lower / "etc" / name
    try:
        return source.read_text() if stat.S_ISREG(source.lstat().st_mode) else None
    except (OSError, ValueError):
        return None


def _etc_write(lower: Path, upper: Path, name: str, text: str) -> None:
    """/etc/<name> in the overlay's upper dir, owned and moded as the hull's; one that is there
    already is kept (a hull whose config still runs LXC's clone hook wrote it)."""
    source, target = lower / "etc" / name, upper / "etc" / name
    if target.exists():
        return
    st, etc = source.lstat(), source.parent.lstat()
    if not target.parent.is_dir():
        target.parent.mkdir(mode=stat.S_IMODE(etc.st_mode))
        os.chown(target.parent, etc.st_uid, etc.st_gid)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        os.fchown(handle.fileno(), st.st_uid, st.st_gid)
        os.fchmod(handle.fileno(), stat.S_IMODE(st.st_mode))


def snapshot_by_hand(lxcpath: Path, hull: str, ship: str, ids: IdMap) -> bool:
    """What `lxc-copy -s -B overlayfs` makes of a hull of ours, written here: the folder, its
    overlay's delta and work folders (the ship's root's), the config naming the new root and
    name, LXC's reverse-dependency records both ways, the ship's /etc/hosts and /etc/hostname
    (lxc-copy writes the new name there; the clone hook the hosts file). False (nothing
    written) for a hull lxc-copy must handle: a clone hook to run, a root that is not a folder,
    other lines naming the hull's folder. lxc-copy costs a process, and the unmount of the
    overlay it mounts to run clone hooks syncs the whole host filesystem (12–50 ms)."""
    source, folder = lxcpath / hull, lxcpath / ship
    try:
        hull_lines = (source / "config").read_text().splitlines()
    except (OSError, ValueError):
        return False
    lines = _snapshot_lines(hull_lines, source, folder)
    if lines is None:
        return False
    lower = Path(_rootfs("\n".join(hull_lines), source))
    folder.mkdir(mode=0o770)  # there already (a race): FileExistsError, nothing touched
    try:
        config = [*lines, f"lxc.uts.name = {ship}"]
        _write_snapshot(lxcpath, hull, ship, ids=ids, lines=config, lower=lower)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return True


def _write_snapshot(
    lxcpath: Path, hull: str, ship: str, *, ids: IdMap, lines: builtins.list[str], lower: Path
) -> None:
    """The snapshot's files, in lxc-copy's order: folders, records, config, then the hull's
    list of snapshots (lxc-destroy of the ship takes it out again). No fsync, as lxc-copy:
    write_config replaces the config with a synced one before the ship is started."""
    folder = lxcpath / ship
    upper = folder / "overlay" / "delta"
    for made in (folder, folder / "overlay", upper, folder / "overlay" / "work", folder / "rootfs"):
        made.mkdir(mode=0o755, exist_ok=True)
        os.chown(made, ids.uid, ids.gid)
    os.chmod(folder, 0o770)  # noqa: S103 - lxc-copy's own mode: the ship's root and host root
    rename_in_hosts(lower, upper, hull, ship)
    name_in_hostname(lower, upper, ship)
    _write_new(folder / "lxc_rdepends", f"{lxcpath}\n{hull}\n", 0o644)  # less the umask, as LXC
    config = [*lines, f"lxc.rootfs.path = overlay:{lower}:{upper}"]
    _write_new(folder / "config", "\n".join(config) + "\n", 0o640)  # write_config fsyncs its own
    with _lxc_lock(lxcpath, hull):  # lxc-destroy of a sibling rewrites this file under it
        fd = os.open(
            lxcpath / hull / "lxc_snapshots", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640
        )
        try:
            os.write(fd, f"{lxcpath}\n{ship}\n".encode())
        finally:
            os.close(fd)


def _write_new(path: Path, text: str, mode: int) -> None:
    """A new file, unsynced as lxc-copy writes its own (it fails if `path` is there)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def _snapshot_lines(
    lines: builtins.list[str], source: Path, folder: Path
) -> builtins.list[str] | None:
    """The hull's config lines a snapshot keeps, or None when only lxc-copy can copy it."""
    keys = [_key(ln) for ln in lines]
    hooks = [i for i, k in enumerate(keys) if k == "lxc.hook.clone"]
    includes = [i for i, k in enumerate(keys) if k == "lxc.include"]
    if (
        not hooks
        or lines[hooks[-1]].partition("=")[2].strip()
        or max(includes, default=-1) > hooks[-1]
    ):
        return None  # a clone hook may still run (from the hull or from an include after it)
    root = next((ln for ln, k in zip(lines, keys, strict=True) if k == "lxc.rootfs.path"), "")
    if not root.partition("=")[2].strip().startswith("dir:"):
        return None
    kept = [
        ln
        for ln, k in zip(lines, keys, strict=True)
        if k not in ("lxc.rootfs.path", "lxc.uts.name")
    ]
    if any(str(source) in ln for ln in kept if not ln.lstrip().startswith("#")) or folder.exists():
        return None  # lxc-copy rewrites such paths; a folder there is for lxc-copy to refuse
    return kept


@contextlib.contextmanager
def _lxc_lock(lxcpath: Path, name: str) -> Iterator[None]:
    """The lock LXC's own programs take on a container (an OFD write lock on its lock file)."""
    folder = Path(f"{LXC_LOCKS}/{lxcpath}")
    folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    fd = os.open(folder / f".{name}", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.fcntl(
            fd, fcntl.F_OFD_SETLKW, struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        )
        yield
    finally:
        os.close(fd)  # closing the description releases its lock


class Lxc:
    """The lxc-* programs on one lxcpath, each call with a timeout and its log in errors."""

    def __init__(
        self,
        lxcpath: Path,
        log_dir: Path,
        *,
        ids: IdMap,
        cgroups: CgroupKeys | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.lxcpath = lxcpath
        self.log_dir = log_dir
        self.ids = ids  # every ship runs unprivileged, its root being ids.uid on the host
        self.cgroups = cgroups or detect_cgroups()
        self.timeout = timeout

    async def create_busybox_hull(self, name: str) -> None:
        """`lxc-create -t busybox` (0.3 s), then patch it for static addresses and a fast stop."""
        self._check(await self._exec("lxc-create", name, "-t", "busybox", seconds=120))
        try:
            await asyncio.to_thread(patch_busybox_hull, self.lxcpath / name)
            await asyncio.to_thread(confine_hull, self.lxcpath / name, self.ids)
        except OSError as err:
            await self.destroy(name)
            raise ContainerError(f"hull {name}: could not patch the busybox hull: {err}") from err

    async def snapshot(self, hull: str, ship: str) -> None:
        """Create `ship` as an overlay snapshot of the stopped `hull`: written here for a hull
        of ours (1–3 ms, `snapshot_by_hand`), by `lxc-copy` otherwise (5–220 ms)."""
        _check_name(ship)
        try:
            if await in_thread_to_its_end(
                snapshot_by_hand, self.lxcpath, _check_name(hull), ship, self.ids
            ):
                return
        except OSError as err:
            raise ContainerError(f"ship {ship}: could not snapshot hull {hull}: {err}") from err
        args = ("-N", ship, "-s", "-B", "overlayfs")
        result = await self._exec("lxc-copy", hull, *args, log=ship, seconds=self.timeout)
        if result.returncode == 0 and not await self.exists(ship):
            raise self._error(result, f"lxc-copy made no container {ship}")
        self._check(result)
        try:  # what common.conf's clone hook did, in-process (confine_hull clears the hook)
            await in_thread_to_its_end(
                rename_in_hosts, self.rootfs(hull), self.rootfs(ship), hull, ship
            )
        except OSError as err:
            raise ContainerError(f"ship {ship}: could not write its /etc/hosts: {err}") from err

    async def write_config(self, ship: str, spec: ShipSpec) -> None:
        """Render the ship's config from templates/ship.conf.j2 over what lxc-copy wrote."""
        path = self._config(ship)
        if not path.is_file():
            raise ContainerError(f"ship {ship} does not exist: snapshot it from a hull first")
        text = render_config(path.read_text(), spec, self.cgroups, lxcfs=lxcfs_serves())
        if not self._maps_ids(text):
            raise ContainerError(
                f"ship {ship} would run privileged: its hull's config maps no ids "
                f"({self.ids.lxc_lines()[0]}); assemble the hull again"
            )
        for where in (self.lxcpath, *(m.host_path for m in spec.mounts)):
            if (why := passage_error(where, self.ids)) is not None:
                raise ContainerError(f"ship {ship}: {why}")
        await in_thread_to_its_end(write_atomically, path, text)

    async def hand_over(self, path: Path) -> None:
        """Give a host file or tree the daemon wrote for a ship to the ship's root."""
        await asyncio.to_thread(hand_over, path, self.ids)

    def unprivileged(self, name: str) -> bool:
        """Does the container's config map the ships' ids (made by this version, this host)?"""
        try:
            return self._maps_ids(self._config(name).read_text())
        except OSError:
            return False

    def _maps_ids(self, config: str) -> bool:
        lines = {ln.strip() for ln in config.splitlines()}
        return all(line in lines for line in self.ids.lxc_lines())

    async def states(self) -> AsyncIterator[tuple[str, str]]:
        """Every state change of the containers on our lxcpath, as LXC's own monitor says it
        (lxc-monitor reads lxc-monitord's socket: told, not polled); ends if lxc-monitor does."""
        proc = await asyncio.create_subprocess_exec(
            *dying_with_us("lxc-monitor", "-P", str(self.lxcpath), "-n", ".*"),
            stdin=DEVNULL, stdout=PIPE, stderr=DEVNULL,
        )  # fmt: skip
        assert proc.stdout is not None
        try:
            while line := await proc.stdout.readline():
                if said := STATE_LINE.fullmatch(line.decode(errors="replace").strip()):
                    yield said["name"], said["state"]
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def start(self, ship: str) -> None:
        """`lxc-start -d` (10–40 ms): returns once the container runs."""
        self._check(await self._exec("lxc-start", ship, "-d", seconds=self.timeout))

    async def stop(
        self,
        ship: str,
        kill: bool = False,
        timeout: float = 10.0,  # noqa: ASYNC109 - lxc-stop's own -t: halt, then kill
    ) -> None:
        """Stop a ship (its init gets the halt signal; killed after `timeout`); no-op if stopped."""
        args = ("-k",) if kill else ("-t", str(max(1, math.ceil(timeout))))
        result = await self._exec("lxc-stop", ship, *args, seconds=timeout + 10)
        if result.returncode != 2:  # 2: the container was not running
            self._check(result)

    async def destroy(self, ship: str) -> None:
        """Kill the container if it runs, delete it and its log; no-op if it does not exist."""
        if not await self.exists(ship):
            return
        self._check(await self._exec("lxc-destroy", ship, "-f", seconds=self.timeout))
        self._logfile(ship).unlink(missing_ok=True)

    async def exists(self, ship: str) -> bool:
        """LXC's own test: the container's config file exists."""
        return self._config(ship).is_file()

    def names(self) -> builtins.list[str]:
        """Every container on the lxcpath (a folder with a config), without running lxc-ls."""
        with contextlib.suppress(FileNotFoundError):
            return sorted(e.name for e in self.lxcpath.iterdir() if (e / "config").is_file())
        return []

    def snapshot_source(self, ship: str) -> str | None:
        """The container an overlay snapshot was made from, read from its LXC config."""
        try:
            config = self._config(ship).read_text()
        except (OSError, ValueError):
            return None
        for line in config.splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "lxc.rootfs.path":
                kind, _, rest = value.strip().partition(":")
                if kind in ("overlay", "overlayfs"):
                    return Path(rest.rpartition(":")[0]).parent.name
        return None

    def has_snapshots(self, name: str) -> bool:
        """LXC's own list of snapshots made from this container (lxc-destroy refuses them)."""
        try:
            return bool((self.lxcpath / name / "lxc_snapshots").read_text().strip())
        except OSError:
            return False

    def rootfs(self, ship: str) -> Path:
        """Where to put files the ship should see (before start): an overlay ship's upper dir."""
        config = self._config(ship)
        try:
            text = config.read_text()
        except FileNotFoundError:
            raise ContainerError(f"ship {ship} does not exist") from None
        return _rootfs(text, config.parent)

    async def set_cpu_weight(self, ship: str, weight: int) -> None:
        """Give a running ship another CPU weight (v2 units) at once, with `lxc-cgroup`; a
        ship started idle (a build's) stops being idle first."""
        keys = [("cpu.idle", "0")] if self.cgroups.cpu_idle else []
        keys += [(k, v) for _, k, v in cpu_weight(check_cpu_weight(weight), self.cgroups)]
        for key, value in keys:
            self._check(await self._exec("lxc-cgroup", ship, key, value, seconds=self.timeout))

    async def info(self, ship: str) -> ContainerInfo | None:
        """State and init pid of one container, or None if it does not exist."""
        if not await self.exists(ship):
            return None
        result = await self._exec("lxc-info", ship, "-s", "-p", seconds=self.timeout)
        self._check(result)
        pairs = (line.partition(":") for line in result.stdout.splitlines())
        fields = {key.strip().upper(): value.strip() for key, _, value in pairs}
        return ContainerInfo(ship, fields.get("STATE", "UNKNOWN"), _pid(fields.get("PID")))

    async def attach(
        self,
        ship: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        timeout: float,  # noqa: ASYNC109 - kills the command in the ship, not just the wait
        on_line: Callable[[str], None] | None = None,
    ) -> int:
        """Run argv in the ship with exactly `env`; stream each output line; return its status.

        Raises AttachTimedOut (after killing the command and its children) when it outlives
        `timeout`, and ContainerError when lxc-attach itself failed (not running, no such file).
        """
        logfile, tail = self._logfile(ship), deque[str](maxlen=LOG_TAIL_LINES)
        argv_ = self._attach_argv(ship, argv, env, logfile)
        offset = _size(logfile)

        def emit(line: str) -> None:
            tail.append(line)
            if on_line is not None:
                on_line(line)

        owner = (self.ids.uid, self.ids.gid)
        returncode = await _stream(argv_, emit, timeout, ship, tail, owner=owner)
        if returncode != 0 and (errors := _error_lines(logfile, offset)):
            output = "\n".join(tail)
            raise ContainerError(f"lxc-attach {ship} failed: {errors}\n{output}".strip())
        return returncode

    async def list(self) -> builtins.list[ContainerInfo]:
        """Every container on this lxcpath with its state (`lxc-ls -f`)."""
        argv = ["lxc-ls", "-P", str(self.lxcpath), "-f", "-F", "NAME,STATE,PID"]
        code, out, err = await _communicate(argv, self.timeout)
        if code != 0:
            raise ContainerError(f"lxc-ls on {self.lxcpath} failed ({code}): {err.strip()}")
        rows = [line.split() for line in out.splitlines()[1:]]
        return [ContainerInfo(r[0], r[1], _pid(r[2])) for r in rows if len(r) >= 3]

    def _attach_argv(
        self, ship: str, argv: Sequence[str], env: Mapping[str, str], logfile: Path
    ) -> builtins.list[str]:
        _check_name(ship)
        if not argv:
            raise ContainerError("attach needs a command")
        command = ["lxc-attach", "-P", str(self.lxcpath), "-n", ship]
        command += ["-l", "INFO", "-o", str(logfile), "--clear-env"]
        for key, value in env.items():
            if not ENV_KEY.fullmatch(key) or "\0" in value:
                raise ContainerError(f"invalid environment variable {key!r}")
            command += ["-v", f"{key}={value}"]
        return [*command, "--", *argv]

    async def _exec(
        self, program: str, name: str, *args: str, seconds: float, log: str = ""
    ) -> _Result:
        """Run `program -P lxcpath -n name -l INFO -o log args…`; never raises for its status."""
        _check_name(name)
        logfile = self._logfile(log or name)
        argv = [program, "-P", str(self.lxcpath), "-n", name, "-l", "INFO", "-o", str(logfile)]
        argv += args
        offset = _size(logfile)
        code, out, err = await _communicate(argv, seconds)
        return _Result(argv, code, out, err, logfile, offset)

    def _check(self, result: _Result) -> None:
        if result.returncode != 0:
            raise self._error(result, "")

    def _error(self, result: _Result, why: str) -> ContainerError:
        status = "timed out" if result.returncode is None else f"exited {result.returncode}"
        tail = _log_tail(result.logfile, result.offset)
        shown = " ".join([result.argv[0], result.argv[4], *result.argv[9:]])
        message = f"{shown} {status}{': ' + why if why else ''}\n{result.stderr.strip()}"
        return ContainerError(f"{message.strip()}\n--- {result.logfile} (tail) ---\n{tail}")

    def _config(self, name: str) -> Path:
        return self.lxcpath / _check_name(name) / "config"

    def _logfile(self, name: str) -> Path:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.lxcpath.mkdir(parents=True, exist_ok=True)
        return self.log_dir / f"{_check_name(name)}.log"


async def _communicate(argv: Sequence[str], seconds: float) -> tuple[int | None, str, str]:
    """Run argv; return (status or None on timeout, stdout, stderr). The child never outlives us."""
    result = await run(argv, timeout=seconds, cwd="/")
    if result.returncode is None:
        return None, "", ""
    return result.returncode, result.stdout, result.stderr


async def _stream(
    argv: Sequence[str],
    emit: Callable[[str], None],
    seconds: float,
    ship: str,
    tail: deque[str],
    *,
    owner: tuple[int, int],
) -> int:
    """Run lxc-attach, feeding each output line to emit; kill the command tree on timeout.
    The output pipe is the ship's root's (`owner`): a script may reopen it as /dev/stderr."""
    proc = await spawn(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd="/",
        pipe_owner=owner,
    )
    assert proc.stdout is not None
    pump = asyncio.create_task(_pump_lines(proc.stdout, emit))
    try:
        async with asyncio.timeout(seconds):
            returncode = await proc.wait()
            # A command's background children may keep the pipe open: read what is there.
            await asyncio.wait({pump}, timeout=DRAIN_S)
    except TimeoutError:
        raise AttachTimedOut(ship, seconds, "\n".join(tail)) from None
    finally:
        if proc.returncode is None:
            await _kill_tree(proc)
        if not pump.done():
            pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump
    return returncode


async def _pump_lines(stream: asyncio.StreamReader, emit: Callable[[str], None]) -> None:
    """Split a byte stream into lines (very long lines in MAX_LINE pieces) and emit each."""
    buffer = b""
    while chunk := await stream.read(65536):
        *lines, buffer = (buffer + chunk).split(b"\n")
        for line in lines:
            emit(line.rstrip(b"\r").decode(errors="replace"))
        while len(buffer) > MAX_LINE:
            emit(buffer[:MAX_LINE].decode(errors="replace"))
            buffer = buffer[MAX_LINE:]
    if buffer:
        emit(buffer.rstrip(b"\r").decode(errors="replace"))


async def _kill_tree(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL lxc-attach and everything below it (the command runs as its child, in the ship).

    Killing only lxc-attach would leave the command running; the tree is frozen first with
    SIGSTOP so no process can fork or be reparented away while we collect it.
    """
    frozen: set[int] = set()
    for _ in range(10):
        found = set(_descendants(proc.pid)) - frozen
        if not found:
            break
        _signal_all(found, signal.SIGSTOP)
        frozen |= found
    _signal_all({*frozen, proc.pid}, signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), 10)


def _descendants(root: int) -> builtins.list[int]:
    """Every process below `root`, read from /proc (the host sees the ship's processes)."""
    children: dict[int, builtins.list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _signal_all(pids: set[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _hull_lines(config: str) -> builtins.list[str]:
    """The config lines that come from the hull: before our marker, minus the keys we manage."""
    lines = config.split(MARKER, 1)[0].rstrip("\n").splitlines()
    return [ln for ln in lines if not ln.strip().startswith(MANAGED_KEYS)]


def _mount_entry(mount: Mount) -> dict[str, str]:
    """Fields of one lxc.mount.entry; the host side must exist (LXC's own error is obscure)."""
    if not mount.host_path.exists():
        raise ContainerError(f"cannot mount {mount.host_path}: it does not exist")
    kind = "dir" if mount.host_path.is_dir() else "file"
    options = f"{'ro,' if mount.readonly else ''}bind,create={kind}"
    target = mount.container_path.lstrip("/")
    return {"source": str(mount.host_path), "target": target, "options": options}


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not CONTAINER_NAME.fullmatch(name):
        raise ContainerError(f"invalid container name {name!r}")
    return name


def _rootfs(config: str, folder: Path) -> Path:
    """The writable root from lxc.rootfs.path: `dir:PATH`, `PATH` or `overlay:LOWER:UPPER`."""
    for line in config.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "lxc.rootfs.path":
            kind, _, rest = value.strip().partition(":")
            if kind in ("overlay", "overlayfs"):
                return Path(rest.rpartition(":")[2])
            return Path(rest if kind == "dir" else value.strip())
    return folder / "rootfs"


def _pid(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _log_tail(path: Path, offset: int) -> str:
    """The last lines this call added to an lxc log file."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            text = handle.read().decode(errors="replace")
    except FileNotFoundError:
        return "(no log written)"
    return "\n".join(text.splitlines()[-LOG_TAIL_LINES:]) or "(log is empty)"


def _error_lines(path: Path, offset: int) -> str:
    """lxc-attach's ERROR lines since offset (the running ship's monitor logs there too)."""
    lines = _log_tail(path, offset).splitlines()
    return "\n".join(ln for ln in lines if ln.startswith("lxc-attach ") and " ERROR " in ln)
