"""Reading a headquarters: from a checkout folder or straight out of a (bare) git repo.

Both readers gather the same `Files` and build one Headquarters from them. Symlinks and
anything that is not a regular file are refused, never followed; files are read capped.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hyperdrive.errors import InvalidName, OrdersRejected
from hyperdrive.files import read_capped
from hyperdrive.headquarters.admirals import CAPTAINS_DIR, KEYS_DIR, AdmiralKey, parse_admiral_file
from hyperdrive.headquarters.orders import MAX_FILE_BYTES, ORDERS, Orders, parse_orders_bytes
from hyperdrive.names import HEADQUARTERS, SHA, check_ref, is_app_name

if TYPE_CHECKING:
    from dulwich.object_store import BaseObjectStore
    from dulwich.objects import ObjectID
    from dulwich.repo import Repo


@dataclass(frozen=True)
class Headquarters:
    """What an HQ commit says: orders per app, rejected orders, admiral keys, captain keys
    (app → captain → keys) and key errors."""

    apps: dict[str, Orders] = field(default_factory=dict)
    rejected: dict[str, OrdersRejected] = field(default_factory=dict)
    admirals: dict[str, list[AdmiralKey]] = field(default_factory=dict)
    key_errors: list[str] = field(default_factory=list)
    captains: dict[str, dict[str, list[AdmiralKey]]] = field(default_factory=dict)

    def key_count(self) -> int:
        """How many valid admiral keys this HQ holds."""
        return sum(len(keys) for keys in self.admirals.values())

    def captain_lines(self) -> dict[str, dict[str, list[str]]]:
        """app → captain → key lines: what the key ring and `$VAR/captains` take."""
        return {
            app: {name: [key.line for key in keys] for name, keys in names.items()}
            for app, names in self.captains.items()
        }


# The shared reader input: HQ-relative path → content; None marks an entry that is not a
# regular file (a symlink, a submodule, a folder), which is refused, never followed.
Files = Mapping[str, bytes | None]


def headquarters_from_files(files: Files, default_hull: str) -> Headquarters:
    """Build a Headquarters from `authorized_keys/*.pub`, `<app>/orders` and
    `<app>/captains/*.pub` entries."""
    hq = Headquarters()
    for path in sorted(files):
        folder, _, name = path.partition("/")
        if folder == KEYS_DIR:
            _load_keys(hq, path, name, files[path])
        elif name == ORDERS:
            _load_orders(hq, path, folder, files[path], default_hull)
        elif name.startswith(f"{CAPTAINS_DIR}/"):
            _load_captain(hq, path, folder, name.partition("/")[2], files[path])
    return hq


def _load_orders(hq: Headquarters, path: str, folder: str, data: bytes | None, hull: str) -> None:
    """Parse one `<app>/orders` into hq.apps, or record why it was rejected."""
    try:
        hq.apps[folder] = _orders_from(printable(path), folder, data, hull)
    except OrdersRejected as err:
        hq.rejected[folder] = err


def _orders_from(path: str, folder: str, data: bytes | None, hull: str) -> Orders:
    """Orders of one app folder, refusing the HQ's own name and anything not a file."""
    if folder == HEADQUARTERS:
        raise OrdersRejected(path, 0, f"{HEADQUARTERS!r} is the HQ repo's own name")
    if data is None:
        raise OrdersRejected(path, 0, "not a regular file (symlinks are not followed)")
    return parse_orders_bytes(data, path, app=folder, default_hull=hull)


def _load_keys(hq: Headquarters, path: str, name: str, data: bytes | None) -> None:
    """Load one admiral's .pub file, or record why not; a key may belong to one admiral only."""
    shown = printable(path)
    try:
        keys = parse_admiral_file(name, data if data is not None else b"")
    except ValueError as err:
        why = "not a regular file (symlinks are not followed)" if data is None else err
        hq.key_errors.append(f"{shown}: {why}")
        return
    owners = {key.fingerprint: key.admiral for keys in hq.admirals.values() for key in keys}
    for key in keys:
        if key.fingerprint in owners:
            hq.key_errors.append(
                f"{shown}: key {key.fingerprint} already belongs to "
                f"{owners[key.fingerprint]}; not loaded twice"
            )
    fresh = [key for key in keys if key.fingerprint not in owners]
    if fresh:
        hq.admirals[fresh[0].admiral] = fresh


