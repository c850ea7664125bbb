"""Routes: render the nginx config, test it, swap it in, reload, verify, roll back on failure.

Hyperdrive supervises its own nginx master under `$VAR/nginx` (prefix, pid file, logs, temp
paths). Each config is a generation folder `generations/NNNNNN`; `conf` is a symlink to the live
one, swapped atomically. `hosts`, `proxies` and `upstream` (the seed's names) point into it.
"""

import asyncio
import contextlib
import functools
import hashlib
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hyperdrive import systemd
from hyperdrive.accesslog import UPSTREAM_PREFIX
from hyperdrive.errors import InvalidName, ProxyError
from hyperdrive.modes import make_passable
from hyperdrive.names import sanitize_app_name
from hyperdrive.procs import run

if TYPE_CHECKING:
    import jinja2

log = logging.getLogger(__name__)

GENERATED = ("upstream", "proxies", "hosts")
CONTROL = "control.conf"
RENDERED = "rendered-from"  # in a generation: the key of what it was rendered from, its digest
TEMPLATES = Path(__file__).with_name("templates")
NGINX_TEMPLATES = ("nginx.conf.j2", "app.conf.j2")
KEEP_GENERATIONS = 5
TIMEOUT = 10.0
UNANSWERED = (502, 504)  # what nginx says itself when the upstream did not answer
HOST = re.compile(
    r"(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
)
WORKER = "nginx: worker process"
CHECK_PATH = re.compile(r"/[A-Za-z0-9._~/?=&%+-]*")
HTTPS_MODES = ("on", "off", "only")
HSTS_SECONDS = 31536000  # a year, as browsers' preload lists ask; no includeSubDomains
SAFE_PATH = re.compile(r"/[A-Za-z0-9._/+-]+")


