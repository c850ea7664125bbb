"""Headquarters: the orders parser, admiral keys, HQ readers, push checks and the change plan.

Pure and synchronous (no daemon, no SSH): callers run it through `asyncio.to_thread`.
Orders are parsed, never executed.
"""

from __future__ import annotations

import difflib
import io
import math
import os
import re
import shlex
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import asyncssh

from hyperdrive.errors import ConfigError, InvalidName, OrdersRejected
from hyperdrive.names import HEADQUARTERS, HULL_NAME, SHA, check_ref, is_app_name, sanitize_app_name

if TYPE_CHECKING:
    from dulwich.object_store import BaseObjectStore
    from dulwich.objects import ObjectID
    from dulwich.repo import Repo

MAX_FILE_BYTES = 64 * 1024
ORDERS = "orders"
KEYS_DIR = "authorized_keys"
DEFAULT_PORT = 3000
DEFAULT_HEALTHCHECK = ("/", 60.0)
MIN_MEMORY = 4 * 1024**2
MAX_MEMORY = 1024**5
UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PORT_TEXT = re.compile(r"[1-9][0-9]{0,4}")
NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?")
MEMORY = re.compile(r"([0-9]+(?:\.[0-9]+)?)([kmgt]?)(?:i?b)?", re.IGNORECASE)
DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
ADMIRAL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._@+-]{0,63}")
URL_SCHEMES = ("https://", "http://", "ssh://", "git://", "file://")
SCP_LIKE = re.compile(r"(?:[A-Za-z0-9._-]+@)?[A-Za-z0-9.-]+:[^:/\\].*")
REMOTE_HELPER = re.compile(r"[A-Za-z0-9+.-]+::")
PRIVATE_MARKERS = (b"PRIVATE KEY", b"PuTTY-User-Key-File", b"SSH2 ENCRYPTED PRIVATE KEY")
PUBLIC_KEYS_HINT = "use OpenSSH lines like 'ssh-ed25519 AAAA… comment'"


class _Bad(Exception):
    """A directive is wrong; the parser adds file and line."""


# ─── orders ──────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Orders:
    """One app's parsed orders; `path` and `lines` are for messages and never compared."""

    app: str
    autodeploy_url: str | None = None
    branch: str | None = None
    env: dict[str, str] = field(default_factory=lambda: {"PORT": str(DEFAULT_PORT)})
    hull: str | None = None
    healthcheck_path: str = DEFAULT_HEALTHCHECK[0]
    healthcheck_seconds: float = DEFAULT_HEALTHCHECK[1]
    servernames: tuple[str, ...] = ()
    memory_bytes: int | None = None
    cpus: float | None = None
    path: str = field(default="", compare=False)
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    @property
    def port(self) -> int:
        """The port the app listens on inside its ship."""
        return int(self.env["PORT"])

    @property
    def publish_port(self) -> int | None:
        """A public port of the app's own, if its orders ask for one."""
        value = self.env.get("PUBLISH_PORT")
        return int(value) if value is not None else None

    @property
    def hosted_here(self) -> bool:
        """No `autodeploy`: the app's repo is `<app>.git` on this squadron."""
        return self.autodeploy_url is None

    def where(self, key: str) -> str:
        """`path:line` of a directive (`export PORT`, `servername host`…), or just the path."""
        line = self.lines.get(key)
        return f"{self.path}:{line}" if line else self.path


@dataclass
class _Draft:
    """Orders while they are being parsed."""

    app: str
    hull: str | None
    url: str | None = None
    branch: str | None = None
    health: tuple[str, float] = DEFAULT_HEALTHCHECK
    memory: int | None = None
    cpus: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    servernames: dict[str, None] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)

    def once(self, name: str, line: int) -> None:
        """Refuse a directive that may appear only once."""
        if name in self.lines:
            raise _Bad(f"duplicate {name} (first on line {self.lines[name]})")
        self.lines[name] = line


