"""Git over SSH and admiral commands: the asyncssh server behind `git push hyperdrive main`.

Only admirals and captains get in (public keys from the KeyRing). A command is parsed with
shlex, the repo name is validated here, once, hyperdrive.access decides whether the key may use
that repo, and the real git program serves the pack on `git_root/<app>.git` with its pipes
pumped by explicit coroutines (asyncssh's `redirect` lost data in measurements). Anything that
is not git goes to the injected admiral command handler, which asks hyperdrive.access too.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hyperdrive import access
from hyperdrive.access import Identity
from hyperdrive.config import KEYS, Config
from hyperdrive.errors import HyperdriveError, InvalidName
from hyperdrive.files import write_atomically
from hyperdrive.heads import DEFAULT_BRANCH
from hyperdrive.keyring import KeyRing
from hyperdrive.names import repo_name
from hyperdrive.procs import check_output, spawn
from hyperdrive.space import FOR_WORK, shortage
from hyperdrive.sshlib import asyncssh

log = logging.getLogger(__name__)

GIT_SERVICES = {
    "git-receive-pack": "receive-pack",
    "git-upload-pack": "upload-pack",
    "git-upload-archive": "upload-archive",
}
ADMIRAL_VERBS = frozenset({"status", "logs", "ps", "deploy", "rollback", "enter", "run"})
PTY_VERBS = frozenset({"enter", "run"})  # the only commands a terminal is allocated for
MAX_COMMAND = 4096
FEED_MAX = 1024 * 1024  # one write into git's stdin takes all SSH data queued, up to this
RELAY_MAX = 256 * 1024  # what asyncio reads from a pipe at once: one SSH write per read
PIPE_LIMIT = 1024 * 1024  # git's pipes buffer this much before asyncio pauses reading them
PIPE_SIZE = 1024 * 1024  # the kernel's buffer of git's stdin (Linux's default: 64 KB)
GIT_TIMEOUT_S = 3600.0
INIT_TIMEOUT_S = 30.0
REAP_TIMEOUT_S = 10.0
LOGIN_TIMEOUT_S = 20.0
MAX_UNAUTHENTICATED = 512  # all sources together: far above what real use needs
MAX_PER_SOURCE = 10  # one address may hold this many that wait longer than GRACE_S
GRACE_S = 5.0
SANE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
GIT_PROTOCOL = re.compile(r"[A-Za-z0-9=:._-]{1,64}")
HOOKS = ("pre-receive", "post-receive")


def package_hooks() -> Path:
    """git's hooks, package data of `hyperdrive` so every install (a wheel, pipx, ./bootstrap,
    a checkout) has them; git runs them, so they must be real, executable files (never in a
    zip: the package folder itself, without importlib.resources and its zipfile)."""
    return Path(__file__).parent / "githooks"


DEFAULT_HOOKS_DIR = package_hooks()

AdmiralCommands = Callable[
    [Identity, list[str], "asyncssh.SSHServerProcess[bytes]"], Awaitable[int]
]


class CommandRejected(HyperdriveError):
    """An SSH command the server will not run; the message is shown to the client."""


@dataclass(frozen=True)
class GitRequest:
    service: str  # receive-pack, upload-pack, upload-archive
    app: str


@dataclass(frozen=True)
class AdmiralRequest:
    argv: list[str]


def parse_command(command: str | None) -> GitRequest | AdmiralRequest:
    """Turn the client's command line into a request; raise CommandRejected or InvalidName."""
    if command is None or not command.strip():
        verbs = ", ".join(sorted(ADMIRAL_VERBS))
        raise CommandRejected(f"no shell here: push with git, or run a command ({verbs})")
    if len(command) > MAX_COMMAND:
        raise CommandRejected(f"command too long ({len(command)} bytes, limit {MAX_COMMAND})")
    try:
        argv = shlex.split(command)
    except ValueError as err:
        raise CommandRejected(f"cannot parse the command: {err}") from None
    if len(argv) >= 2 and argv[0] == "git" and f"git-{argv[1]}" in GIT_SERVICES:
        argv = [f"git-{argv[1]}", *argv[2:]]
    if argv[0] not in GIT_SERVICES:
        return AdmiralRequest(argv)
    if len(argv) != 2:
        raise CommandRejected(f"usage: {argv[0]} <repository>")
    return GitRequest(GIT_SERVICES[argv[0]], repo_name(argv[1]))