def _load_captain(hq: Headquarters, path: str, app: str, name: str, data: bytes | None) -> None:
    """Load one `<app>/captains/<name>.pub`, or record why not; a key may be listed once per app
    (the same key in several apps' captains/ is captain of each)."""
    shown = printable(path)
    try:
        keys = _captain_keys(app, name, data)
    except ValueError as err:
        hq.key_errors.append(f"{shown}: {err}")
        return
    crew = hq.captains.setdefault(app, {})
    owners = {key.fingerprint: key.admiral for keys in crew.values() for key in keys}
    for key in keys:
        if key.fingerprint in owners:
            hq.key_errors.append(
                f"{shown}: key {key.fingerprint} is already {owners[key.fingerprint]}'s "
                f"in {app}/{CAPTAINS_DIR}/; not loaded twice"
            )
    if fresh := [key for key in keys if key.fingerprint not in owners]:
        crew[fresh[0].admiral] = fresh


def _captain_keys(app: str, name: str, data: bytes | None) -> list[AdmiralKey]:
    """The keys of one captain file; ValueError (safe to show) for a file that cannot be one."""
    if app == HEADQUARTERS:
        raise ValueError(f"{HEADQUARTERS} has no captains: its keys are in {KEYS_DIR}/")
    if not is_app_name(app):
        raise ValueError(f"{printable(app)!r} is not an app name, so it can have no captains")
    if data is None:
        raise ValueError("not a regular file (symlinks are not followed)")
    return parse_admiral_file(name, data, role="captain")


def printable(path: str) -> str:
    """A path as it may appear in a one-line message (control characters escaped)."""
    return path if path.isprintable() else ascii(path)


def read_headquarters(root: Path, default_hull: str) -> Headquarters:
    """Read an HQ checkout folder. Symlinks are refused and files are read capped."""
    files: dict[str, bytes | None] = {}
    with os.scandir(root) as entries:
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                continue
            if entry.name == KEYS_DIR:
                for key_file in sorted(Path(entry.path).glob("*.pub")):
                    files[f"{KEYS_DIR}/{key_file.name}"] = read_capped(key_file, MAX_FILE_BYTES)
                continue
            if os.path.lexists(orders := Path(entry.path, ORDERS)):
                files[f"{entry.name}/{ORDERS}"] = read_capped(orders, MAX_FILE_BYTES)
            files.update(_captain_files(entry.name, Path(entry.path, CAPTAINS_DIR)))
    return headquarters_from_files(files, default_hull)


def _captain_files(app: str, folder: Path) -> dict[str, bytes | None]:
    """`<app>/captains/*.pub` of a checkout; a linked captains/ folder is one refused entry."""
    where = f"{app}/{CAPTAINS_DIR}"
    if folder.is_symlink():
        return {f"{where}/": None}
    if not folder.is_dir():
        return {}
    return {
        f"{where}/{key.name}": read_capped(key, MAX_FILE_BYTES)
        for key in sorted(folder.glob("*.pub"))
    }


def read_headquarters_from_git(
    repo: Path, rev: str, default_hull: str, *, object_dirs: Sequence[Path] = ()
) -> Headquarters:
    """Read an HQ straight out of a (bare) git repo at `rev`, without a checkout.

    `rev` is a full commit id, `refs/…` or a branch name. A pre-receive hook passes
    GIT_QUARANTINE_PATH in `object_dirs`: pushed objects live there until accepted.
    """
    return headquarters_from_files(read_files_from_git(repo, rev, object_dirs), default_hull)


def read_files_from_git(repo: Path, rev: str, object_dirs: Sequence[Path] = ()) -> Files:
    """The entries of HQ at `rev` that `headquarters_from_files` reads (see the caller)."""
    # dulwich (~3 MB) only where git is read: a daemon with nothing to do never loads it
    from dulwich.object_store import DiskObjectStore, OverlayObjectStore  # noqa: PLC0415
    from dulwich.repo import Repo  # noqa: PLC0415

    with Repo(str(repo)) as git:
        extra = [DiskObjectStore(str(path)) for path in object_dirs]
        store = OverlayObjectStore([*extra, git.object_store]) if extra else git.object_store
        try:
            return _git_files(store, _resolve(git, store, rev))
        finally:
            for each in extra:
                each.close()


def _resolve(git: Repo, store: BaseObjectStore, rev: str) -> ObjectID:
    """The tree id of commit `rev` (tags peeled); InvalidName when it does not exist."""
    from dulwich.objects import Commit, ObjectID, Tag  # noqa: PLC0415 - see the caller
    from dulwich.refs import Ref  # noqa: PLC0415 - see the caller

    try:
        if SHA.fullmatch(rev):
            sha = ObjectID(rev.encode())
        else:
            ref = rev if rev.startswith("refs/") else f"refs/heads/{rev}"
            sha = git.refs[Ref(check_ref(ref).encode())]
        obj = store[sha]
        while isinstance(obj, Tag):
            obj = store[obj.object[1]]
    except KeyError:
        raise InvalidName(f"unknown revision {rev!r}") from None
    if not isinstance(obj, Commit):
        raise InvalidName(f"{rev!r} is not a commit")
    return ObjectID(obj.tree)