@functools.cache
def _templates() -> "jinja2.Environment":
    """The nginx templates; jinja2 (~2 MB) is loaded at the first render, not by an idle start."""
    import jinja2  # noqa: PLC0415 - an unchanged start renders nothing (see Routes.apply)

    return jinja2.Environment(
        loader=jinja2.PackageLoader("hyperdrive", "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - nginx config, not HTML; every value is validated first
    )


def check_host(name: str) -> str:
    """A server name that is safe inside nginx config: a DNS name, optionally `*.`-prefixed."""
    if not isinstance(name, str) or len(name) > 253 or not HOST.fullmatch(name):
        raise InvalidName(f"invalid server name {name!r}")
    return name


def _check_port(port: int, what: str) -> int:
    """A TCP port number, or InvalidName naming what it was for."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise InvalidName(f"invalid {what} {port!r}")
    return port


@dataclass(frozen=True)
class AppRoute:
    """How one app is reached: its stable address and the names and ports it is served on."""

    app: str
    address: str  # the stable per-app address on the bridge (traffic.py points it at a ship)
    port: int
    servernames: tuple[str, ...] = ()
    publish_port: int | None = None
    check_path: str = "/"  # what the verify step asks for through nginx, below /<app>
    https: str = "on"  # orders' `https on|off|only`

    def __post_init__(self) -> None:
        """Validate everything that ends up inside nginx config, once, here."""
        sanitize_app_name(self.app)
        try:
            ipaddress.IPv4Address(self.address)
        except ValueError as err:
            raise InvalidName(f"invalid upstream address {self.address!r}") from err
        _check_port(self.port, "upstream port")
        for name in self.servernames:
            check_host(name)
        if self.publish_port is not None:
            _check_port(self.publish_port, "PUBLISH_PORT")
        if not CHECK_PATH.fullmatch(self.check_path):
            raise InvalidName(f"invalid health check path {self.check_path!r}")
        if self.https not in HTTPS_MODES:
            raise InvalidName(f"invalid https mode {self.https!r}")


@dataclass(frozen=True)
class Tls:
    """What nginx needs for HTTPS: its port, the HTTP-01 webroot and each name's cert file."""

    port: int = 443
    webroot: Path = Path("/var/hyperdrive/certs/.hyperdrive/challenges")
    certs: Mapping[str, Path] = field(default_factory=dict)  # name → key + chain file

    def __post_init__(self) -> None:
        _check_port(self.port, "HYPERDRIVE_HTTPS_PORT")
        for name, path in self.certs.items():
            check_host(name)
            _check_path(path)
        _check_path(self.webroot)

    def key(self) -> dict[str, object]:
        return {
            "port": self.port,
            "webroot": str(self.webroot),
            "certs": {n: str(p) for n, p in sorted(self.certs.items())},
        }


def _check_path(path: Path) -> Path:
    """An absolute path that is safe inside nginx config (no blanks, quotes or `;`)."""
    if not SAFE_PATH.fullmatch(str(path)):
        raise InvalidName(f"invalid path for nginx {str(path)!r}")
    return path


def tls_context(route: AppRoute, hosts: Sequence[str], tls: Tls) -> dict[str, object]:
    """Which of an app's names nginx serves over plain HTTP, redirects (308) or serves TLS on."""
    secured = [h for h in hosts if h in tls.certs] if route.https != "off" else []
    only = route.https == "only"
    return {
        "plain_hosts": [h for h in hosts if not (only and h in secured)],
        "redirect_hosts": secured if only else [],
        "tls_sites": [{"host": h, "path": tls.certs[h]} for h in secured],
        "hsts": HSTS_SECONDS if only else 0,
        "https_port": tls.port,
        "https_suffix": "" if tls.port == 443 else f":{tls.port}",
        "webroot": tls.webroot,
    }


def app_hosts(route: AppRoute, domain: str) -> list[str]:
    """The host names an app answers to: its servernames and `<app>.<domain>` when set."""
    hosts = list(route.servernames)
    if domain:
        hosts.append(f"{route.app}.{domain}")
    return hosts


def check_conflicts(routes: Sequence[AppRoute], http_port: int, domain: str) -> None:
    """Refuse two apps claiming one name, host or port, with a message naming both."""
    apps = [route.app for route in routes]
    if dupes := sorted({app for app in apps if apps.count(app) > 1}):
        raise ProxyError(f"app listed twice in the routes: {', '.join(dupes)}")
    owners: dict[str, str] = {f"PUBLISH_PORT {http_port}": "the HTTP port (HYPERDRIVE_HTTP_PORT)"}
    for route in routes:
        claims = [f"server name {host}" for host in app_hosts(route, domain)]
        if route.publish_port is not None:
            claims.append(f"PUBLISH_PORT {route.publish_port}")
        for claim in claims:
            if (other := owners.setdefault(claim, route.app)) != route.app:
                raise ProxyError(f"{route.app}: {claim} is already taken by {other}")


def render(
    routes: Sequence[AppRoute],
    *,
    prefix: Path,
    http_port: int,
    domain: str = "",
    overrides: dict[str, str] | None = None,
    workers: str = "auto",
    tls: Tls | None = None,
) -> dict[str, str]:
    """The whole config as {relative path: text}, without the per-generation control file."""
    overrides, tls = overrides or {}, tls or Tls()
    main = (
        _templates()
        .get_template("nginx.conf.j2")
        .render(
            prefix=prefix,
            http_port=http_port,
            workers=workers,
            webroot=tls.webroot,
            https_port=tls.port,
            tls=bool(tls.certs),
        )
    )
    files = {"nginx.conf": main}
    for route in routes:
        hosts = app_hosts(route, domain)
        context = {
            "app": route.app,
            "upstream": f"{UPSTREAM_PREFIX}{route.app}",
            "address": f"{route.address}:{route.port}",
            "publish_port": route.publish_port,
            "http_port": http_port,
            "override": route.app in overrides,
            **tls_context(route, hosts, tls),
        }
        for part in GENERATED:
            text = _templates().get_template("app.conf.j2").render(part=part, **context)
            files[f"{part}/{route.app}.conf"] = text
        if route.app in overrides:
            files[f"overrides/{route.app}.conf"] = overrides[route.app]
    return files


def changed_apps(
    routes: Sequence[AppRoute], new: dict[str, str], live: dict[str, str] | None
) -> list[AppRoute]:
    """The routes whose files differ from the live generation: the ones to verify."""
    if live is None:
        return list(routes)
    parts = (*GENERATED, "overrides")
    return [
        r
        for r in routes
        if any(new.get(f"{p}/{r.app}.conf") != live.get(f"{p}/{r.app}.conf") for p in parts)
    ]


def read_tree(folder: Path) -> dict[str, str]:
    """A generation's files as {relative path: text}, without the control and key files."""
    return {
        path.relative_to(folder).as_posix(): path.read_text(errors="replace")
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name not in (CONTROL, RENDERED)
    }


def digest(value: object) -> str:
    """sha256 of a JSON-able value."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def render_key(
    routes: Sequence[AppRoute], overrides: Mapping[str, str], settings: Mapping[str, str]
) -> str:
    """Everything `render` makes the files from: its arguments, the templates and this module's
    own source (an upgrade that changes how config is rendered renders again)."""
    sources = [(TEMPLATES / name).read_text() for name in NGINX_TEMPLATES]
    sources.append(Path(__file__).read_text())
    return digest([[asdict(r) for r in routes], dict(overrides), dict(settings), sources])


def rendered_from(folder: Path) -> tuple[str, str] | None:
    """The (render key, digest of its files) a generation was written with, if recorded."""
    try:
        key, files = (folder / RENDERED).read_text().split()
    except (OSError, ValueError):
        return None
    return key, files


async def http_status(port: int, path: str, host: str = "localhost", seconds: float = 2.0) -> int:
    """GET 127.0.0.1:port/path on a new connection: the status, or OSError/TimeoutError."""
    async with asyncio.timeout(seconds):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            await writer.drain()
            status_line = await reader.readline()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    parts = status_line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        raise OSError(f"not an HTTP answer: {status_line!r}")
    return int(parts[1])


def _cmdline(pid: int) -> str:
    """A process's command line as one string ('' once it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def orphan_workers(master: int) -> set[int]:
    """The workers a dead master left: nginx workers still in its process group (the
    daemonized master leads its own session, so the group id is its pid) but no longer its
    children (a live master that took the pid over has its own workers as children)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid, pgid = (int(f) for f in stat.read_text().rsplit(")", 1)[1].split()[1:3])
            pid = int(stat.parent.name)
            if pgid == master != ppid and pid != master and _cmdline(pid).startswith(WORKER):
                found.add(pid)
    return found


class Nginx:
    """Hyperdrive's own nginx master under `prefix`: started daemonized, adopted from its pid file.

    It outlives the Python process on purpose: apps keep serving while the daemon is down.
    Under systemd it runs in its own transient `<scope>.scope`, so a restart of the daemon's
    service (which kills what is left in the service's cgroup) does not take nginx with it.
    """

    def __init__(
        self,
        prefix: Path,
        *,
        binary: str = "nginx",
        timeout: float = TIMEOUT,
        scope: str | None = None,
    ) -> None:
        self.prefix = prefix.absolute()
        self.binary = binary
        self.timeout = timeout
        self.scope = systemd.check_unit(scope) if scope is not None else None
        self.pid_file = self.prefix / "run" / "nginx.pid"
        self.error_log = self.prefix / "logs" / "error.log"
        self.control_socket = self.prefix / "run" / "control.sock"
        self.generations = self.prefix / "generations"
        self.link = self.prefix / "conf"
        self.started = asyncio.Event()  # set each time a master runs: a watcher's cue (healing.py)

    def argv(self, *extra: str, conf: str = "conf/nginx.conf") -> list[str]:
        """The command line, always with our own prefix and config."""
        return [self.binary, *extra, "-p", f"{self.prefix}/", "-c", conf]

    def prepare(self) -> None:
        """Create the folders nginx and the seed layout expect; idempotent."""
        for sub in ("run", "logs", "temp", "generations", "overrides"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        for passage in (self.prefix, self.prefix / "temp"):  # workers run as nobody
            make_passable(passage)
        for part in GENERATED:
            seed_name = self.prefix / part
            if not seed_name.exists() and not seed_name.is_symlink():
                seed_name.symlink_to(Path("conf") / part)

    def live(self) -> Path | None:
        """The generation folder `conf` points at, if any."""
        if not self.link.is_symlink():
            return None
        target = self.link.resolve()
        return target if target.is_dir() else None

    def master_pid(self) -> int | None:
        """The pid of OUR running master (pid file + /proc check), or None."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        cmdline = _cmdline(pid) + " "
        mine = f" -p {self.prefix}/ -c conf/nginx.conf "
        return pid if cmdline.startswith("nginx: master process") and mine in cmdline else None

    async def _run(self, argv: list[str]) -> tuple[int | None, str]:
        """Run nginx itself; (exit code or None on timeout, its output)."""
        try:
            result = await run(argv, timeout=self.timeout, merge=True)
        except FileNotFoundError as err:
            raise ProxyError(f"{argv[0]} is not installed (apt-get install nginx)") from err
        if result.returncode is None:
            return None, f"no answer within {self.timeout} s"
        return result.returncode, result.stdout.strip()

    async def test(self, folder: Path) -> None:
        """`nginx -t` against a generation folder; ProxyError with nginx's own message."""
        code, out = await self._run(self.argv("-t", "-q", conf=str(folder / "nginx.conf")))
        if code != 0:
            raise ProxyError(f"nginx rejected the config: {out}")

    async def start(self) -> int:
        """Adopt the running master, or start one daemonized on the live config; its pid."""
        if (pid := self.master_pid()) is not None:
            self.started.set()
            return pid
        if shutil.which(self.binary) is None:
            raise ProxyError(f"{self.binary} is not installed (apt-get install nginx)")
        await self.quit_orphans()  # a killed master's workers still hold the ports
        self.control_socket.unlink(missing_ok=True)  # left by a master that was killed
        argv = self.argv()
        if self.scope is not None:
            await systemd.stop_scope(self.scope)  # a dead master's workers still holding it
            argv = systemd.scope_argv(self.scope, argv, f"Hyperdrive's nginx ({self.prefix})")
        # stdout/stderr to a file: the daemonized master would otherwise hold our pipe open
        start_log = self.prefix / "logs" / "start.log"
        with start_log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out
            )
            try:
                code = await asyncio.wait_for(proc.wait(), self.timeout)
            except TimeoutError:
                proc.kill()
                code = await proc.wait()
        if code != 0:
            raise ProxyError(f"nginx did not start: {start_log.read_text(errors='replace')}")
        return await self._wait_for_master()

    async def _wait_for_master(self) -> int:
        """Poll the pid file until the daemonized master is there (bounded); a master that
        died before it was seen (killed at once) is a ProxyError like any failed start."""
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    if (pid := self.master_pid()) is not None:
                        self.started.set()
                        return pid
                    await asyncio.sleep(0.01)
        except TimeoutError:
            raise ProxyError(
                f"nginx started but no master ran within {self.timeout} s: "
                f"{self.errors_since(0, ('[emerg]', '[alert]'))[-500:]}"
            ) from None

    async def quit_orphans(self) -> None:
        """A killed master's workers go on serving, holding the ports a new master needs: ask
        them to stop accepting (SIGQUIT; in-flight requests finish) and wait until they have."""
        try:
            dead = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return
        orphans = orphan_workers(dead)
        for pid in orphans:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.timeout / 2):
                # no event says a worker closed its listeners: a few ms, bounded
                while not self.retired(orphans):  # noqa: ASYNC110
                    await asyncio.sleep(0.005)

    async def generation(self) -> str | None:
        """Which generation the workers serve, asked on the private control socket."""
        try:
            async with asyncio.timeout(1.0):
                reader, writer = await asyncio.open_unix_connection(str(self.control_socket))
                try:
                    writer.write(b"GET /generation HTTP/1.0\r\nHost: control\r\n\r\n")
                    answer = await reader.read()
                finally:
                    writer.close()
        except (OSError, TimeoutError):
            return None
        head, _, body = answer.partition(b"\r\n\r\n")
        return body.decode() if head.startswith(b"HTTP/1.1 200") else None

    def log_offset(self) -> int:
        """Where the error log ends now: new problems are read from here."""
        try:
            return self.error_log.stat().st_size
        except FileNotFoundError:
            return 0

    def errors_since(self, offset: int, levels: Iterable[str] = ("[emerg]",)) -> str:
        """nginx's own error lines written after `offset`."""
        try:
            with self.error_log.open("rb") as handle:
                handle.seek(offset)
                text = handle.read().decode(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(line for line in text.splitlines() if any(lv in line for lv in levels))

    async def reload(self, generation: str) -> None:
        """SIGHUP the master; wait until only new workers accept, or nginx says why not."""
        pid = self.master_pid()
        if pid is None:
            raise ProxyError(f"nginx master under {self.prefix} is not running")
        offset, old_workers = self.log_offset(), self.worker_pids(pid)
        os.kill(pid, signal.SIGHUP)
        try:
            async with asyncio.timeout(self.timeout):
                # the master lets old workers accept ~100 ms more: wait until they stopped
                while not (await self.generation() == generation and self.retired(old_workers)):
                    if problems := self.errors_since(offset):
                        raise ProxyError(f"nginx kept its old config: {problems}")
                    await asyncio.sleep(0.01)
        except TimeoutError:
            raise ProxyError(
                f"nginx did not take the new config within {self.timeout} s: "
                f"{self.errors_since(offset, ('[emerg]', '[alert]', '[crit]'))}"
            ) from None

    @staticmethod
    def worker_pids(master: int) -> set[int]:
        """The master's worker processes that still accept connections."""
        found = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != master:
                    continue
                if _cmdline(int(stat.parent.name)) == "nginx: worker process":
                    found.add(int(stat.parent.name))
        return found

    @staticmethod
    def retired(workers: set[int]) -> bool:
        """Whether every one of `workers` has closed its listeners (shutting down) or exited."""
        return all(_cmdline(pid) != "nginx: worker process" for pid in workers)

    async def stop(self) -> None:
        """Stop the master gracefully (SIGQUIT), then forcefully if it lingers."""
        for sig in (signal.SIGQUIT, signal.SIGTERM, signal.SIGKILL):
            if (pid := self.master_pid()) is None:
                return
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.timeout / 2):
                    while True:
                        if self.master_pid() is None:
                            return
                        await asyncio.sleep(0.02)

    def new_generation(self, files: dict[str, str]) -> Path:
        """Write `files` into a fresh generation folder (with its own control file)."""
        numbers = [int(p.name) for p in self.generations.iterdir() if p.name.isdigit()]
        folder = self.generations / f"{max(numbers, default=0) + 1:06d}"
        for rel, text in files.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_text(text)
        for part in GENERATED:
            (folder / part).mkdir(parents=True, exist_ok=True)
        control = _templates().get_template("nginx_control.conf.j2")
        (folder / CONTROL).write_text(control.render(prefix=self.prefix, generation=folder.name))
        return folder

    def switch(self, folder: Path) -> None:
        """Point `conf` at `folder` atomically (a new symlink renamed over the old)."""
        tmp = self.prefix / "conf.new"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(folder.relative_to(self.prefix))
        tmp.replace(self.link)

    def prune(self, keep: int = KEEP_GENERATIONS) -> None:
        """Delete old generations, never the live one."""
        live = self.live()
        folders = sorted(p for p in self.generations.iterdir() if p.name.isdigit())
        for folder in folders[:-keep]:
            if folder != live:
                shutil.rmtree(folder, ignore_errors=True)


