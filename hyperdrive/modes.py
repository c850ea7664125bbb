"""Who may read what Hyperdrive keeps: secrets 0600, data 0640, folders 0750.

The daemon runs with umask 027, so what it makes is never world-readable; at start it also
tightens what an older version left open. `$DATA`, `$VAR` and nginx's prefix are 0751 (others
may pass, not list): nginx's workers (nobody) reach their temp folders under `$VAR/nginx`, and
ships' roots (an unprivileged uid) their hulls, trees and caches (`ship_passages`).
`hd doctor` reports anything more open than this, with the chmod that fixes it.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hyperdrive.config import Config

UMASK = 0o027
SECRET_MODE = 0o600
DATA_MODE = 0o640
FOLDER_MODE = 0o750
PASSAGE_MODE = 0o751
PRIVATE_FOLDER_MODE = 0o700


@dataclass(frozen=True)
class TooOpen:
    """A file or folder with permission bits beyond its kind's mode."""

    path: Path
    mode: int
    want: int

    def __str__(self) -> str:
        return f"{self.path} is {self.mode:04o} (at most {self.want:04o})"

    @property
    def fix(self) -> str:
        return f"chmod {self.mode & self.want:04o} {self.path}"


def expected(config: Config) -> Iterator[tuple[Path, int]]:
    """Every path Hyperdrive keeps with the most open mode it may have (secrets first)."""
    secrets = [config.tokens_file, config.host_key_file, *_files(config.private_keys_dir, "*")]
    secrets += _files(config.certs_dir, "*/privkey.pem")  # an admiral's own certificates' keys
    secrets += _files(config.certs_dir / ".hyperdrive", "*.pem")  # the ACME account key
    secrets += _files(config.certs_dir / ".hyperdrive" / "issued", "*/*.pem")
    if config.source is not None:
        secrets.insert(0, config.source)
    yield from ((p, SECRET_MODE) for p in secrets)
    yield config.private_keys_dir, PRIVATE_FOLDER_MODE
    data = [
        *_files(config.data, "events.jsonl*"),
        *_files(config.data, "*.log"),  # bootstrap.log, hyperdrive.log (the supervisor's)
        *_files(config.spool_dir, "*.jsonl"),
        *_files(config.ships_dir, "*/setup.log"),
        *_files(config.nginx_dir / "logs", "*.log"),
        *_files(config.records_dir, "*.json"),
    ]
    yield from ((p, DATA_MODE) for p in data)
    yield from ((p, PASSAGE_MODE) for p in (config.data, config.var, *ship_passages(config)))
    folders = (config.records_dir, config.spool_dir, config.lxc_logs_dir, config.nginx_dir / "logs")
    yield from ((p, FOLDER_MODE) for p in folders)


def ship_passages(config: Config) -> tuple[Path, ...]:
    """Folders an unprivileged ship's root passes (never lists) to its hull, tree and cache."""
    return (config.containers_dir, config.ships_dir, config.caches_dir)


def too_open(config: Config) -> list[TooOpen]:
    """What is more open than `expected` says (missing paths are not a problem)."""
    found = []
    for path, want in expected(config):
        mode = _mode(path)
        if mode is not None and mode & ~want:
            found.append(TooOpen(path, mode, want))
    return found


def make_passable(folder: Path) -> None:
    """`folder` at PASSAGE_MODE exactly: made under umask 027 it would shut nginx's workers out."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, PASSAGE_MODE)


def tighten(config: Config) -> None:
    """Take away the bits `too_open` finds (an older install's 0644 files and 0755 folders)."""
    for problem in too_open(config):
        with contextlib.suppress(OSError):
            os.chmod(problem.path, problem.mode & problem.want, follow_symlinks=False)


def _files(folder: Path, pattern: str) -> list[Path]:
    try:
        return sorted(folder.glob(pattern))
    except OSError:
        return []


def _mode(path: Path) -> int | None:
    try:
        info = path.lstat()
    except OSError:
        return None
    return None if stat.S_ISLNK(info.st_mode) else stat.S_IMODE(info.st_mode)
