"""Orders: one app's `<app>/orders` file, parsed (never executed) into Orders.

A mistake raises OrdersRejected naming file and line, so a push is refused with `file:line`.
"""

from __future__ import annotations

import io
import ipaddress
import itertools
import math
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from hyperdrive.config import (
    KNOWN_HULLS,
    MAX_MEMORY,
    MEMORY,
    MIN_MEMORY,
    UNITS,
    Guard,
    parse_guard,
)
from hyperdrive.errors import InvalidName, OrdersRejected
from hyperdrive.gitremote import shown_url
from hyperdrive.names import HULL_NAME, check_ref, sanitize_app_name

MAX_FILE_BYTES = 64 * 1024
ORDERS = "orders"
DEFAULT_PORT = 3000
DEFAULT_HEALTHCHECK = ("/", 60.0)
MIN_CPUS, MAX_CPUS = 0.01, 1024.0  # what a ship's container takes (ShipSpec, pipeline/model.py)
DEFAULT_PREVIEWS, MAX_PREVIEWS = 5, 50  # `previews on [max N]`: preview ships per app
FORGES = ("github", "gitlab", "gitea", "bitbucket")  # `forge <kind> <repo> [api-url]`
FORGE_REPO = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+")
MAX_NOTIFY = 4
HTTPS_MODES = ("on", "off", "only")  # the same words nginx_reload.HTTPS_MODES renders

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PORT_TEXT = re.compile(r"[1-9][0-9]{0,4}")
NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?")
DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
URL_SCHEMES = ("https://", "http://", "ssh://", "git://", "file://")
SCP_LIKE = re.compile(r"(?:[A-Za-z0-9._-]+@)?[A-Za-z0-9.-]+:[^:/\\].*")
REMOTE_HELPER = re.compile(r"[A-Za-z0-9+.-]+::")


EGRESS_MAX_ALLOWED = 64


MAX_DRAIN_S = 3600.0
MAX_WAVES = 10  # `rollout` waves at most


class _Bad(Exception):
    """A directive is wrong; the parser adds file and line."""


@dataclass(frozen=True)
class Egress:
    """What a ship may reach outside the host: everything (`open`), nothing, or only the
    `allow`ed host:port pairs; hosts are IPv4 addresses or names resolved when a ship is made."""

    open: bool = True
    allow: tuple[tuple[str, int], ...] = ()

    @property
    def off(self) -> bool:
        return not self.open and not self.allow


@dataclass(frozen=True)
class Forge:
    """Where commit statuses go: `forge github acme/web [https://ghe.example/api/v3]`."""

    kind: str
    repo: str
    api: str | None = None


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
    egress: Egress = field(default_factory=Egress)
    previews: int = 0  # `previews on [max N]`: at most this many preview ships; 0 = off
    forge: Forge | None = None
    notify: tuple[str, ...] = ()
    guard: Guard | None = None  # `guard …`; None: HYPERDRIVE_GUARD
    drain_seconds: float | None = None  # `drain <seconds>`; None: HYPERDRIVE_DRAIN_SECONDS
    rollout: tuple[str, ...] = ()  # `rollout 1 50% 100%`: waves across a fleet; () = all at once
    https: str = "on"  # `https on|off|only`: certificates for the app's names, and redirects
    # `secret NAME…`: masked in all Hyperdrive shows; not compared, a new mask needs no redeploy
    secrets: tuple[str, ...] = field(default=(), compare=False)
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
    egress: Egress = field(default_factory=Egress)
    previews: int = 0
    forge: Forge | None = None
    notify: dict[str, None] = field(default_factory=dict)
    guard: Guard | None = None
    drain: float | None = None
    rollout: tuple[str, ...] = ()
    https: str = "on"
    env: dict[str, str] = field(default_factory=dict)
    servernames: dict[str, None] = field(default_factory=dict)
    secrets: dict[str, None] = field(default_factory=dict)
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
    _check_secrets(draft, path)
    return _finish(draft, path)