def load_host_key(path: Path) -> asyncssh.SSHKey:
    """Read the server's host key, generating an ed25519 one (mode 0600) at first start."""
    if not path.exists():
        key = asyncssh.generate_private_key("ssh-ed25519")
        write_atomically(path, key.export_private_key(), mode=0o600)
        log.info("ssh: generated host key %s", path)
    return asyncssh.read_private_key(path)


def check_hooks(folder: Path) -> None:
    """Refuse to serve without runnable hooks: git skips a hook it cannot execute, silently
    (no deploy after a push, no check of a headquarters push)."""
    for name in HOOKS:
        hook = folder / name
        if not hook.is_file():
            raise HyperdriveError(f"no {name} hook in {folder}: reinstall hyperdrive")
        if not os.access(hook, os.X_OK):
            raise HyperdriveError(f"{hook} is not executable: reinstall hyperdrive")


async def create_repo(path: Path, hooks_dir: Path) -> bool:
    """Create a bare repo at `path` wired to our post-receive hook; False if it already exists.

    Its HEAD names `main` until the first push: the post-receive hook then points it at the
    first branch pushed (`main`, `master`, whatever the pusher's git made). Built in a
    temporary folder and renamed into place, so two first pushes cannot both win.
    """
    tmp = _scratch_beside(path)
    if tmp is None:
        return False
    try:
        await _init_bare(tmp, hooks_dir)
        return _move_into_place(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _has_refs(repo: Path) -> bool:
    """Any branch or tag stored, loose or packed (read without git: a handful of files)."""
    packed = repo / "packed-refs"
    if packed.is_file() and any(
        line and not line.startswith(b"#") for line in packed.read_bytes().splitlines()
    ):
        return True
    return any(path.is_file() for path in (repo / "refs").rglob("*"))


def _scratch_beside(path: Path) -> Path | None:
    """A fresh temporary folder next to `path`, or None when `path` already exists."""
    if path.is_dir():
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))


def _move_into_place(tmp: Path, path: Path) -> bool:
    """Rename `tmp` to `path`; False when another creator got there first."""
    try:
        os.rename(tmp, path)
        return True
    except OSError:
        if path.is_dir():
            return False
        raise


async def _init_bare(path: Path, hooks_dir: Path) -> None:
    """The real git makes the repo it serves (and a first start then needs no dulwich: ~3 MB
    an idle daemon would hold for good)."""
    init = ["git", "init", "--bare", "--quiet", "--template=", f"--initial-branch={DEFAULT_BRANCH}"]
    await check_output([*init, str(path)], timeout=INIT_TIMEOUT_S)
    for key, value in (
        ("core.hooksPath", str(hooks_dir)),
        ("receive.advertisePushOptions", "true"),
        ("receive.denyNonFastForwards", "false"),  # force pushes deploy
    ):
        config = ["git", f"--git-dir={path}", "config", key, value]
        await check_output(config, timeout=INIT_TIMEOUT_S)


async def _feed(src: asyncssh.SSHReader[bytes], dst: asyncio.StreamWriter) -> None:
    """Client → git stdin, until the client's EOF; a vanished client is an EOF too."""
    try:
        while (data := await src.read(FEED_MAX)) and not dst.is_closing():  # uvloop: closed
            dst.write(data)  # at git's exit, and writing to it then raises RuntimeError
            await dst.drain()
    except (asyncssh.Error, ConnectionError):
        pass  # client gone or git done reading: git sees EOF and decides
    finally:
        dst.close()


async def _relay(src: asyncio.StreamReader, dst: asyncssh.SSHWriter[bytes]) -> None:
    """git → client until git's EOF; once the client is gone, drain git into the void.

    Draining (not killing) lets git finish a ref update and its hook on its own terms.
    """
    client_gone = False
    while data := await src.read(RELAY_MAX):
        if client_gone:
            continue
        try:
            dst.write(data)
            await dst.drain()
        except (asyncssh.Error, ConnectionError):
            client_gone = True


def _widen_stdin(stdin: asyncio.StreamWriter) -> None:
    """Give git's stdin a 1 MB kernel buffer (Linux's default is 64 KB): a pushed pack then
    rarely fills it, so each batch of SSH data goes in with one write instead of a partial
    write and a flush per 4 KB that git reads. Best effort: past a user's pipe quota the
    default stays."""
    pipe = stdin.transport.get_extra_info("pipe")
    if pipe is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)


