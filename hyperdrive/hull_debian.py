"""The Debian hulls (bookworm, trixie): LXC's debian template (debootstrap), patched for ships.

Ships get their address from their LXC config, so the hull runs no DHCP client
(`iface eth0 inet manual`), and units that slow a container's boot or fail in one are masked.
`lxc-create` output goes to a setup log; a failed build leaves no container behind.

A full build (lxc-create, then `apt-get dist-upgrade`) keeps its finished tree in the LXC cache
(`/var/cache/lxc/hyperdrive/`, the seed); the next build copies the seed (seconds) instead of
unpacking ~400 packages again, until the seed is SEED_MAX_AGE_S old or a fresh build is asked.
The copy is made of hard links where it can be (one filesystem): a hull is never written after
its build (ships are overlays on it), and the patch replaces files instead of rewriting them, so
hulls and the seed can share their files; a seed being replaced leaves older hulls theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from hyperdrive import procs
from hyperdrive.aptsource import DEFAULT_MIRROR, AptSource
from hyperdrive.errors import ContainerError
from hyperdrive.idmap import IdMap
from hyperdrive.lxc_async import confine_hull
from hyperdrive.render import when

RELEASE = "bookworm"  # the `debian` hull's; `debian-13` is trixie's (hull_builder.RELEASES)
PACKAGES = (
    "python3",
    "python3-venv",
    "python3-pip",
    "nodejs",
    "npm",
    "git",
    "ca-certificates",
    "curl",
)
CREATE_TIMEOUT_S = 30 * 60
COPY_TIMEOUT_S = 10 * 60
LXC_CACHE = Path("/var/cache/lxc")
# A seed older than this is not copied: the next build is a full one, with current packages.
SEED_MAX_AGE_S = 7 * 24 * 3600
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LOG_TAIL_LINES = 30
# The template only warns when apt fails: a hull without these programs is a failed build.
REQUIRED = ("usr/bin/python3", "usr/bin/node", "usr/bin/npm", "usr/bin/git", "usr/bin/curl")
INTERFACES = """\
# Written by Hyperdrive: the address comes from the ship's LXC config, so no DHCP client runs.
auto lo
iface lo inet loopback

iface eth0 inet manual
"""
# systemd-tmpfiles empties /tmp at boot, while the build may already be writing there
# (pip's ensurepip does): create /tmp, never clean it (a fresh ship's /tmp is empty anyway).
TMPFILES_TMP = """\
# Written by Hyperdrive: keep what the build puts in /tmp during boot.
d /tmp 1777 root root -
"""
# Units a ship does not need: logins, timers, ssh (ships are entered with lxc-attach), and
# services that wait for hardware a container does not have.
MASKED_UNITS = (
    "ssh.service",
    "getty@.service",
    "container-getty@.service",
    "console-getty.service",
    "e2scrub_reap.service",
    "e2scrub_all.timer",
    "systemd-pstore.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "fstrim.timer",
    "systemd-timesyncd.service",
    "systemd-networkd-wait-online.service",
    "systemd-journal-flush.service",
    "systemd-logind.service",
    "cron.service",
    # trixie mounts a tmpfs over /tmp at boot, hiding what the build already wrote there (and
    # charging /tmp to the ship's memory limit): /tmp stays on the ship's disk, as on bookworm.
    "tmp.mount",
)
# lxc-create's output, matched by prefix, as steps of a progress bar (percent, what).
PROGRESS = (
    ("Checking cache download", 5, "checking the download cache"),
    ("Downloading debian minimal", 10, "downloading Debian (debootstrap)"),
    ("I: Retrieving", 15, "downloading Debian packages"),
    ("I: Extracting", 25, "extracting Debian packages"),
    ("I: Installing core packages", 30, "installing the base system"),
    ("I: Configuring", 35, "configuring the base system"),
    ("Copying rootfs", 45, "copying the root filesystem"),
    ("Installing packages", 55, "installing python3, nodejs, npm, git, curl"),
    ("Unpacking", 65, "unpacking packages"),
    ("Setting up", 80, "setting up packages"),
)
UPGRADING = (84, "upgrading to the mirror's current packages")
COPYING_SEED = 20  # percent; the step names the seed's date
PATCHING, VERIFIED = (90, "patching for static addresses and fast boot"), (100, "ready")
KEEPING = (95, "keeping the finished tree for fast rebuilds")
# dist-upgrade keeps the hull's own config files; unsafe-io: a build cut short is redone anyway.
UPGRADE = ("apt-get", "-y", "-o", "Dpkg::Options::=--force-confold", "dist-upgrade")


@dataclass(frozen=True)
class Progress:
    """One step of a hull build: how far (percent) and what it is doing."""

    percent: int
    step: str


def create_argv(lxcpath: Path, name: str, lxc_log: Path, release: str = RELEASE) -> list[str]:
    """`lxc-create -t debian` for the release (bookworm, trixie) with the hull's packages."""
    return [
        "lxc-create",
        "-P",
        str(lxcpath),
        "-n",
        name,
        "-t",
        "debian",
        "-l",
        "INFO",
        "-o",
        str(lxc_log),
        "--",
        "-r",
        release,
        f"--packages={','.join(PACKAGES)}",
    ]


