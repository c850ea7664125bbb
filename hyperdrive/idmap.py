"""Unprivileged ships: the host ids a ship's root and users are, and handing files to them.

Every ship runs in a user namespace: its uids and gids 0…65535 are the host's
`base`…`base+65535`, a range reserved for root in /etc/subuid and /etc/subgid (LXC's
newuidmap checks it). Root in a ship is an ordinary user on the host, so a hull's tree is
shifted once into the range, and every host file a ship mounts is handed to its root.
One range serves every ship, as LXC's own default does: ships never share a filesystem or
a process namespace, so they cannot meet through it.
"""

from __future__ import annotations

import os
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hyperdrive.errors import ContainerError

SIZE = 65536  # every id a Debian tree uses, nobody (65534) included
FIRST = 100_000  # where useradd starts handing out ranges; a new one starts at or above it
SUBUID, SUBGID = Path("/etc/subuid"), Path("/etc/subgid")
OWNER = "root"  # the daemon starts the ships


@dataclass(frozen=True)
class IdMap:
    """A ship's id 0 is host uid `uid` / gid `gid`, for SIZE ids."""

    uid: int
    gid: int
    size: int = SIZE

    def lxc_lines(self) -> tuple[str, str]:
        return (
            f"lxc.idmap = u 0 {self.uid} {self.size}",
            f"lxc.idmap = g 0 {self.gid} {self.size}",
        )

    def host(self, uid: int, gid: int) -> tuple[int, int]:
        """Where a tree's (uid, gid) lands in the range; ids already in it stay."""
        return _shifted(uid, self.uid, self.size), _shifted(gid, self.gid, self.size)

    def inside(self, uid: int, gid: int) -> bool:
        return self.uid <= uid < self.uid + self.size and self.gid <= gid < self.gid + self.size

    def can_pass(self, st: os.stat_result) -> bool:
        """May the ship's root go through a folder with this stat (search permission)?"""
        if st.st_uid == self.uid:
            return bool(st.st_mode & stat.S_IXUSR)
        if st.st_gid == self.gid:
            return bool(st.st_mode & stat.S_IXGRP)
        return bool(st.st_mode & stat.S_IXOTH)


def _shifted(value: int, base: int, size: int) -> int:
    return value if base <= value < base + size else base + value % size


def ranges(path: Path) -> dict[str, list[tuple[int, int]]]:
    """`name:start:count` lines of a subid file, by name (unreadable or odd lines: none)."""
    found: dict[str, list[tuple[int, int]]] = {}
    try:
        text = path.read_text()
    except FileNotFoundError:
        return found
    for line in text.splitlines():
        name, _, rest = line.strip().partition(":")
        start, _, count = rest.partition(":")
        if name and start.isdigit() and count.isdigit():
            found.setdefault(name, []).append((int(start), int(count)))
    return found


def owned(path: Path, owner: str = OWNER, size: int = SIZE) -> int | None:
    """The start of `owner`'s first range of at least `size` ids, or None."""
    return next((s for s, n in ranges(path).get(owner, []) if n >= size), None)


def free_start(taken: list[tuple[int, int]], size: int = SIZE, first: int = FIRST) -> int:
    """The lowest start ≥ `first` whose `size` ids overlap no taken range."""
    start = first
    for begin, count in sorted(taken):
        if begin + count <= start:
            continue
        if begin >= start + size:
            break
        start = begin + count
    return start


def for_ships(subuid: Path = SUBUID, subgid: Path = SUBGID) -> IdMap:
    """Root's ranges for ships, reserved with usermod the first time (once per host)."""
    uid, gid = owned(subuid), owned(subgid)
    if uid is None or gid is None:
        taken = [r for f in (subuid, subgid) for rows in ranges(f).values() for r in rows]
        start = free_start(taken)
        _reserve(start, start + SIZE - 1, uids=uid is None, gids=gid is None)
        uid, gid = owned(subuid), owned(subgid)
    if uid is None or gid is None:
        raise ContainerError(f"no range of {SIZE} ids for {OWNER} in {subuid} and {subgid}")
    return IdMap(uid, gid)


def _reserve(first: int, last: int, *, uids: bool, gids: bool) -> None:
    argv = ["usermod"]
    argv += ["--add-subuids", f"{first}-{last}"] if uids else []
    argv += ["--add-subgids", f"{first}-{last}"] if gids else []
    done = subprocess.run(  # fixed argv, once per host at the daemon's first start
        [*argv, OWNER], capture_output=True, text=True, timeout=30, check=False
    )
    if done.returncode != 0:
        raise ContainerError(
            f"could not reserve ids {first}-{last} for ships ({' '.join(argv)} {OWNER}): "
            f"{done.stderr.strip()}"
        )


def shift_tree(root: Path, ids: IdMap) -> int:
    """Move a hull's tree (trusted: we built it, nothing runs in it) into the ships' range;
    idempotent. chown clears setuid/setgid bits, so they are put back. Returns entries moved."""
    moved = 0
    for folder, dirs, files, fd in os.fwalk(root):
        names = [*dirs, *files] if folder != str(root) else [".", *dirs, *files]
        for name in names:
            moved += _move(name, fd, ids)
    return moved


def _move(name: str, fd: int, ids: IdMap) -> int:
    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
    uid, gid = ids.host(st.st_uid, st.st_gid)
    if (uid, gid) == (st.st_uid, st.st_gid):
        return 0
    os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
    if stat.S_ISREG(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
        os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=fd)
    return 1


def hand_over(path: Path, ids: IdMap) -> None:
    """Make a host file or tree the ship's root's own (files the daemon wrote for a ship).

    A ship of the same app may be writing into a tree (its cache) meanwhile: the walk goes by
    folder descriptors and never follows a link, so a folder swapped for a link to /etc is
    not entered. The whole tree is walked every time, even when its top is the ship's already:
    a deploy that was cut short and run again may have left a folder handed over and then
    written new files into it as root (a few ms for a cache of thousands of files).
    """
    st = path.lstat()
    if not ids.inside(st.st_uid, st.st_gid):
        os.chown(path, ids.uid, ids.gid, follow_symlinks=False)
    if not stat.S_ISDIR(st.st_mode):
        return
    for _folder, dirs, files, fd in os.fwalk(path):
        for name in [*dirs, *files]:
            _own(name, fd, ids)


def _own(name: str, fd: int, ids: IdMap) -> None:
    try:
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if not ids.inside(st.st_uid, st.st_gid):
            os.chown(name, *ids.host(st.st_uid, st.st_gid), dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        pass  # removed meanwhile


def blocked(path: Path, ids: IdMap) -> Path | None:
    """The first folder above `path` the ship's root may not pass, or None."""
    for folder in reversed(path.resolve().parents):
        try:
            if not ids.can_pass(folder.stat()):
                return folder
        except FileNotFoundError:
            return None
    return None


def passage_error(path: Path, ids: IdMap) -> str | None:
    """Why a ship cannot reach `path` (LXC's own error is `Permission denied`), or None."""
    folder = blocked(path, ids)
    if folder is None:
        return None
    mode = stat.S_IMODE(folder.stat().st_mode)
    return (
        f"ships run as uid {ids.uid} on this host and cannot pass {folder} (mode {mode:04o}) "
        f"to reach {path}: `chmod o+x {folder}` or move HYPERDRIVE_DATA/HYPERDRIVE_VAR"
    )
