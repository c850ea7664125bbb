"""systemd where it is PID 1: long-lived children get a transient scope of their own.

A service's processes all live in its cgroup, and `systemctl restart` (KillMode=mixed) kills
what is left there once the main process has gone. nginx must outlive the daemon, so it is
started with `systemd-run --scope`: systemd then tracks it as `<unit>.scope`, outside the service.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from hyperdrive.errors import InvalidName
from hyperdrive.procs import run

RUNTIME_DIR = Path("/run/systemd/system")  # sd_booted(3): exists only when systemd is PID 1
UNIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,200}")
TIMEOUT = 10.0


def booted(runtime_dir: Path = RUNTIME_DIR) -> bool:
    """Whether systemd manages this machine, and systemd-run is there to ask it."""
    return runtime_dir.is_dir() and shutil.which("systemd-run") is not None


def check_unit(name: str) -> str:
    """A unit name without its suffix, safe on systemd-run's command line."""
    if not isinstance(name, str) or not UNIT_NAME.fullmatch(name):
        raise InvalidName(f"invalid systemd unit name {name!r}")
    return name


def scope_argv(unit: str, argv: Sequence[str], description: str) -> list[str]:
    """argv run inside the transient `<unit>.scope`; its daemonized children stay there."""
    return [
        "systemd-run",
        "--scope",
        "--quiet",
        "--collect",  # a scope that failed is unloaded too, so its name can be used again
        f"--unit={check_unit(unit)}.scope",
        f"--description={description}",
        "--",
        *argv,
    ]


async def stop_scope(unit: str) -> None:
    """Stop `<unit>.scope` if it is loaded: what is left of a dead master (its old workers)."""
    await run(["systemctl", "stop", f"{check_unit(unit)}.scope"], timeout=TIMEOUT)
