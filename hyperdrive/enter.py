"""`hd enter APP` and `ssh … enter APP`: a shell in the app's live ship, in its folder and env."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hyperdrive.errors import HyperdriveError

SHELL = ("/bin/sh", "-c", "cd /app 2>/dev/null; . /hyperdrive/env 2>/dev/null; exec /bin/sh")


def live_ship(status: Mapping[str, Any], app: str) -> str:
    """The app's live ship as the daemon's status says; a clear error when there is none."""
    row = next((a for a in status.get("apps", []) if a.get("app") == app), None)
    if row is None or not row.get("ship"):
        raise HyperdriveError(f"{app} has no live ship to enter")
    return str(row["ship"])


def enter_argv(status: Mapping[str, Any], app: str, lxcpath: Path) -> list[str]:
    """The lxc-attach command line that opens the shell (run by `hd` or on the SSH PTY)."""
    return ["lxc-attach", "-P", str(lxcpath), "-n", live_ship(status, app), "--", *SHELL]
