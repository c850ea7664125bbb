"""The admirals' block in a host user's `~/.ssh/authorized_keys` (HYPERDRIVE_ADMIRAL_USER).

Hyperdrive owns only the lines between its two marker lines; every other line of the file is
the user's and is kept as it is. The file is replaced atomically with its mode and owner, and
never left empty: a user who had keys cannot be locked out by a sync.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from hyperdrive.errors import HyperdriveError
from hyperdrive.files import write_atomically

BEGIN = "# BEGIN hyperdrive admirals"
END = "# END hyperdrive admirals"
HEADER = "# managed by Hyperdrive from headquarters' authorized_keys/: edits here are replaced"
# what versions before the block wrote: a whole file of `<key> hyperdrive-admiral-<name>` lines
OLD_LINE = re.compile(r".*\shyperdrive-admiral-[A-Za-z0-9._-]+\s*$")


class AuthorizedKeysError(HyperdriveError):
    """The file cannot be updated safely; it is left as it was."""


def admiral_lines(keys: dict[str, list[str]]) -> list[str]:
    """One line per admiral key, its comment naming the admiral (sshd logs show comments)."""
    return [f"{line} hyperdrive-admiral-{name}" for name, ls in sorted(keys.items()) for line in ls]


def merge(text: str, lines: list[str]) -> str:
    """`text` with Hyperdrive's block holding `lines` (in place, else appended at the end)."""
    kept = text.splitlines()
    begins = [n for n, line in enumerate(kept) if line.strip() == BEGIN]
    ends = [n for n, line in enumerate(kept) if line.strip() == END]
    block = [BEGIN, HEADER, *lines, END]
    if not begins and not ends:
        own = [line for line in kept if not OLD_LINE.fullmatch(line)]
        while own and not own[-1].strip():
            own.pop()
        return "\n".join([*own, *block]) + "\n"
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise AuthorizedKeysError(
            f"expected one '{BEGIN}' line followed by one '{END}' line; fix the file by hand"
        )
    return "\n".join([*kept[: begins[0]], *block, *kept[ends[0] + 1 :]]) + "\n"


def install(ssh_dir: Path, keys: dict[str, list[str]], uid: int, gid: int) -> Path | None:
    """Write the admirals' block into `ssh_dir/authorized_keys` for the user `uid:gid`; no
    keys and no file yet: nothing to write (None)."""
    if not ssh_dir.exists():
        ssh_dir.mkdir(mode=0o700)
        os.chown(ssh_dir, uid, gid)
    target = ssh_dir / "authorized_keys"
    _refuse_links(ssh_dir, target)
    try:
        info: os.stat_result | None = target.lstat()
        text = target.read_text(errors="surrogateescape")
    except FileNotFoundError:
        info, text = None, ""
    if info is None and not keys:
        return None
    mode = stat.S_IMODE(info.st_mode) if info else 0o600
    owner = (info.st_uid, info.st_gid) if info else (uid, gid)
    # temp name unguessable and created O_EXCL|O_NOFOLLOW: safe in a folder the user owns
    write_atomically(target, merge(text, admiral_lines(keys)), mode=mode, owner=owner)
    return target


def _refuse_links(ssh_dir: Path, target: Path) -> None:
    """Root writing through a link the user controls would rewrite any file on the host."""
    for path in (ssh_dir, target):
        if path.is_symlink():
            raise AuthorizedKeysError(f"{path} is a symbolic link; not following it")
    if not ssh_dir.is_dir():
        raise AuthorizedKeysError(f"{ssh_dir} is not a folder")
