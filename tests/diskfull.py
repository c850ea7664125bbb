"""A small filesystem of a test's own, and a filler file that leaves it (nearly) full: the
data disk full as a real server meets it."""

from __future__ import annotations

import contextlib
import errno
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def tmpfs(where: Path, size: str, mode: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted on `where` (made if missing), unmounted afterwards."""
    where.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size},mode={mode}", "tmpfs", str(where)]
    subprocess.run(mount, check=True, timeout=10, capture_output=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, timeout=10)


def fill(disk: Path, leave: int = 0) -> Path:
    """Write a filler file until the filesystem has at most `leave` bytes free (to 4 KiB)."""
    filler = disk / "filler"
    with filler.open("ab") as out:
        for size in (1 << 20, 1 << 16, 1 << 12):
            while shutil.disk_usage(disk).free - size >= leave and _wrote(out, size):
                pass
    return filler


def _wrote(out: BinaryIO, size: int) -> bool:
    """Whether `size` more bytes fit; a full disk (ENOSPC) is the only failure expected."""
    try:
        out.write(b"x" * size)
        out.flush()
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        return False
    return True