def create_env(apt: AptSource, cache_dir: Path | None = None) -> dict[str, str]:
    """The template's environment: mirrors and proxies, no questions, dpkg without fsync
    (a third faster; a build cut short is redone), and optionally its own cache."""
    env = {"PATH": SYSTEM_PATH, "DEBIAN_FRONTEND": "noninteractive", "DPKG_FORCE": "unsafe-io"}
    env.update(apt.env())
    if cache_dir is not None:
        env["LXC_CACHE_PATH"] = str(cache_dir)
    return env


class ProgressTracker:
    """Turns lxc-create output lines into Progress steps, each step reported once."""

    def __init__(self, report: Callable[[Progress], None]) -> None:
        self.report = report
        self.percent = 0

    def line(self, text: str) -> None:
        for prefix, percent, step in PROGRESS:
            if percent > self.percent and text.startswith(prefix):
                self.percent = percent
                self.report(Progress(percent, step))
                return

    def done(self, percent: int, step: str) -> None:
        self.percent = percent
        self.report(Progress(percent, step))


@dataclass(frozen=True)
class Seed:
    """A finished hull's tree and LXC config kept in the LXC cache, shared by every squadron on
    the host: a build copies it (seconds) instead of unpacking ~400 packages (a minute)."""

    folder: Path  # <LXC cache>/hyperdrive/debian-<release>-<machine>

    @classmethod
    def in_cache(cls, cache_dir: Path | None, release: str = RELEASE) -> Seed:
        """The seed of one Debian release: each release keeps its own tree."""
        return cls(
            (cache_dir or LXC_CACHE) / "hyperdrive" / f"debian-{release}-{os.uname().machine}"
        )

    def built(self, ids: IdMap | None = None) -> float | None:
        """When the seed was made (epoch), None when there is none for today's package list or
        its tree was shifted into another id range than `ids` (a tree never shifted is fine)."""
        try:
            stamp = json.loads((self.folder / "seed.json").read_text())
            ok = stamp["packages"] == list(PACKAGES) and (self.folder / "rootfs").is_dir()
            shifted = stamp.get("ids")
            ok = ok and shifted in (None, _stamp_ids(ids))
            return float(stamp["built"]) if ok else None
        except (OSError, ValueError, KeyError, TypeError):
            return None

    async def copy_to(self, folder: Path, name: str) -> None:
        """The seed's tree and config as container `name` in `folder` (a shared lock: the seed
        is not replaced under the copy)."""
        async with _flock(self.folder.with_name(self.folder.name + ".lock"), fcntl.LOCK_SH):
            await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
            await _link_tree(self.folder / "rootfs", folder / "rootfs")
            config = await asyncio.to_thread((self.folder / "config").read_text)
        await asyncio.to_thread(_rename, config, folder, name)

    async def keep(self, folder: Path, mirror: str, ids: IdMap | None = None) -> None:
        """Make a finished hull the seed: copy it aside, then swap it in under the lock."""
        fresh = self.folder.with_name(f".{self.folder.name}.new-{os.getpid()}-{time.time_ns()}")
        old = fresh.with_name(fresh.name.replace(".new-", ".old-"))
        try:
            fresh.mkdir(parents=True)
            await _link_tree(folder / "rootfs", fresh / "rootfs")
            shutil.copy2(folder / "config", fresh / "config")
            stamp = {"built": time.time(), "packages": list(PACKAGES), "mirror": mirror}
            stamp["ids"] = _stamp_ids(ids)
            (fresh / "seed.json").write_text(json.dumps(stamp))
            async with _flock(self.folder.with_name(self.folder.name + ".lock"), fcntl.LOCK_EX):
                if self.folder.exists():
                    self.folder.rename(old)
                fresh.rename(self.folder)
        finally:
            for leftover in (fresh, old):
                await asyncio.to_thread(shutil.rmtree, leftover, ignore_errors=True)


