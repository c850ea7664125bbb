"""The Debian hull: bookworm from LXC's debian template (debootstrap), patched for ships.

Ships get their address from their LXC config, so the hull runs no DHCP client
(`iface eth0 inet manual`), and units that slow a container's boot or fail in one are masked.
`lxc-create` output goes to a setup log; a failed build leaves no container behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from hyperdrive.errors import ContainerError

RELEASE = "bookworm"
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
DEFAULT_MIRROR = "http://deb.debian.org/debian"
CREATE_TIMEOUT_S = 30 * 60
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
PATCHING, VERIFIED = (90, "patching for static addresses and fast boot"), (100, "ready")


@dataclass(frozen=True)
class Progress:
    """One step of a hull build: how far (percent) and what it is doing."""

    percent: int
    step: str


def mirror_from(environ: Mapping[str, str]) -> str:
    """The apt mirror: HYPERDRIVE_APT_MIRROR, else deb.debian.org."""
    return environ.get("HYPERDRIVE_APT_MIRROR", "").strip() or DEFAULT_MIRROR


def create_argv(lxcpath: Path, name: str, lxc_log: Path) -> list[str]:
    """`lxc-create -t debian` for bookworm with the hull's packages."""
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
        RELEASE,
        f"--packages={','.join(PACKAGES)}",
    ]


def create_env(mirror: str, cache_dir: Path | None = None) -> dict[str, str]:
    """The template's environment: the mirror, no questions, and optionally its own cache."""
    env = {"PATH": SYSTEM_PATH, "MIRROR": mirror, "DEBIAN_FRONTEND": "noninteractive"}
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
class DebianHullBuild:
    """One `lxc-create -t debian` run: where, under which name, from which mirror."""

    lxcpath: Path
    name: str
    setup_log: Path
    mirror: str = DEFAULT_MIRROR
    cache_dir: Path | None = None  # LXC_CACHE_PATH; None = /var/cache/lxc
    seconds: float = CREATE_TIMEOUT_S

    async def run(self, on_progress: Callable[[Progress], None] | None = None) -> None:
        """Create, patch, verify; on any failure destroy the hull and raise with the log tail."""
        tracker = ProgressTracker(on_progress or (lambda _: None))
        self.setup_log.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self.setup_log.open("w", encoding="utf-8", errors="replace") as log:
                tail = await self._create(log, tracker)
            tracker.done(*PATCHING)
            await asyncio.to_thread(patch_debian_hull, self.lxcpath / self.name)
            self._verify(tail)
        except BaseException:
            await _destroy(self.lxcpath, self.name)
            raise
        tracker.done(*VERIFIED)

    async def _create(self, log: TextIO, tracker: ProgressTracker) -> deque[str]:
        """Run lxc-create, every line into the setup log; ContainerError on failure."""
        tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)

        def line(text: str) -> None:
            tail.append(text)
            tracker.line(text)
            log.write(text + "\n")
            log.flush()

        argv = create_argv(self.lxcpath, self.name, self.setup_log.with_name("lxc-create.log"))
        code = await _stream(argv, create_env(self.mirror, self.cache_dir), line, self.seconds)
        if code != 0:
            status = "timed out" if code is None else f"exited {code}"
            raise ContainerError(
                f"lxc-create -t debian for hull {self.name} {status} (mirror {self.mirror}); "
                f"full log: {self.setup_log}\n" + "\n".join(tail)
            )
        return tail

    def _verify(self, tail: deque[str]) -> None:
        rootfs = self.lxcpath / self.name / "rootfs"
        missing = [p for p in REQUIRED if not (rootfs / p).exists()]
        if missing:
            raise ContainerError(
                f"hull {self.name}: apt did not install /{', /'.join(missing)} "
                f"(mirror {self.mirror}); full log: {self.setup_log}\n" + "\n".join(tail)
            )


async def _stream(
    argv: list[str], env: dict[str, str], line: Callable[[str], None], seconds: float
) -> int | None:
    """Run argv, feeding each output line to `line`; None when killed after `seconds`."""
    proc = await asyncio.create_subprocess_exec(
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
    config.write_text("\n".join(keep) + "\n")
    rootfs = folder / "rootfs"
    (rootfs / "etc" / "network" / "interfaces").write_text(INTERFACES)
    (rootfs / "etc" / "tmpfiles.d").mkdir(parents=True, exist_ok=True)
    (rootfs / "etc" / "tmpfiles.d" / "tmp.conf").write_text(TMPFILES_TMP)
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


def _template_of(unit: str) -> str:
    """`getty@tty1.service` → `getty@.service`."""
    prefix, at, rest = unit.partition("@")
    return f"{prefix}@.{rest.rpartition('.')[2]}" if at else unit