async def _reap(proc: asyncio.subprocess.Process) -> None:
    """Make sure git is gone: kill it if it outlived its session, then wait for it."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), REAP_TIMEOUT_S)


async def run_git(
    service: str, repo: Path, env: Mapping[str, str], process: asyncssh.SSHServerProcess[bytes]
) -> int:
    """Run `git <service> <repo>` with the session's streams pumped both ways; its exit code."""
    proc = await spawn(
        "git", service, str(repo), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=dict(env),
        limit=PIPE_LIMIT,
    )  # fmt: skip
    assert proc.stdin is not None
    assert proc.stdout is not None
    assert proc.stderr is not None
    _widen_stdin(proc.stdin)
    feeding = asyncio.create_task(_feed(process.stdin, proc.stdin))
    try:
        async with asyncio.timeout(GIT_TIMEOUT_S):
            await asyncio.gather(
                _relay(proc.stdout, process.stdout), _relay(proc.stderr, process.stderr)
            )
            return await proc.wait()
    except TimeoutError:
        process.stderr.write(f"hyperdrive: git {service} timed out\n".encode())
        return 1
    finally:
        feeding.cancel()
        await _reap(proc)


class _Gate:
    """Caps connections that have not authenticated yet, per source address and overall.

    One address holding more than `per_source` (each waiting `grace` seconds or more) loses
    its own oldest; past the global `limit` the busiest address loses its oldest. A flood
    then costs a bounded amount and only its sender, and a real client, which authenticates
    within milliseconds, gets in, even in a burst of fifty from one address.
    """

    def __init__(self, limit: int, per_source: int = MAX_PER_SOURCE, grace: float = GRACE_S):
        self.limit, self.per_source, self.grace = limit, per_source, grace
        self._waiting: OrderedDict[asyncssh.SSHServerConnection, tuple[str, float]] = OrderedDict()
        self.evicted = 0

    def arrived(self, conn: asyncssh.SSHServerConnection) -> None:
        now = time.monotonic()
        source = _source(conn)
        self._waiting[conn] = (source, now)
        mine = [c for c, (s, _) in self._waiting.items() if s == source]
        if len(mine) > self.per_source and now - self._waiting[mine[0]][1] >= self.grace:
            self._evict(mine[0])
        while len(self._waiting) > self.limit:
            self._evict(self._oldest_of_busiest())

    def _oldest_of_busiest(self) -> asyncssh.SSHServerConnection:
        counts = Counter(source for source, _ in self._waiting.values())
        busiest = counts.most_common(1)[0][0]
        return next(c for c, (s, _) in self._waiting.items() if s == busiest)

    def _evict(self, conn: asyncssh.SSHServerConnection) -> None:
        source, _ = self._waiting.pop(conn)
        self.evicted += 1
        if self.evicted == 1 or not self.evicted % 100:  # a flood logs once per hundred
            log.warning("ssh: closed unauthenticated connections (%d so far, last from %s)",
                        self.evicted, source)  # fmt: skip
        conn.abort()

    def left(self, conn: asyncssh.SSHServerConnection) -> None:
        self._waiting.pop(conn, None)

    def pending(self, source: str | None = None) -> int:
        return sum(1 for s, _ in self._waiting.values() if source in {None, s})


def _source(conn: asyncssh.SSHServerConnection) -> str:
    """The client's address (no port): what a per-source limit counts."""
    peer = conn.get_extra_info("peername")
    return str(peer[0]) if peer else "?"