def _git_files(store: BaseObjectStore, tree_id: ObjectID) -> dict[str, bytes | None]:
    """The entries `headquarters_from_files` needs, read from a git tree."""
    files: dict[str, bytes | None] = {}
    for folder, mode, sha in _tree_items(store, tree_id):
        if folder.startswith(".") or not stat.S_ISDIR(mode):
            continue
        for name, sub_mode, sub_sha in _tree_items(store, sha):
            if folder != KEYS_DIR and name == CAPTAINS_DIR:
                files.update(_git_captains(store, f"{folder}/{name}", sub_mode, sub_sha))
                continue
            wanted = name.endswith(".pub") if folder == KEYS_DIR else name == ORDERS
            if wanted:
                files[f"{folder}/{name}"] = _blob(store, sub_mode, sub_sha)
    return files


PEM_PRIVATE = re.compile(rb"-----BEGIN ([A-Z0-9 ]+ )?PRIVATE KEY-----")
MAX_SCANNED = 10_000  # entries: a bigger HQ is refused by its size, not scanned forever


def private_key_files(repo: Path, rev: str, object_dirs: Sequence[Path] = ()) -> list[str]:
    """Every file in HQ at `rev` that holds a PEM private key: HQ is shared, keys are not
    (an admiral's own TLS key goes in $VAR/certs/<name>/ on the squadron)."""
    from dulwich.object_store import DiskObjectStore, OverlayObjectStore  # noqa: PLC0415
    from dulwich.repo import Repo  # noqa: PLC0415

    with Repo(str(repo)) as git:
        extra = [DiskObjectStore(str(path)) for path in object_dirs]
        store = OverlayObjectStore([*extra, git.object_store]) if extra else git.object_store
        try:
            return _pem_keys(store, _resolve(git, store, rev))
        finally:
            for each in extra:
                each.close()


def _pem_keys(store: BaseObjectStore, tree_id: ObjectID) -> list[str]:
    """Paths of regular files under a tree whose content holds a PEM private key."""
    found, pending, seen = [], [("", tree_id)], 0
    while pending and seen < MAX_SCANNED:
        where, tree = pending.pop()
        for name, mode, sha in _tree_items(store, tree):
            seen += 1
            if stat.S_ISDIR(mode):
                pending.append((f"{where}{name}/", sha))
            elif stat.S_ISREG(mode) and _holds_private_key(store, f"{where}{name}", sha):
                found.append(printable(f"{where}{name}"))
    return sorted(found)


def _holds_private_key(store: BaseObjectStore, path: str, sha: ObjectID) -> bool:
    return not _key_file(path) and bool(PEM_PRIVATE.search(store[sha].as_raw_string()))


def _key_file(path: str) -> bool:
    """An admiral or captain key file: its own check refuses a private key already."""
    parts = path.split("/")
    if not path.endswith(".pub"):
        return False
    return (len(parts) == 2 and parts[0] == KEYS_DIR) or (
        len(parts) == 3 and parts[1] == CAPTAINS_DIR
    )


def _git_captains(store: BaseObjectStore, where: str, mode: int, tree_id: ObjectID) -> Files:
    """`<app>/captains/*.pub` out of a git tree; a link or file named captains is refused."""
    if not stat.S_ISDIR(mode):
        return {f"{where}/": None}
    return {
        f"{where}/{name}": _blob(store, entry_mode, sha)
        for name, entry_mode, sha in _tree_items(store, tree_id)
        if name.endswith(".pub")
    }


def _blob(store: BaseObjectStore, mode: int, sha: ObjectID) -> bytes | None:
    """A regular file's content; None for a symlink, a submodule or anything else."""
    return store[sha].as_raw_string() if stat.S_ISREG(mode) else None


def _tree_items(store: BaseObjectStore, tree_id: ObjectID) -> list[tuple[str, int, ObjectID]]:
    """(name, mode, sha) of one tree; names decoded with undecodable bytes escaped."""
    from dulwich.objects import Tree  # noqa: PLC0415 - see read_headquarters_from_git

    tree = store[tree_id]
    if not isinstance(tree, Tree):  # a crafted entry: directory mode, not a tree
        return []
    return [
        (entry.path.decode("utf-8", "backslashreplace"), entry.mode, entry.sha)
        for entry in tree.iteritems()
    ]