class Routes:
    """Every route change is one transaction: render, test, swap, reload, verify, or roll back."""

    def __init__(
        self,
        nginx: Nginx,
        *,
        http_port: int,
        domain: str = "",
        verify_timeout: float = 5.0,
        workers: str = "auto",
    ) -> None:
        self.nginx = nginx
        self.http_port = _check_port(http_port, "HYPERDRIVE_HTTP_PORT")
        self.domain = check_host(domain) if domain else ""
        self.verify_timeout = verify_timeout
        if workers != "auto" and not (workers.isdigit() and 0 < int(workers) <= 64):
            raise InvalidName(f"invalid nginx worker count {workers!r}")
        self.workers = workers
        self._lock = asyncio.Lock()

    def overrides(
        self, routes: Sequence[AppRoute], fresh: Collection[str] | None = None
    ) -> dict[str, str]:
        """The admirals' own lines for the apps being routed: `overrides/<app>.conf` for the
        apps in `fresh` (None: all), the copy nginx last accepted for the others, so one app's
        bad override fails only that app's own change."""
        found, live = {}, self.nginx.live()
        for route in routes:
            name = f"{route.app}.conf"
            path = self.nginx.prefix / "overrides" / name
            if fresh is not None and route.app not in fresh:
                path = live / "overrides" / name if live else path
            if path.is_file():
                found[route.app] = path.read_text(errors="replace")
        return found

    async def apply(
        self,
        routes: Sequence[AppRoute],
        fresh: Collection[str] | None = None,
        tls: Tls | None = None,
    ) -> None:
        """Make `routes` live, or leave the previous config live and raise ProxyError saying why.

        Overrides are read afresh for the apps in `fresh` (None: every app). When the live
        generation was rendered from the same inputs and its files are untouched, nothing is
        rendered (an unchanged start loads no jinja2); any difference renders and repairs.
        """
        async with self._lock:
            check_conflicts(routes, self.http_port, self.domain)
            self.nginx.prepare()
            overrides, tls = self.overrides(routes, fresh), tls or Tls()
            key = render_key(routes, overrides, {**self._settings(), "tls": digest(tls.key())})
            previous = self.nginx.live()
            live_files = read_tree(previous) if previous else None
            if previous and rendered_from(previous) == (key, digest(live_files)):
                await self.nginx.start()  # adopts a running master: no reload when nothing changed
                return
            files = render(
                routes,
                prefix=self.nginx.prefix,
                http_port=self.http_port,
                domain=self.domain,
                overrides=overrides,
                workers=self.workers,
                tls=tls,
            )
            record = f"{key} {digest(files)}\n"
            if previous and files == live_files:
                (previous / RENDERED).write_text(record)  # so that the next start renders nothing
                await self.nginx.start()
                return
            await self._transaction(
                files, changed_apps(routes, files, live_files), previous, record
            )

    def _settings(self) -> dict[str, str]:
        """`render`'s arguments besides the routes and overrides, for its key."""
        return {
            "prefix": str(self.nginx.prefix),
            "http_port": str(self.http_port),
            "domain": self.domain,
            "workers": self.workers,
        }

    async def revive(self) -> int | None:
        """A master that died (killed, OOM) is started again on the config in force, once its
        orphaned workers let go of the ports; the new pid, or None when nothing was needed."""
        async with self._lock:
            if self.nginx.live() is None or self.nginx.master_pid() is not None:
                return None
            return await self.nginx.start()

    async def _transaction(
        self, files: dict[str, str], changed: list[AppRoute], previous: Path | None, record: str
    ) -> None:
        """Test the new generation, swap, reload, verify; on any failure put `previous` back."""
        folder = self.nginx.new_generation(files)
        (folder / RENDERED).write_text(record)
        await self.nginx.test(folder)
        running = self.nginx.master_pid() is not None
        self.nginx.switch(folder)
        try:
            await (self.nginx.reload(folder.name) if running else self.nginx.start())
            await self._verify(changed)
        except ProxyError as err:
            if trouble := await self._restore(previous):
                raise ProxyError(
                    f"{err}; putting the previous config back failed: {trouble}"
                ) from err
            raise ProxyError(f"{err} (the previous nginx config stays live)") from err
        self.nginx.prune()

    async def _restore(self, previous: Path | None) -> str:
        """Put the previous generation back and make nginx serve it; '' or what went wrong."""
        try:
            if previous is None:  # there was no config before: back to no nginx at all
                self.nginx.link.unlink(missing_ok=True)
                await self.nginx.stop()
                return ""
            self.nginx.switch(previous)
            if self.nginx.master_pid() is None:
                await self.nginx.start()
            elif await self.nginx.generation() != previous.name:
                await self.nginx.reload(previous.name)
        except ProxyError as err:
            log.exception("could not restore nginx generation %s", previous)
            return str(err)
        return ""

    async def _verify(self, changed: Sequence[AppRoute]) -> None:
        """Each changed app must answer through nginx at /<app>/ (any status but 502/504)."""
        offset = self.nginx.log_offset()
        results = await asyncio.gather(*(self._answers(route) for route in changed))
        failed = [
            f"{route.app} ({why})" for route, why in zip(changed, results, strict=True) if why
        ]
        if failed:
            said = self.nginx.errors_since(offset, ("[error]", "[crit]", "[emerg]"))
            raise ProxyError(f"no answer through nginx from {', '.join(failed)}: {said}".strip())

    async def _answers(self, route: AppRoute) -> str:
        """'' once the app answers through nginx; otherwise what went wrong last."""
        path = f"/{route.app}{route.check_path}"
        why = "not asked"
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.verify_timeout):
                while True:
                    try:
                        status = await http_status(self.http_port, path)
                    except (OSError, TimeoutError) as err:
                        why = f"GET {path}: {err}"
                    else:
                        if status not in UNANSWERED:
                            return ""
                        why = f"GET {path}: {status}"
                    await asyncio.sleep(0.05)
        return why
