"""Room on the data disk: work that needs it is refused up front with a message that says so,
and what is left is kept for what holds the squadron together (triggers, events, records)."""

from __future__ import annotations

import os
from pathlib import Path

MiB = 1 << 20
FOR_WORK = 64 * MiB  # a push's objects, a build's export and logs
FOR_TRIGGERS = 4 * MiB  # a trigger is a few hundred bytes; the reserve is for everything else


def shortage(folder: Path, reserve: int) -> str:
    """'' while `folder`'s filesystem has `reserve` bytes free, else the message for the user."""
    try:  # statvfs itself: every trigger asks, and shutil's tuple of three costs as much again
        st = os.statvfs(folder)
    except OSError:
        return ""  # a folder not made yet is not a full disk; the write that follows will tell
    free = st.f_bavail * st.f_frsize  # what shutil.disk_usage calls free
    if free >= reserve:
        return ""
    return (
        f"the data disk is full: {free / MiB:.1f} MB free under {folder}, "
        f"{reserve // MiB} MB needed; free space and try again"
    )
