"""Files Hyperdrive keeps: written whole or not at all, read capped and without following links.

Light on purpose (only the standard library): git's hooks import it on every push.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from io import BufferedWriter
from pathlib import Path
from typing import IO

_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def write_atomically(
    path: Path,
    data: bytes | str,
    *,
    mode: int | None = None,
    owner: tuple[int, int] | None = None,
) -> None:
    """Temp file beside `path`, fsync, rename over it, fsync the folder: readers and a crash
    see the old content or the new, never half, and a failed write leaves no temp file.

    The temp name is unguessable and created exclusively without following links, so root may
    write this way into a folder another user owns. `mode` None is what open() makes (0o666
    less the umask); a given `mode` is set exactly, and `owner` (uid, gid) is given to the file
    before it takes `path`'s place.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
    blob = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    fd = os.open(tmp, _WRITE_FLAGS, 0o666 if mode is None else 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(blob)
            handle.flush()
            if mode is not None:
                os.fchmod(handle.fileno(), mode)
            if owner is not None:
                os.fchown(handle.fileno(), *owner)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new name in `path` survive a power loss (the folder's own fsync)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_capped(path: Path, limit: int) -> bytes | None:
    """Up to `limit` + 1 bytes of a regular file (so "too big" shows); None for a symlink,
    a missing file or anything that is not a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # before fdopen: a folder would raise there
        os.close(fd)
        return None
    with os.fdopen(fd, "rb") as handle:
        return handle.read(limit + 1)


class OutsideTree(OSError):
    """A file asked for inside a tree is a symbolic link that leads out of it."""


def read_inside(
    root: Path, relative: str, limit: int, *, tail: bool = False, offset: int = 0
) -> bytes | None:
    """Up to `limit` + 1 bytes (the last `limit` + 1 when `tail`; from `offset` otherwise)
    of the regular file at `relative` under `root`, never through a link that leads out: app
    code made that tree.

    None when it is missing or not a regular file; OutsideTree when a link leads out of `root`
    (checked on the resolved path, then opened one component at a time with O_NOFOLLOW, so a
    link swapped in meanwhile fails rather than being followed).
    """
    base = os.path.realpath(root)
    resolved = os.path.realpath(os.path.join(base, relative))
    if os.path.commonpath([base, resolved]) != base or resolved == base:
        raise OutsideTree(f"{relative} is a symbolic link out of the app's files")
    try:
        fd = _open_beneath(base, os.path.relpath(resolved, base))
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno == errno.ELOOP:  # a link swapped in after the path was resolved
            raise OutsideTree(f"{relative} changed into a symbolic link while read") from err
        return None
    return _read_fd(fd, limit, tail, offset)


def _open_beneath(base: str, relative: str) -> int:
    """Open `relative` under `base` a component at a time, none of them followed if a link."""
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        *folders, name = relative.split(os.sep)
        for folder in folders:
            inner = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = inner
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        return os.open(name, flags, dir_fd=fd)
    finally:
        os.close(fd)


def _read_fd(fd: int, limit: int, tail: bool, offset: int = 0) -> bytes | None:
    """The head (or tail, or what follows `offset`) of an open regular file, closed after;
    None for anything else."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        return None
    with os.fdopen(fd, "rb") as handle:
        if tail and info.st_size > limit + 1:
            handle.seek(info.st_size - limit - 1)
        elif offset:
            handle.seek(offset)
        return handle.read(limit + 1)


def undo_append(handle: IO[bytes], path: Path, size: int) -> BufferedWriter:
    """An append that failed (the disk full) may have left part of a record behind: cut the
    file back to `size`, where the last whole record ended, and open it again for appends, so
    the next record starts on a clean line instead of after a torn one."""
    with contextlib.suppress(OSError):
        handle.close()  # what is still buffered is dropped: it belongs to the failed record
    with contextlib.suppress(OSError):
        os.truncate(path, size)
    return open(path, "ab")