def _check_secrets(draft: _Draft, path: str) -> None:
    """Each `secret NAME` names a key these orders export: a typo would leave a value shown.
    (Values from the includes are masked already and need no `secret` line.)"""
    for name in draft.secrets:
        if name not in draft.env:
            raise OrdersRejected(
                path,
                draft.lines[f"secret {name}"],
                f"secret {name}: these orders export no {name} (write export {name}=VALUE; "
                "values from $DATA/includes are masked without a secret line)",
            )


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
    import difflib  # noqa: PLC0415 - only a mistake needs it

    close = difflib.get_close_matches(name, DIRECTIVES, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown directive {shown(name)}{hint}; known: {', '.join(DIRECTIVES)}"


def shown(value: str, limit: int = 40) -> str:
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
        egress=draft.egress,
        previews=draft.previews,
        forge=draft.forge,
        notify=tuple(draft.notify),
        guard=draft.guard,
        drain_seconds=draft.drain,
        rollout=draft.rollout,
        https=draft.https,
        secrets=tuple(draft.secrets),
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
        raise _Bad(f"autodeploy URL {shown(shown_url(url))} is not a git URL")
    if REMOTE_HELPER.match(url):
        raise _Bad(
            f"autodeploy URL {shown(shown_url(url))} uses a remote helper, which is not allowed"
        )
    if url.startswith(URL_SCHEMES):
        scheme, _, rest = url.partition("://")
        if scheme != "file" and not rest.split("/", 1)[0]:
            raise _Bad(f"autodeploy URL {shown(shown_url(url))} has no host")
        return url
    if url.startswith("/") or SCP_LIKE.fullmatch(url):
        return url
    raise _Bad(
        f"autodeploy URL {shown(shown_url(url))} is not a git URL (use https://, ssh://, git://, "
        "file://, user@host:path or an absolute path)"
    )


def _branch(branch: str) -> str:
    """A branch name git would accept."""
    try:
        check_ref(f"refs/heads/{branch}")
    except InvalidName:
        raise _Bad(f"invalid branch name {shown(branch)}") from None
    return branch


def _export(draft: _Draft, args: list[str], line: int) -> None:
    """`export KEY=VALUE [KEY=VALUE…]`: environment of the app's ship."""
    if not args:
        raise _Bad("export needs KEY=VALUE")
    for arg in args:
        key, eq, value = arg.partition("=")
        if not eq:
            raise _Bad(f"export {shown(arg)} has no '=': write export KEY=VALUE")
        if not ENV_NAME.fullmatch(key):
            raise _Bad(f"export {shown(key)}: not a valid variable name")
        if key in ("PORT", "PUBLISH_PORT"):
            value = _port(key, value)
        if f"export {key}" in draft.lines:
            raise _Bad(f"{key} exported twice (first on line {draft.lines[f'export {key}']})")
        draft.lines[f"export {key}"] = line
        draft.env[key] = value


def _port(key: str, value: str) -> str:
    """A TCP port, 1-65535, written without leading zeros."""
    if not PORT_TEXT.fullmatch(value) or int(value) > 65535:
        raise _Bad(f"bad {key} {shown(value)}: a port is a number from 1 to 65535")
    return value


def _hull(draft: _Draft, args: list[str], line: int) -> None:
    """`hull <name>`: the base container ships of this app are snapshotted from; a hull
    Hyperdrive cannot build is refused here, at push time, not at the deploy."""
    if len(args) != 1:
        raise _Bad("hull takes one name")
    if not HULL_NAME.fullmatch(args[0]):
        raise _Bad(f"invalid hull name {shown(args[0])}: use [a-z0-9][a-z0-9-]{{0,30}}")
    if args[0] not in KNOWN_HULLS:
        raise _Bad(f"unknown hull {shown(args[0])}; known: {', '.join(KNOWN_HULLS)}")
    draft.once("hull", line)
    draft.hull = args[0]


def _healthcheck(draft: _Draft, args: list[str], line: int) -> None:
    """`healthcheck <path> [seconds]`: what must answer, and how long it may take to."""
    if len(args) not in (1, 2):
        raise _Bad("healthcheck takes a path and optional seconds")
    path = args[0]
    if not path.startswith("/") or any(c.isspace() or not c.isprintable() for c in path):
        raise _Bad(f"healthcheck path {shown(path)} must start with / and hold no spaces")
    seconds = _positive(args[1], "healthcheck seconds") if len(args) == 2 else 60.0
    draft.once("healthcheck", line)
    draft.health = (path, seconds)


def _positive(text: str, what: str) -> float:
    """A plain positive decimal number (no signs, exponents, inf or nan)."""
    if not NUMBER.fullmatch(text) or float(text) <= 0 or not math.isfinite(float(text)):
        raise _Bad(f"{what} {shown(text)} must be a positive number")
    return float(text)


def _servername(draft: _Draft, args: list[str], line: int) -> None:
    """`servername <host>…`: extra host names nginx serves the app on."""
    if not args:
        raise _Bad("servername needs at least one host name")
    for host in (arg.lower() for arg in args):
        labels = host.split(".")
        if len(host) > 253 or not all(DNS_LABEL.fullmatch(label) for label in labels):
            raise _Bad(f"servername {shown(host)} is not a valid DNS name")
        draft.servernames[host] = None
        draft.lines.setdefault(f"servername {host}", line)


def _memory(draft: _Draft, args: list[str], line: int) -> None:
    """`memory <size>`: the ship's memory limit, `256M`, `1G`, `1.5G` or bytes."""
    match = MEMORY.fullmatch(args[0]) if len(args) == 1 else None
    if match is None:
        raise _Bad("memory takes one size such as 256M or 1G")
    size = int(float(match[1]) * UNITS[match[2].lower()])
    if size < MIN_MEMORY and not match[2]:
        raise _Bad(f"memory {shown(args[0])} is {size} bytes; did you mean {args[0]}M?")
    if size < MIN_MEMORY:
        raise _Bad(f"memory {shown(args[0])} is below the 4M a ship needs at least")
    if size > MAX_MEMORY:
        raise _Bad(f"memory {shown(args[0])} is more than any machine has")
    draft.once("memory", line)
    draft.memory = size


def _cpus(draft: _Draft, args: list[str], line: int) -> None:
    """`cpus <n>`: how many CPUs' worth of time the ship may use."""
    if len(args) != 1:
        raise _Bad("cpus takes one number")
    value = _positive(args[0], "cpus")
    if not MIN_CPUS <= value <= MAX_CPUS:
        raise _Bad(f"cpus {shown(args[0])} is out of range: {MIN_CPUS:g} to {MAX_CPUS:g}")
    draft.once("cpus", line)
    draft.cpus = value


def _egress(draft: _Draft, args: list[str], line: int) -> None:
    """`egress off`, or `egress allow host:port…`: what the app's ships may reach outside."""
    if args == ["off"]:
        egress = Egress(open=False)
    elif args[:1] == ["allow"] and 1 < len(args) <= EGRESS_MAX_ALLOWED + 1:
        egress = Egress(open=False, allow=tuple(dict.fromkeys(map(_host_port, args[1:]))))
    elif args[:1] == ["allow"] and len(args) > 1:
        raise _Bad(f"egress allow takes at most {EGRESS_MAX_ALLOWED} host:port pairs")
    else:
        raise _Bad("egress takes `off` or `allow host:port…` (e.g. egress allow 10.0.0.5:5432)")
    draft.once("egress", line)
    draft.egress = egress


def _host_port(text: str) -> tuple[str, int]:
    """`host:port` with an IPv4 address or a DNS name, and a port (required)."""
    host, sep, port = text.lower().rpartition(":")
    if not sep or not PORT_TEXT.fullmatch(port) or int(port) > 65535:
        raise _Bad(f"egress allow {shown(text)}: write host:port with a port from 1 to 65535")
    try:
        return str(ipaddress.IPv4Address(host)), int(port)
    except ValueError:
        pass
    labels = host.split(".")
    if len(host) > 253 or not all(DNS_LABEL.fullmatch(label) for label in labels):
        raise _Bad(f"egress allow {shown(text)}: {shown(host)} is no IPv4 address or DNS name")
    if all(label.isdigit() for label in labels):
        raise _Bad(f"egress allow {shown(text)}: {shown(host)} is not a valid IPv4 address")
    return host, int(port)


def _secret(draft: _Draft, args: list[str], line: int) -> None:
    """`secret NAME [NAME…]`: exported keys whose values are masked wherever Hyperdrive shows
    text, whatever their names."""
    if not args:
        raise _Bad("secret needs at least one variable name")
    for name in args:
        if not ENV_NAME.fullmatch(name):
            raise _Bad(f"secret {shown(name)}: not a valid variable name")
        if f"secret {name}" in draft.lines:
            raise _Bad(f"{name} named secret twice (first on line {draft.lines[f'secret {name}']})")
        draft.lines[f"secret {name}"] = line
        draft.secrets[name] = None


def _previews(draft: _Draft, args: list[str], line: int) -> None:
    """`previews on [max N]` or `previews off`: a ship per pushed branch (pipeline/previews.py)."""
    usage = f"previews takes `on`, `on max N` (1 to {MAX_PREVIEWS}) or `off`"
    if args == ["off"]:
        count = 0
    elif args == ["on"]:
        count = DEFAULT_PREVIEWS
    elif len(args) == 3 and args[:2] == ["on", "max"] and PORT_TEXT.fullmatch(args[2]):
        count = int(args[2])
        if count > MAX_PREVIEWS:
            raise _Bad(f"previews max {shown(args[2])} is too many: {usage}")
    else:
        raise _Bad(usage)
    draft.once("previews", line)
    draft.previews = count


def _forge(draft: _Draft, args: list[str], line: int) -> None:
    """`forge <github|gitlab|gitea|bitbucket> <owner/repo> [api-url]`: commit statuses go there."""
    if len(args) not in (2, 3) or args[0] not in FORGES:
        raise _Bad(f"forge takes {'|'.join(FORGES)}, the repository (owner/name) and an API URL")
    if not FORGE_REPO.fullmatch(args[1]) or ".." in args[1]:
        raise _Bad(f"forge repository {shown(args[1])} is not owner/name")
    api = _http_url(args[2], "forge API URL") if len(args) == 3 else None
    if args[0] == "gitea" and api is None:
        raise _Bad("forge gitea needs its API URL (e.g. https://codeberg.org/api/v1)")
    draft.once("forge", line)
    draft.forge = Forge(args[0], args[1], api.rstrip("/") if api else None)


def _notify(draft: _Draft, args: list[str], line: int) -> None:
    """`notify <url>`: a signed POST (Standard Webhooks) for each deploy's outcome."""
    if len(args) != 1:
        raise _Bad("notify takes one http(s) URL")
    url = _http_url(args[0], "notify URL")
    if url not in draft.notify and len(draft.notify) >= MAX_NOTIFY:
        raise _Bad(f"at most {MAX_NOTIFY} notify URLs")
    draft.notify[url] = None
    draft.lines.setdefault(f"notify {url}", line)


def _http_url(text: str, what: str) -> str:
    """An http(s) URL with a host and no credentials, blanks or controls."""
    scheme, sep, rest = text.partition("://")
    host = rest.split("/", 1)[0]
    bad = any(c.isspace() or not c.isprintable() for c in text)
    if not sep or scheme not in ("http", "https") or not host or "@" in host or bad:
        raise _Bad(f"{what} {shown(shown_url(text))} is not an http:// or https:// URL")
    return text


def _guard(draft: _Draft, args: list[str], line: int) -> None:
    """`guard <seconds> <max-5xx-percent> [min-requests]`, or `guard off`."""
    try:
        guard = parse_guard(args)
    except ValueError as err:
        raise _Bad(str(err)) from None
    draft.once("guard", line)
    draft.guard = guard


def _drain(draft: _Draft, args: list[str], line: int) -> None:
    """`drain <seconds>`: how long the old ship's open connections may last after a swap."""
    if len(args) != 1:
        raise _Bad("drain takes one number of seconds (e.g. drain 30)")
    seconds = _bounded(args[0], "drain seconds", MAX_DRAIN_S)
    draft.once("drain", line)
    draft.drain = seconds


def _rollout(draft: _Draft, args: list[str], line: int) -> None:
    """`rollout 1 50% 100%`: waves across a fleet's squadrons; counts first, then
    percentages, each wave more than the one before, the last `100%` (everyone)."""
    usage = "rollout takes waves like `rollout 1 50% 100%` (counts, then percentages, to 100%)"
    if not args or len(args) > MAX_WAVES:
        raise _Bad(f"{usage}; 1 to {MAX_WAVES} waves")
    counts = [_wave(word, usage) for word in args]
    for before, (number, percent) in itertools.pairwise(counts):
        if before[1] and not percent:
            raise _Bad(f"rollout wave {number} after a percentage: {usage}")
        if before[1] == percent and number <= before[0]:
            raise _Bad(f"rollout waves must grow: {shown(' '.join(args))}; {usage}")
    if counts[-1] != (100, True):
        raise _Bad(f"the last rollout wave must be 100% (everyone): {usage}")
    draft.once("rollout", line)
    draft.rollout = tuple(args)


def _wave(word: str, usage: str) -> tuple[int, bool]:
    """One wave: a count of squadrons (`2`) or a share of them (`50%`, 1 to 100)."""
    percent = word.endswith("%")
    digits = word.removesuffix("%")
    if not PORT_TEXT.fullmatch(digits) or (percent and int(digits) > 100):
        raise _Bad(f"rollout wave {shown(word)} is not a count or a percentage: {usage}")
    return int(digits), percent


def _bounded(text: str, what: str, most: float) -> float:
    """A plain decimal number from 0 to `most` (no signs, exponents, inf or nan)."""
    if not NUMBER.fullmatch(text):
        raise _Bad(f"{what} {shown(text)} must be a number of seconds from 0 to {most:g}")
    value = float(text)
    if value > most:
        raise _Bad(f"{what} {shown(text)} is more than {most:g}")
    return value


def _https(draft: _Draft, args: list[str], line: int) -> None:
    """`https on|off|only`: serve the names over HTTPS too (on), not (off), or HTTPS alone
    (only: plain HTTP gets a 308 to HTTPS and responses carry Strict-Transport-Security)."""
    if len(args) != 1 or args[0] not in HTTPS_MODES:
        got = shown(" ".join(args)) if args else "nothing"
        raise _Bad(f"https takes one of {', '.join(HTTPS_MODES)}, got {got}")
    draft.once("https", line)
    draft.https = args[0]


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
    "egress": _egress,
    "secret": _secret,
    "previews": _previews,
    "forge": _forge,
    "notify": _notify,
    "guard": _guard,
    "drain": _drain,
    "rollout": _rollout,
    "https": _https,
}