class _Connection(asyncssh.SSHServer):
    """One client connection: public-key auth against the live KeyRing, nothing else."""

    def __init__(self, keyring: KeyRing, gate: _Gate) -> None:
        self._keyring = keyring
        self._gate = gate
        self._conn: asyncssh.SSHServerConnection | None = None
        self._identity: Identity | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._gate.arrived(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._gate.left(self._conn)

    def begin_auth(self, username: str) -> bool:
        return True  # every user name needs a key; the key names the admiral or captain

    def public_key_auth_supported(self) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        # Called for the probe and again for the signed request: the last answer counts.
        self._identity = self._keyring.identity_for(key)
        return self._identity is not None

    def auth_completed(self) -> None:
        assert self._conn is not None
        assert self._identity is not None
        self._gate.left(self._conn)
        self._conn.set_extra_info(identity=self._identity)
        log.info("ssh: %s logged in from %s", self._identity.who, self._peer())

    def _peer(self) -> str:
        peer = self._conn.get_extra_info("peername") if self._conn else None
        return f"{peer[0]}:{peer[1]}" if peer else "?"


class GitServer:
    """The SSH endpoint: git push/fetch/archive for app and HQ repos, plus admiral commands."""

    def __init__(  # noqa: PLR0917 - the wiring signature bootstrap.py calls positionally
        self,
        host: str,
        port: int,
        host_key_path: Path,
        git_root: Path,
        keyring: KeyRing,
        hook_env: Mapping[str, str],
        admiral_commands: AdmiralCommands | None,
        hooks_dir: Path = DEFAULT_HOOKS_DIR,
        max_unauthenticated: int = MAX_UNAUTHENTICATED,
        login_timeout: float = LOGIN_TIMEOUT_S,
        max_per_source: int = MAX_PER_SOURCE,
        refusals: access.Refusals | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.host_key_path = host_key_path
        self.git_root = git_root
        self.keyring = keyring
        self.hooks_dir = hooks_dir
        self.login_timeout = login_timeout
        self._hook_env = dict(hook_env)
        self._admiral_commands = admiral_commands
        self._refusals = refusals
        self._gate = _Gate(max_unauthenticated, max_per_source)
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._sessions: set[asyncio.Task[Any]] = set()
        self._creating: dict[str, asyncio.Lock] = {}
        self._pushing: dict[str, int] = {}  # receive-packs running, by app
        self._fresh: set[str] = set()  # repos a push created that have no ref yet

    @property
    def bound_port(self) -> int:
        if self._acceptor is None:
            raise HyperdriveError("the git server is not started")
        return int(self._acceptor.get_port())

    def active_sessions(self) -> int:
        """SSH sessions running now (pushes, fetches, admiral commands)."""
        return len(self._sessions)

    def unauthenticated(self, source: str | None = None) -> int:
        """Connections still in their handshake or login right now (from `source`, or all)."""
        return self._gate.pending(source)

    async def start(self) -> None:
        """Load (or create) the host key once, then listen."""
        check_hooks(self.hooks_dir)
        host_key = await asyncio.to_thread(load_host_key, self.host_key_path)
        self.git_root.mkdir(parents=True, exist_ok=True)
        self._acceptor = await asyncssh.listen(
            self.host, self.port, server_host_keys=[host_key],
            server_factory=lambda: _Connection(self.keyring, self._gate),
            process_factory=self._session, encoding=None, allow_pty=True,
            line_editor=False, x11_forwarding=False, agent_forwarding=False,
            login_timeout=self.login_timeout, keepalive_interval=30, keepalive_count_max=3,
            reuse_address=True,
        )  # fmt: skip
        log.info("ssh: listening on %s:%d", self.host, self.bound_port)

    async def close(self, grace: float = 10.0) -> None:
        """Stop listening, give running sessions `grace` seconds, then cancel the rest."""
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
            self._acceptor = None
        if self._sessions:
            _, late = await asyncio.wait(set(self._sessions), timeout=grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=REAP_TIMEOUT_S)

    async def _session(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        """Entry point of every SSH session: transport failures end here as a log line."""
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        identity = process.get_extra_info("identity")
        assert isinstance(identity, Identity)  # auth_completed set it: no key, no session
        status = 1
        try:
            status = await self._dispatch(identity, process)
        except (asyncssh.Error, ConnectionError) as err:
            log.info("ssh: session of %s ended early: %s", identity.who, err)
        finally:
            self._sessions.discard(task)
            with contextlib.suppress(asyncssh.Error, OSError):
                process.exit(status)

    async def _dispatch(self, identity: Identity, process: asyncssh.SSHServerProcess[bytes]) -> int:
        try:
            request = parse_command(process.command)
            _check_terminal(request, process.term_type)
        except CommandRejected as err:
            return _refuse(process, str(err))
        except InvalidName as err:
            return _refuse(process, f"{err}")
        if isinstance(request, GitRequest):
            try:
                access.check_git(identity, request.service, request.app)
            except access.NotAllowed as err:
                return self._refused(err, process)
            return await self._git(request, identity.who, process)
        if self._admiral_commands is None or request.argv[0] not in ADMIRAL_VERBS:
            return _refuse(process, f"unknown command: {request.argv[0]}", prefix=False)
        return await self._admiral_commands(identity, request.argv, process)

    def _refused(self, err: access.NotAllowed, process: asyncssh.SSHServerProcess[bytes]) -> int:
        """A captain's git request for a repo not theirs: one line to them, one event."""
        log.info("ssh: refused: %s", err)
        if self._refusals is not None:
            self._refusals(err)
        return _refuse(process, str(err))

    async def _git(
        self, request: GitRequest, admiral: str, process: asyncssh.SSHServerProcess[bytes]
    ) -> int:
        repo = self.git_root / f"{request.app}.git"
        if request.service == "receive-pack":
            return await self._receive(request.app, repo, admiral, process)
        if not repo.is_dir():
            return _refuse(process, f"repository '{request.app}' does not exist")
        env = self._git_env(request.app, admiral, process.env)
        return await run_git(request.service, repo, env, process)

    async def _receive(
        self, app: str, repo: Path, admiral: str, process: asyncssh.SSHServerProcess[bytes]
    ) -> int:
        """A push; the repo is made for the first one, and removed again if the last push
        into it ends with no ref in it (`git-receive-pack zzz` that sends nothing)."""
        if why := shortage(self.git_root, FOR_WORK):
            log.warning("ssh: push to %s refused: %s", app, why)
            return _refuse(process, f"push refused: {why}; the running version keeps serving")
        self._pushing[app] = self._pushing.get(app, 0) + 1
        try:
            if await self._create(app, repo):  # False when it is there already
                self._fresh.add(app)
            return await run_git(
                "receive-pack", repo, self._git_env(app, admiral, process.env), process
            )
        finally:
            self._pushing[app] -= 1
            if not self._pushing[app]:
                del self._pushing[app]
                self._drop_if_still_empty(app, repo)

    def _drop_if_still_empty(self, app: str, repo: Path) -> None:
        """Synchronous on purpose: no other push of `app` can start between check and removal."""
        if app not in self._fresh:
            return
        self._fresh.discard(app)
        if not _has_refs(repo):
            shutil.rmtree(repo, ignore_errors=True)
            log.info("ssh: removed repository %s: the push that made it stored nothing", repo)

    async def ensure_repo(self, app: str) -> None:
        """Create the hosted repo `app` now if it is missing (headquarters, at first start)."""
        await self._create(app, self.git_root / f"{repo_name(app)}.git")

    async def _create(self, app: str, repo: Path) -> bool:
        """First push of an app: create its bare repo (one creator per name at a time); True
        when this call made it."""
        lock = self._creating.setdefault(app, asyncio.Lock())
        async with lock:
            created = await create_repo(repo, self.hooks_dir)
            if created:
                log.info("ssh: created repository %s", repo)
        self._creating.pop(app, None)
        return created

    def _git_env(self, app: str, admiral: str, client_env: Mapping[str, str]) -> dict[str, str]:
        env = {
            "PATH": SANE_PATH,
            "HOME": str(self.git_root),
            **self._hook_env,
            "HYPERDRIVE_APP": app,
            "HYPERDRIVE_ADMIRAL": admiral,
            "HYPERDRIVE_PYTHON": sys.executable,
            # the hooks of the Hyperdrive running now, whatever path a repo's config recorded
            # when it was created (an older install kept them elsewhere)
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": "core.hooksPath",
            "GIT_CONFIG_VALUE_0": str(self.hooks_dir),
        }
        protocol = client_env.get("GIT_PROTOCOL", "")
        if GIT_PROTOCOL.fullmatch(protocol):
            env["GIT_PROTOCOL"] = protocol
        return env


def _check_terminal(request: GitRequest | AdmiralRequest, term_type: str | None) -> None:
    """A terminal only for commands that want one: a PTY would corrupt a git pack."""
    if term_type is None:
        return
    if isinstance(request, GitRequest) or request.argv[0] in ADMIRAL_VERBS - PTY_VERBS:
        raise CommandRejected("this command takes no terminal: run it without `ssh -t`")


def _refuse(process: asyncssh.SSHServerProcess[bytes], message: str, prefix: bool = True) -> int:
    """Tell the client why on stderr; exit status 1."""
    shown = f"hyperdrive: {message}" if prefix else message
    process.stderr.write(shown.encode(errors="replace") + b"\n")
    return 1


def hook_env(config: Config) -> dict[str, str]:
    """What git's hooks need: where the spool and socket are, and the config (no secrets)."""
    # spelled as main.conf spells them (on/off, a,b), so the hook reads them back the same
    shown = config.redacted()
    env = {key: shown[key] for key, attr in KEYS.items() if attr != "webhook_secret"}
    env.update(HYPERDRIVE_SPOOL=str(config.spool_dir), HYPERDRIVE_SOCKET=str(config.socket_path))
    if config.source is not None:
        env["HYPERDRIVE_CONFIG"] = str(config.source)
    return env