def _stamp_ids(ids: IdMap | None) -> list[int] | None:
    return [ids.uid, ids.gid] if ids is not None else None


@asynccontextmanager
async def _flock(path: Path, mode: int, seconds: float = COPY_TIMEOUT_S) -> AsyncIterator[None]:
    """An flock taken without blocking the loop (polled), released when the block ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        async with asyncio.timeout(seconds):
            while True:
                try:
                    fcntl.flock(handle, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.2)
        yield


async def _link_tree(source: Path, target: Path) -> None:
    """`cp -al` (hard links: a second, no data written); across filesystems `cp -a` (a reflink
    where the filesystem has them). Owners, modes, symlinks and xattrs are kept."""
    linked = await procs.run(["cp", "-al", "--", str(source), str(target)], timeout=COPY_TIMEOUT_S)
    if linked.returncode == 0:
        return
    await asyncio.to_thread(shutil.rmtree, target, ignore_errors=True)
    argv = ["cp", "-a", "--reflink=auto", "--", str(source), str(target)]
    done = await procs.run(argv, timeout=COPY_TIMEOUT_S)
    if done.returncode != 0:
        raise ContainerError(f"copying {source} to {target} failed: {done.output}")


def _rename(config: str, folder: Path, name: str) -> None:
    """The copy as the template would have made it under `name`: its LXC config, and the host
    name in /etc/hostname and /etc/hosts (lxc-copy renames a ship's from the hull's name)."""
    old = next(
        (
            ln.partition("=")[2].strip()
            for ln in config.splitlines()
            if ln.partition("=")[0].strip() == "lxc.uts.name"
        ),
        "",
    )
    (folder / "config").write_text(_renamed_config(config, folder, name))
    for path in (folder / "rootfs" / "etc" / "hostname", folder / "rootfs" / "etc" / "hosts"):
        with contextlib.suppress(FileNotFoundError):
            text = path.read_text()
            if old and old in text:
                _replace(path, re.sub(rf"\b{re.escape(old)}\b", name, text))


def _renamed_config(config: str, folder: Path, name: str) -> str:
    """The seed's LXC config with the new container's rootfs path and host name."""
    own = {"lxc.rootfs.path": f"dir:{folder / 'rootfs'}", "lxc.uts.name": name}
    lines = []
    for line in config.splitlines():
        key = line.partition("=")[0].strip()
        lines.append(f"{key} = {own[key]}" if key in own else line)
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class DebianHullBuild:
    """One Debian hull build: where, under which name, from which mirror, from the seed or not."""

    lxcpath: Path
    name: str
    setup_log: Path
    apt: AptSource = field(default=AptSource(DEFAULT_MIRROR, "Debian's own"))
    cache_dir: Path | None = None  # LXC_CACHE_PATH; None = /var/cache/lxc
    seconds: float = CREATE_TIMEOUT_S
    fresh: bool = False  # True: lxc-create and dist-upgrade even when a seed is there
    seed_max_age_s: float = SEED_MAX_AGE_S
    release: str = RELEASE  # Debian's code name: bookworm, trixie
    ids: IdMap | None = None  # the ships' id range; None: a privileged hull (tests of the build)

    @property
    def folder(self) -> Path:
        return self.lxcpath / self.name

    async def run(self, on_progress: Callable[[Progress], None] | None = None) -> str:
        """Create, patch, verify; on any failure destroy the hull and raise with the log tail.
        Returns how it was made (for the HullAssembled message)."""
        tracker = ProgressTracker(on_progress or (lambda _: None))
        seed = Seed.in_cache(self.cache_dir, self.release)
        self.setup_log.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self.setup_log.open("w", encoding="utf-8", errors="replace") as log:
                log.write(f"hull {self.name}: Debian {self.release}, {self.apt.describe()}\n")
                how = await self._make(seed, log, tracker)
                tracker.done(*PATCHING)
                await asyncio.to_thread(patch_debian_hull, self.folder)
                if self.ids is not None:
                    await asyncio.to_thread(confine_hull, self.folder, self.ids)
                self._verify()
                if how.startswith("built"):
                    tracker.done(*KEEPING)
                    await self._keep(seed, log)
        except BaseException:
            await _destroy(self.lxcpath, self.name)
            raise
        tracker.done(*VERIFIED)
        return how

    def seed_built(self) -> float | None:
        """When the seed this build copies was made; None when it makes a full build."""
        built = Seed.in_cache(self.cache_dir, self.release).built(self.ids)
        fresh_enough = built is not None and time.time() - built < self.seed_max_age_s
        return built if fresh_enough and not self.fresh else None

    def plan(self) -> str:
        """How the build will go, in words: from the kept tree or from the mirror."""
        built = self.seed_built()
        if built is None:
            return f"from {self.apt.describe()}"
        return f"from the Debian tree kept {when(built)} (`hd assemble --fresh` for the mirror's)"

    async def _make(self, seed: Seed, log: TextIO, tracker: ProgressTracker) -> str:
        """From the seed when there is a recent one, else lxc-create and dist-upgrade."""
        built = self.seed_built()
        if built is not None:
            step = f"copying the Debian tree kept {when(built)}"
            tracker.done(COPYING_SEED, step)
            log.write(f"{step} from {seed.folder}\n")
            await seed.copy_to(self.folder, self.name)
            return f"copied from the tree kept {when(built)}"
        await self._create(log, tracker)
        tracker.done(*UPGRADING)
        await self._upgrade(log)
        return f"built {self.plan()}"

    def _logger(
        self, log: TextIO, tail: deque[str], tracker: ProgressTracker | None
    ) -> Callable[[str], None]:
        def line(text: str) -> None:
            tail.append(text)
            if tracker is not None:
                tracker.line(text)
            log.write(text + "\n")
            log.flush()

        return line

    async def _create(self, log: TextIO, tracker: ProgressTracker) -> None:
        """Run lxc-create, every line into the setup log; ContainerError on failure."""
        tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        lxc_log = self.setup_log.with_name("lxc-create.log")
        argv = create_argv(self.lxcpath, self.name, lxc_log, self.release)
        env = create_env(self.apt, self.cache_dir)
        code = await _stream(argv, env, self._logger(log, tail, tracker), self.seconds)
        if code != 0:
            self._fail("lxc-create -t debian", code, tail)
        rootfs = self.folder / "rootfs"
        missing = [p for p in REQUIRED if not (rootfs / p).exists()]
        if missing:
            raise ContainerError(
                f"hull {self.name}: apt did not install /{', /'.join(missing)} "
                f"({self.apt.describe()}); full log: {self.setup_log}\n" + "\n".join(tail)
            )

    async def _upgrade(self, log: TextIO) -> None:
        """The template installs what its download cache had: bring the tree up to the mirror's
        current packages, then drop the downloaded .debs (ships never need them)."""
        tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        rootfs = str(self.folder / "rootfs")
        env = create_env(self.apt, self.cache_dir)
        for argv in (["chroot", rootfs, *UPGRADE], ["chroot", rootfs, "apt-get", "clean"]):
            code = await _stream(argv, env, self._logger(log, tail, None), self.seconds)
            if code != 0:
                self._fail(" ".join(argv[2:4]), code, tail)

    def _fail(self, what: str, code: int | None, tail: deque[str]) -> None:
        status = "timed out" if code is None else f"exited {code}"
        raise ContainerError(
            f"{what} for hull {self.name} {status} ({self.apt.describe()}); "
            f"full log: {self.setup_log}\n" + "\n".join(tail)
        )

    def _verify(self) -> None:
        rootfs = self.folder / "rootfs"
        missing = [p for p in REQUIRED if not (rootfs / p).exists()]
        if missing:
            raise ContainerError(
                f"hull {self.name}: /{', /'.join(missing)} missing after the build; "
                f"full log: {self.setup_log}"
            )

    async def _keep(self, seed: Seed, log: TextIO) -> None:
        """Keep the tree for the next build; a seed that cannot be written costs only speed."""
        try:
            await seed.keep(self.folder, self.apt.mirror, self.ids)
        except (OSError, ContainerError, TimeoutError) as err:
            log.write(f"could not keep the tree in {seed.folder} for fast rebuilds: {err}\n")
        else:
            log.write(f"kept the tree in {seed.folder} for fast rebuilds\n")


async def _stream(
    argv: list[str], env: dict[str, str], line: Callable[[str], None], seconds: float
) -> int | None:
    """Run argv, feeding each output line to `line`; None when killed after `seconds`."""
    proc = await procs.spawn(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        cwd="/",
        limit=1024 * 1024,
        start_new_session=True,  # so the template's children (debootstrap, apt) die with it
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(seconds):
            async for raw in proc.stdout:
                line(raw.decode(errors="replace").rstrip("\r\n"))
            return await proc.wait()
    except TimeoutError:
        return None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


async def _destroy(lxcpath: Path, name: str) -> None:
    """Remove a half-built hull; a hull that never got a config is just a folder."""
    if (lxcpath / name / "config").is_file():
        proc = await asyncio.create_subprocess_exec(
            "lxc-destroy",
            "-P",
            str(lxcpath),
            "-n",
            name,
            "-f",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 120)
    if (lxcpath / name).exists():
        await asyncio.to_thread(shutil.rmtree, lxcpath / name, ignore_errors=True)


def patch_debian_hull(folder: Path) -> None:
    """Static address (no DHCP), no network in the hull's own config, masked slow units,
    and a /tmp that boot does not empty."""
    config = folder / "config"
    keep = [ln for ln in config.read_text().splitlines() if not ln.strip().startswith("lxc.net.")]
    _replace(config, "\n".join(keep) + "\n")
    rootfs = folder / "rootfs"
    _replace(rootfs / "etc" / "network" / "interfaces", INTERFACES)
    (rootfs / "etc" / "tmpfiles.d").mkdir(parents=True, exist_ok=True)
    _replace(rootfs / "etc" / "tmpfiles.d" / "tmp.conf", TMPFILES_TMP)
    systemd = rootfs / "etc" / "systemd" / "system"
    for unit in MASKED_UNITS:
        link = systemd / unit
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("/dev/null")
    for wants in systemd.glob("*.wants"):
        for link in wants.iterdir():
            if link.name in MASKED_UNITS or _template_of(link.name) in MASKED_UNITS:
                link.unlink()


def _replace(path: Path, text: str) -> None:
    """Write a new file over `path` (never into it: its old inode may be the seed's too)."""
    new = path.with_name(path.name + ".hd-new")
    new.write_text(text)
    new.chmod(0o644)
    new.replace(path)


def _template_of(unit: str) -> str:
    """`getty@tty1.service` → `getty@.service`."""
    prefix, at, rest = unit.partition("@")
    return f"{prefix}@.{rest.rpartition('.')[2]}" if at else unit


# What a hull is measured to carry: runtime → (argv, the version in its output).
RUNTIME_PROBES = {
    "python": (("python3", "--version"), re.compile(r"Python ([0-9][0-9.]*)")),
    "node": (("node", "--version"), re.compile(r"v([0-9][0-9.]*)")),
}


async def runtime_versions(rootfs: Path) -> dict[str, str]:
    """`python3 --version` and `node --version` in the hull's tree (chroot: the hull never
    runs); a runtime that does not answer is left out."""
    found = {}
    for runtime, (argv, pattern) in RUNTIME_PROBES.items():
        done = await procs.run(
            ["chroot", str(rootfs), *argv], timeout=30, env={"PATH": SYSTEM_PATH}, merge=True
        )
        match = pattern.search(done.output) if done.returncode == 0 else None
        if match:
            found[runtime] = match.group(1)
    return found