def parse_orders(
    text: str, path: str, *, app: str | None = None, default_hull: str | None = None
) -> Orders:
    """Parse an orders file; raise OrdersRejected naming file and line on any mistake.

    `app` defaults to the folder holding the file (`api/orders` → `api`). Line 0 means the
    whole file.
    """
    if len(text) > MAX_FILE_BYTES:
        raise OrdersRejected(path, 0, f"orders file is too big (limit {MAX_FILE_BYTES} bytes)")
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise OrdersRejected(path, line, "binary content (a NUL byte): orders are text")
    draft = _Draft(app=_app_of(path, app), hull=default_hull)
    for number, raw in enumerate(text.split("\n"), start=1):
        try:
            words = _words(raw.removesuffix("\r"))
            if words:
                _directive(draft, words, number)
        except _Bad as err:
            raise OrdersRejected(path, number, str(err)) from None
    return _finish(draft, path)


def parse_orders_bytes(
    data: bytes, path: str, *, app: str | None = None, default_hull: str | None = None
) -> Orders:
    """Parse orders read from disk or git: capped at 64 KiB, UTF-8 text only."""
    if len(data) > MAX_FILE_BYTES:
        raise OrdersRejected(path, 0, f"orders file is too big (limit {MAX_FILE_BYTES} bytes)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise OrdersRejected(path, line, "binary content (not UTF-8): orders are text") from None
    return parse_orders(text, path, app=app, default_hull=default_hull)


def _app_of(path: str, app: str | None) -> str:
    """The app an orders file belongs to: given, or the name of its folder."""
    name = app if app is not None else PurePosixPath(path).parent.name
    try:
        return sanitize_app_name(name)
    except InvalidName as err:
        raise OrdersRejected(path, 0, str(err)) from None


def _words(line: str) -> list[str]:
    """Split one line like a shell would, without expanding anything; `#` starts a comment.

    shlex's own comment handling would cut `url#branch`, so a comment is a word whose
    unquoted source begins with `#`, as in sh.
    """
    if not line.strip() or line.lstrip().startswith("#"):
        return []
    stream = io.StringIO(line)
    lexer = shlex.shlex(stream, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    words: list[str] = []
    start = 0
    while True:
        try:
            token = lexer.get_token()
        except ValueError as err:
            if line[start:].lstrip().startswith("#"):
                return words
            raise _Bad(f"bad quoting: {str(err).lower()}") from None
        if token is None or line[start : stream.tell()].lstrip().startswith("#"):
            return words
        words.append(token)
        start = stream.tell()


def _directive(draft: _Draft, words: list[str], line: int) -> None:
    """Apply one directive to the draft."""
    name, args = words[0], words[1:]
    handler = DIRECTIVES.get(name)
    if handler is None:
        raise _Bad(_unknown(name))
    handler(draft, args, line)


def _unknown(name: str) -> str:
    """Message for an unknown directive, with a suggestion when one is close."""
    close = difflib.get_close_matches(name, DIRECTIVES, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown directive {_shown(name)}{hint}; known: {', '.join(DIRECTIVES)}"


def _shown(value: str, limit: int = 40) -> str:
    """A user's word, quoted, escaped and cut short, safe to put in a one-line message."""
    cut = value if len(value) <= limit else value[:limit] + "…"
    return repr(cut)


def _finish(draft: _Draft, path: str) -> Orders:
    """Freeze a draft into Orders with defaults filled in."""
    return Orders(
        app=draft.app,
        autodeploy_url=draft.url,
        branch=draft.branch,
        env={"PORT": str(DEFAULT_PORT), **draft.env},
        hull=draft.hull,
        healthcheck_path=draft.health[0],
        healthcheck_seconds=draft.health[1],
        servernames=tuple(draft.servernames),
        memory_bytes=draft.memory,
        cpus=draft.cpus,
        path=path,
        lines=dict(draft.lines),
    )


def _autodeploy(draft: _Draft, args: list[str], line: int) -> None:
    """`autodeploy <git-url>[#branch]` or `autodeploy <git-url> <branch>`."""
    if len(args) not in (1, 2):
        raise _Bad("autodeploy takes a git URL and an optional branch")
    url, sep, fragment = args[0].rpartition("#")
    if not sep:
        url, fragment = args[0], ""
    elif not fragment:
        raise _Bad("autodeploy URL ends in '#' without a branch")
    if fragment and len(args) == 2:
        raise _Bad("autodeploy branch given twice (after '#' and as a second word)")
    branch = fragment or (args[1] if len(args) == 2 else None)
    url, branch = _git_url(url), _branch(branch) if branch is not None else None
    draft.once("autodeploy", line)
    if branch is not None:
        _one_branch(draft, "autodeploy", line)
        draft.branch = branch
    draft.url = url


def _branch_directive(draft: _Draft, args: list[str], line: int) -> None:
    """`branch <name>`: the branch (or tag) that deploys, for a repo hosted here or remote."""
    if len(args) != 1:
        raise _Bad("branch takes one branch or tag name")
    draft.once("branch", line)
    _one_branch(draft, "branch", line)
    draft.branch = _branch(args[0])


def _one_branch(draft: _Draft, directive: str, line: int) -> None:
    """A branch may be named once: by `branch` or by `autodeploy`, not both."""
    other = "autodeploy" if directive == "branch" else "branch"
    if draft.branch is not None and other in draft.lines:
        raise _Bad(f"branch given twice (also by {other} on line {draft.lines[other]})")


def _git_url(url: str) -> str:
    """Accept the URL forms git fetches from; refuse options and remote helpers (`ext::`)."""
    if not url or url.startswith("-") or any(c.isspace() or not c.isprintable() for c in url):
        raise _Bad(f"autodeploy URL {_shown(url)} is not a git URL")
    if REMOTE_HELPER.match(url):
        raise _Bad(f"autodeploy URL {_shown(url)} uses a remote helper, which is not allowed")
    if url.startswith(URL_SCHEMES):
        scheme, _, rest = url.partition("://")
        if scheme != "file" and not rest.split("/", 1)[0]:
            raise _Bad(f"autodeploy URL {_shown(url)} has no host")
        return url
    if url.startswith("/") or SCP_LIKE.fullmatch(url):
        return url
    raise _Bad(
        f"autodeploy URL {_shown(url)} is not a git URL (use https://, ssh://, git://, "
        "file://, user@host:path or an absolute path)"
    )


def _branch(branch: str) -> str:
    """A branch name git would accept."""
    try:
        check_ref(f"refs/heads/{branch}")
    except InvalidName:
        raise _Bad(f"invalid branch name {_shown(branch)}") from None
    return branch


def _export(draft: _Draft, args: list[str], line: int) -> None:
    """`export KEY=VALUE [KEY=VALUE…]`: environment of the app's ship."""
    if not args:
        raise _Bad("export needs KEY=VALUE")
    for arg in args:
        key, eq, value = arg.partition("=")
        if not eq:
            raise _Bad(f"export {_shown(arg)} has no '=': write export KEY=VALUE")
        if not ENV_NAME.fullmatch(key):
            raise _Bad(f"export {_shown(key)}: not a valid variable name")
        if key in ("PORT", "PUBLISH_PORT"):
            value = _port(key, value)
        if f"export {key}" in draft.lines:
            raise _Bad(f"{key} exported twice (first on line {draft.lines[f'export {key}']})")
        draft.lines[f"export {key}"] = line
        draft.env[key] = value


def _port(key: str, value: str) -> str:
    """A TCP port, 1-65535, written without leading zeros."""
    if not PORT_TEXT.fullmatch(value) or int(value) > 65535:
        raise _Bad(f"bad {key} {_shown(value)}: a port is a number from 1 to 65535")
    return value


def _hull(draft: _Draft, args: list[str], line: int) -> None:
    """`hull <name>`: the base container ships of this app are snapshotted from."""
    if len(args) != 1:
        raise _Bad("hull takes one name")
    if not HULL_NAME.fullmatch(args[0]):
        raise _Bad(f"invalid hull name {_shown(args[0])}: use [a-z0-9][a-z0-9-]{{0,30}}")
    draft.once("hull", line)
    draft.hull = args[0]


def _healthcheck(draft: _Draft, args: list[str], line: int) -> None:
    """`healthcheck <path> [seconds]`: what must answer, and how long it may take to."""
    if len(args) not in (1, 2):
        raise _Bad("healthcheck takes a path and optional seconds")
    path = args[0]
    if not path.startswith("/") or any(c.isspace() or not c.isprintable() for c in path):
        raise _Bad(f"healthcheck path {_shown(path)} must start with / and hold no spaces")
    seconds = _positive(args[1], "healthcheck seconds") if len(args) == 2 else 60.0
    draft.once("healthcheck", line)
    draft.health = (path, seconds)


def _positive(text: str, what: str) -> float:
    """A plain positive decimal number (no signs, exponents, inf or nan)."""
    if not NUMBER.fullmatch(text) or float(text) <= 0 or not math.isfinite(float(text)):
        raise _Bad(f"{what} {_shown(text)} must be a positive number")
    return float(text)


def _servername(draft: _Draft, args: list[str], line: int) -> None:
    """`servername <host>…`: extra host names nginx serves the app on."""
    if not args:
        raise _Bad("servername needs at least one host name")
    for host in (arg.lower() for arg in args):
        labels = host.split(".")
        if len(host) > 253 or not all(DNS_LABEL.fullmatch(label) for label in labels):
            raise _Bad(f"servername {_shown(host)} is not a valid DNS name")
        draft.servernames[host] = None
        draft.lines.setdefault(f"servername {host}", line)


def _memory(draft: _Draft, args: list[str], line: int) -> None:
    """`memory <size>`: the ship's memory limit, `256M`, `1G`, `1.5G` or bytes."""
    match = MEMORY.fullmatch(args[0]) if len(args) == 1 else None
    if match is None:
        raise _Bad("memory takes one size such as 256M or 1G")
    size = int(float(match[1]) * UNITS[match[2].lower()])
    if size < MIN_MEMORY:
        raise _Bad(f"memory {_shown(args[0])} is {size} bytes; did you mean {args[0]}M?")
    if size > MAX_MEMORY:
        raise _Bad(f"memory {_shown(args[0])} is more than any machine has")
    draft.once("memory", line)
    draft.memory = size


def _cpus(draft: _Draft, args: list[str], line: int) -> None:
    """`cpus <n>`: how many CPUs' worth of time the ship may use."""
    if len(args) != 1:
        raise _Bad("cpus takes one number")
    value = _positive(args[0], "cpus")
    draft.once("cpus", line)
    draft.cpus = value


Directive = Callable[[_Draft, list[str], int], None]
DIRECTIVES: dict[str, Directive] = {
    "autodeploy": _autodeploy,
    "branch": _branch_directive,
    "export": _export,
    "hull": _hull,
    "healthcheck": _healthcheck,
    "servername": _servername,
    "memory": _memory,
    "cpus": _cpus,
}


# ─── squadron-wide env ($DATA/includes/*.env) ───────────────────────────────


def read_env_file(text: str, path: str) -> dict[str, str]:
    """Read `KEY=VALUE` lines (`#` comments, optional `export `, optional matching quotes).

    Nothing is expanded. A bad line raises ConfigError naming file and line.
    """
    env: dict[str, str] = {}
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, eq, value = line.removeprefix("export ").lstrip().partition("=")
        key = key.strip()
        if not eq or not ENV_NAME.fullmatch(key) or "\x00" in value:
            raise ConfigError(f"{path}:{number}: expected KEY=VALUE")
        env[key] = _unquote(value.strip())
    return env


def _unquote(value: str) -> str:
    """Strip one pair of matching outer quotes."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def read_includes(folder: Path) -> dict[str, str]:
    """Every `*.env` in `folder`, in name order (a later file wins); a missing folder is empty."""
    env: dict[str, str] = {}
    if not folder.is_dir():
        return env
    for path in sorted(folder.glob("*.env")):
        data = _read_capped(path)
        if data is None or len(data) > MAX_FILE_BYTES:
            raise ConfigError(f"{path}: not a regular file of at most {MAX_FILE_BYTES} bytes")
        env.update(read_env_file(data.decode("utf-8", "replace"), str(path)))
    return env


def merge_env(includes: Mapping[str, str], orders_env: Mapping[str, str]) -> dict[str, str]:
    """The env a ship gets: squadron-wide includes under the app's own orders (orders win)."""
    return {**includes, **orders_env}


# ─── admiral keys ────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class AdmiralKey:
    """One admiral public key, as loaded from `authorized_keys/<admiral>.pub`."""

    admiral: str
    line: str
    fingerprint: str


def parse_admiral_file(name: str, data: bytes) -> list[AdmiralKey]:
    """Parse `authorized_keys/<name>.pub`: one or more OpenSSH public key lines.

    Raises ValueError with a message safe to show: it never quotes the file, because a
    private key committed by mistake must not be echoed anywhere.
    """
    admiral = name.removesuffix(".pub")
    if not ADMIRAL_NAME.fullmatch(admiral):
        raise ValueError(f"{_shown(admiral)} is not a usable admiral name")
    if any(marker in data for marker in PRIVATE_MARKERS):
        raise ValueError(
            "holds a PRIVATE key: it was not loaded; remove it from HQ and replace that key"
        )
    if len(data) > MAX_FILE_BYTES or b"\x00" in data:
        raise ValueError(f"is not a public key file ({PUBLIC_KEYS_HINT})")
    text = data.decode("utf-8", "replace")
    keys = [_admiral_key(admiral, line, n) for n, line in _key_lines(text)]
    if not keys:
        raise ValueError(f"holds no key ({PUBLIC_KEYS_HINT})")
    return keys


def _key_lines(text: str) -> Iterable[tuple[int, str]]:
    """Numbered lines of a .pub file that are not blank or comments."""
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield number, line


def _admiral_key(admiral: str, line: str, number: int) -> AdmiralKey:
    """Validate one OpenSSH public key line and normalise it."""
    try:
        key = asyncssh.import_public_key(line)
    except (asyncssh.KeyImportError, ValueError):
        raise ValueError(
            f"line {number} is not an OpenSSH public key ({PUBLIC_KEYS_HINT})"
        ) from None
    canonical = key.export_public_key("openssh").decode("ascii").strip()
    return AdmiralKey(admiral, canonical, str(key.get_fingerprint("sha256")))


# ─── reading a headquarters ──────────────────────────────────────────────────


@dataclass(frozen=True)
class Headquarters:
    """What an HQ commit says: orders per app, rejected orders, admiral keys and key errors."""

    apps: dict[str, Orders] = field(default_factory=dict)
    rejected: dict[str, OrdersRejected] = field(default_factory=dict)
    admirals: dict[str, list[AdmiralKey]] = field(default_factory=dict)
    key_errors: list[str] = field(default_factory=list)

    def key_count(self) -> int:
        """How many valid admiral keys this HQ holds."""
        return sum(len(keys) for keys in self.admirals.values())


# The shared reader input: HQ-relative path → content; None marks an entry that is not a
# regular file (a symlink, a submodule, a folder), which is refused, never followed.
Files = Mapping[str, bytes | None]


def headquarters_from_files(files: Files, default_hull: str) -> Headquarters:
    """Build a Headquarters from `authorized_keys/*.pub` and `<app>/orders` entries."""
    hq = Headquarters()
    for path in sorted(files):
        folder, _, name = path.partition("/")
        if folder == KEYS_DIR:
            _load_keys(hq, path, name, files[path])
        elif name == ORDERS:
            _load_orders(hq, path, folder, files[path], default_hull)
    return hq


def _load_orders(hq: Headquarters, path: str, folder: str, data: bytes | None, hull: str) -> None:
    """Parse one `<app>/orders` into hq.apps, or record why it was rejected."""
    try:
        hq.apps[folder] = _orders_from(_printable(path), folder, data, hull)
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
    shown = _printable(path)
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


def _printable(path: str) -> str:
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
                    files[f"{KEYS_DIR}/{key_file.name}"] = _read_capped(key_file)
            elif os.path.lexists(orders := Path(entry.path, ORDERS)):
                files[f"{entry.name}/{ORDERS}"] = _read_capped(orders)
    return headquarters_from_files(files, default_hull)


def _read_capped(path: Path) -> bytes | None:
    """Up to MAX_FILE_BYTES + 1 bytes of a regular file; None for a symlink or anything else."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return handle.read(MAX_FILE_BYTES + 1)


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
            wanted = name.endswith(".pub") if folder == KEYS_DIR else name == ORDERS
            if wanted:
                blob = store[sub_sha].as_raw_string() if stat.S_ISREG(sub_mode) else None
                files[f"{folder}/{name}"] = blob
    return files


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


# ─── push checks ─────────────────────────────────────────────────────────────


def describe(err: OrdersRejected) -> str:
    """`file:line: message`, or `file: message` when the whole file is at fault."""
    return f"{err.path}:{err.line}: {err.message}" if err.line else f"{err.path}: {err.message}"


def check(
    hq: Headquarters,
    *,
    bootstrap_keys_present: bool,
    reserved_ports: Mapping[int, str] | None = None,
    domain: str = "",
) -> list[str]:
    """Everything that should refuse an HQ push, one `file[:line]: message` per problem.

    Lockout rule: bootstrap keys (HYPERDRIVE_ADMIRAL_KEYS) stay valid while HQ has no key
    of its own, so an HQ with zero valid admiral keys is refused only when no bootstrap key
    is present either — then nobody could ever push to HQ again. Key files with errors are
    refused too, so a private key committed by mistake never lands.
    """
    problems = [describe(err) for err in hq.rejected.values()]
    problems += hq.key_errors
    problems += _port_collisions(hq, reserved_ports or {})
    problems += _servername_collisions(hq, domain)
    if hq.key_count() == 0 and not bootstrap_keys_present:
        problems.append(
            f"{KEYS_DIR}/: no valid admiral key would be left and there is no bootstrap key; "
            "refused so nobody is locked out"
        )
    return problems


def _port_collisions(hq: Headquarters, reserved: Mapping[int, str]) -> list[str]:
    """PUBLISH_PORTs claimed twice, or claimed from a port Hyperdrive itself uses."""
    problems: list[str] = []
    owners: dict[int, Orders] = {}
    for app in sorted(hq.apps):
        orders = hq.apps[app]
        port = orders.publish_port
        if port is None:
            continue
        where = orders.where("export PUBLISH_PORT")
        if port in reserved:
            problems.append(f"{where}: PUBLISH_PORT {port} is {reserved[port]}")
        elif port in owners:
            first = owners[port]
            problems.append(
                f"{where}: PUBLISH_PORT {port} is already published by {first.app} "
                f"({first.where('export PUBLISH_PORT')})"
            )
        else:
            owners[port] = orders
    return problems


def _servername_collisions(hq: Headquarters, domain: str) -> list[str]:
    """Host names two apps claim, including the implicit `<app>.<domain>`."""
    owners = {f"{app}.{domain}".lower(): (app, "") for app in hq.apps} if domain else {}
    problems: list[str] = []
    for app in sorted(hq.apps):
        orders = hq.apps[app]
        for host in orders.servernames:
            owner = owners.get(host)
            if owner is not None and owner[0] != app:
                first = f" ({owner[1]})" if owner[1] else " (its own name under the domain)"
                problems.append(
                    f"{orders.where(f'servername {host}')}: servername {host} is already "
                    f"served by {owner[0]}{first}"
                )
            elif owner is None:
                owners[host] = (app, orders.where(f"servername {host}"))
    return problems


# ─── plan ────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Plan:
    """What an HQ change does to the fleet; apps with rejected orders keep their ship."""

    added: tuple[str, ...] = ()
    changed: dict[str, str] = field(default_factory=dict)
    removed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    rejected: dict[str, OrdersRejected] = field(default_factory=dict)
    running: frozenset[str] = frozenset()

    def lines(self) -> list[str]:
        """One line per app, in name order: `api: redeploy (PORT 3000→3001)`."""
        said = dict.fromkeys(self.added, "deploy")
        said |= {app: f"redeploy ({why})" for app, why in self.changed.items()}
        said |= dict.fromkeys(self.removed, "retire")
        said |= dict.fromkeys(self.unchanged, "unchanged")
        for app, err in self.rejected.items():
            keeps = "keeps its current ship" if app in self.running else "not deployed"
            said[app] = f"rejected, {keeps} ({describe(err)})"
        return [f"{_printable(app)}: {said[app]}" for app in sorted(said)]


def plan(
    old: Headquarters | None,
    new: Headquarters,
    includes_old: Mapping[str, str],
    includes_new: Mapping[str, str],
) -> Plan:
    """Diff two HQs (old None = first HQ) with the env each ship would get.

    An app disappears (retire) only when its folder is gone; rejected orders are not a
    removal. Apps the old HQ knew, ordered or rejected, may have a ship; others have none.
    """
    before = old or Headquarters()
    known = set(before.apps) | {app for app in before.rejected if is_app_name(app)}
    changed: dict[str, str] = {}
    unchanged: list[str] = []
    for app in sorted(set(new.apps) & set(before.apps)):
        was = _effective(before.apps[app], includes_old)
        now = _effective(new.apps[app], includes_new)
        if was == now:
            unchanged.append(app)
        else:
            changed[app] = _reason(was, now)
    return Plan(
        added=tuple(sorted(set(new.apps) - set(before.apps))),
        changed=changed,
        removed=tuple(sorted(known - set(new.apps) - set(new.rejected))),
        unchanged=tuple(unchanged),
        rejected=dict(sorted(new.rejected.items())),
        running=frozenset(known),
    )


def _effective(orders: Orders, includes: Mapping[str, str]) -> Orders:
    """Orders as the ship sees them: env merged over the squadron-wide includes."""
    return replace(orders, env=merge_env(includes, orders.env))


def _reason(was: Orders, now: Orders, limit: int = 3) -> str:
    """A short human reason for a redeploy; env values other than ports are never shown."""
    reasons = [*_field_reasons(was, now), *_env_reasons(was.env, now.env)]
    if len(reasons) > limit:
        reasons = [*reasons[:limit], f"{len(reasons) - limit} more"]
    return ", ".join(reasons) or "orders changed"


def _field_reasons(was: Orders, now: Orders) -> list[str]:
    """Reasons from everything but env; URLs may carry credentials, so they are not shown."""
    reasons: list[str] = []
    if was.autodeploy_url != now.autodeploy_url:
        reasons.append("autodeploy URL changed")
    pairs = [
        ("branch", was.branch or "(default)", now.branch or "(default)"),
        ("hull", was.hull, now.hull),
        ("healthcheck", was.healthcheck_path, now.healthcheck_path),
        ("healthcheck", f"{was.healthcheck_seconds:g}s", f"{now.healthcheck_seconds:g}s"),
        ("memory", _size(was.memory_bytes), _size(now.memory_bytes)),
        ("cpus", _num(was.cpus), _num(now.cpus)),
    ]
    reasons += [f"{name} {a}→{b}" for name, a, b in pairs if a != b]
    if was.servernames != now.servernames:
        gone = [f"-{h}" for h in was.servernames if h not in now.servernames]
        reasons.append(
            " ".join(
                [
                    "servername",
                    *[f"+{h}" for h in now.servernames if h not in was.servernames],
                    *gone,
                ]
            )
        )
    return reasons


def _env_reasons(was: Mapping[str, str], now: Mapping[str, str]) -> list[str]:
    """Env differences: ports with their values, every other key by name only."""
    reasons: list[str] = []
    for key in sorted(set(was) | set(now)):
        a, b = was.get(key), now.get(key)
        if a == b:
            continue
        if key in ("PORT", "PUBLISH_PORT"):
            reasons.append(f"{key} {a or '(none)'}→{b or '(none)'}")
        else:
            reasons.append(
                f"{key} {'added' if a is None else 'removed' if b is None else 'changed'}"
            )
    return reasons


def _size(value: int | None) -> str:
    """Bytes in the largest whole unit: 268435456 → 256M."""
    if value is None:
        return "(none)"
    for unit in "TGMK":
        if value % UNITS[unit.lower()] == 0:
            return f"{value // UNITS[unit.lower()]}{unit}"
    return str(value)


def _num(value: float | None) -> str:
    """A number without a useless `.0`."""
    return "(none)" if value is None else f"{value:g}"
