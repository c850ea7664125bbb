"""`hd serve`: capture signals → start → run until told to stop → drain → stop.

The first SIGTERM/SIGINT stops accepting work and lets in-flight deploys reach an outcome
within DRAIN_S; a second one stops at once. Unfinished triggers stay in the spool.
"""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import gc
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from aiohttp import web

from hyperdrive import __version__, bootstrap
from hyperdrive.accesslog import RequestStream
from hyperdrive.config import Config
from hyperdrive.errors import AlreadyRunning, ConfigError
from hyperdrive.httpgate import serve_public
from hyperdrive.https import ApiTls
from hyperdrive.masking import LogMask
from hyperdrive.modes import UMASK, make_passable, ship_passages, tighten
from hyperdrive.names import HEADQUARTERS
from hyperdrive.pipeline import events as ev

log = logging.getLogger(__name__)
DRAIN_S = 30.0


def make_private(folder: Path) -> None:
    """`$VAR/private_keys` holds deploy keys: only its owner may list or read it (0700)."""
    folder.mkdir(mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)


def give_back_memory() -> None:
    """Start-up (imports, config, the first nginx render) leaves freed memory inside the process:
    collect it and hand glibc's free pages to the kernel, so an idle daemon holds only what it
    uses (~1.5 MB less RSS). glibc only; elsewhere there is nothing to call.

    What start-up made and kept (modules, classes, the wiring: ~40,000 objects) lives as long
    as the daemon: frozen, no later full collection walks it again (an 18 ms pause each)."""
    gc.collect()
    gc.freeze()
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


class DataLock:
    """An flock on `records/hd.lock`: one `hd serve` per data folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")  # noqa: SIM115 - held until release
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            fh.close()
            raise AlreadyRunning(
                f"another hd serve (pid {holder}) is using {self.path.parent.parent}; "
                "stop it first or give this one another HYPERDRIVE_DATA"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


@dataclass
class Step:
    """One part of the daemon: started in list order, stopped in reverse."""

    name: str
    start: Callable[[], Awaitable[None]]
    stop: Callable[[], Awaitable[None]] | None = None


async def _nothing() -> None:
    """A step with nothing to start (only something to stop)."""


class Server:
    """Runs one squadron's daemon: its steps in order, until the one stop event is set."""

    def __init__(self, config: Config, daemon: bootstrap.Daemon | None = None) -> None:
        self.config = config
        self.should_exit = asyncio.Event()  # the one stop event: every loop ends on it
        self.force_exit = asyncio.Event()
        self.lock = DataLock(config.lock_file)
        self.daemon = daemon or bootstrap.build(config)
        self._runners: list[web.AppRunner] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._started: list[Step] = []
        self._log_mask = LogMask(self.daemon.core.fleet.mask)
        self.steps = self._steps()

    def _steps(self) -> list[Step]:
        d = self.daemon
        return [
            Step("log mask", self._mask_log, self._unmask_log),
            Step("folders", self._folders),
            Step("event log", self._open_eventlog, self._close_eventlog),
            Step("spool", d.spool.open, d.spool.close),
            # armed here, bound when the bridge is ensured (recovery, or the first deploy)
            Step("ships' dns", d.dns.start, d.dns.close),
            Step("outbound", self._run_outbound),
            # before nginx (recovery starts it): every request is told from the first on
            Step("request stream", self._open_requests, self._close_requests),
            Step("certificates", self._run_certificates),
            Step("recovery", self._recover),
            Step("processes", self._conduct, d.conductor.close),
            Step("healing", self._run_watches),
            Step("after swaps", _nothing, d.core.deployer.golive.after.close),
            Step("inbox", self._run_inbox, self._drain_inbox),
            Step("fleet", d.fleet.start, d.fleet.stop),
            Step("default hull", self._prepare_hull, d.core.hulls.close),
            Step("ssh", self._serve_ssh, d.gitserver.close),
            Step("http", self._serve_http, self._close_http),
        ]

    async def serve(self) -> None:
        self.lock.acquire()
        try:
            self._capture_signals()
            await self.startup()
            await self.should_exit.wait()
            await self.shutdown()
        finally:
            self.lock.release()

    def _capture_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.handle_exit, sig)

    def handle_exit(self, sig: int) -> None:
        if self.should_exit.is_set():
            log.warning("second %s: stopping now", signal.Signals(sig).name)
            self.force_exit.set()
        self.should_exit.set()

    async def startup(self) -> None:
        for step in self.steps:
            await step.start()
            self._started.append(step)
        self.daemon.bus.emit(ev.DaemonStarted(version=__version__, message=self._banner()))
        log.info("%s", self._banner())
        give_back_memory()

    def _banner(self) -> str:
        c = self.config
        return f"hyperdrive {__version__} serving: ssh {c.ssh_listen}, api {c.api_listen}"

    def _background(self, work: Coroutine[Any, Any, None], what: str) -> None:
        self._tasks.append(asyncio.create_task(self._guard(work, what)))

    async def _guard(self, work: Coroutine[Any, Any, None], what: str) -> None:
        """A background loop that dies takes the daemon down cleanly instead of silently; a
        watch that cannot run (a folder it may not read) is said, and the daemon goes on."""
        try:
            await work
        except asyncio.CancelledError:
            raise
        except OSError as err:
            log.warning("%s stopped: %s; changes there now need a restart", what, err)
        except Exception:
            log.exception("%s stopped unexpectedly; shutting down", what)
            self.should_exit.set()

    # -- the steps --
    async def _mask_log(self) -> None:
        """The squadron's secrets out of the daemon's own log too (hyperdrive/masking.py)."""
        for handler in logging.getLogger().handlers:
            handler.addFilter(self._log_mask)

    async def _unmask_log(self) -> None:
        for handler in logging.getLogger().handlers:
            handler.removeFilter(self._log_mask)

    async def _folders(self) -> None:
        config = self.config
        # ships run as an unprivileged uid: LXC mounts their trees passing through these
        for folder in (config.data, config.var, *ship_passages(config)):
            make_passable(folder)
        config.records_dir.mkdir(parents=True, exist_ok=True)
        make_private(config.private_keys_dir)
        tighten(config)

    async def _open_eventlog(self) -> None:
        self.daemon.eventlog.open()

    async def _close_eventlog(self) -> None:
        self.daemon.eventlog.close()

    async def _open_requests(self) -> None:
        stream = self.daemon.core.adapters.requests
        if isinstance(stream, RequestStream):
            await stream.open()

    async def _close_requests(self) -> None:
        stream = self.daemon.core.adapters.requests
        if isinstance(stream, RequestStream):
            await stream.close()

    async def _recover(self) -> None:
        """Records and HQ in force, then what kept serving made true again."""
        self.daemon.core.records.load()
        await self.daemon.headquarters.load()
        await self.daemon.recovery.run()

    async def _conduct(self) -> None:
        """The live ships' process exits watched, their cron jobs on the timer."""
        self.daemon.conductor.refresh()

    async def _run_certificates(self) -> None:
        """The one timer that gets and renews certificates (hyperdrive/https.py)."""
        keeper = self.daemon.keeper
        if keeper is not None:
            keeper.store.prepare()
            self._background(keeper.run(), "certificates")

    async def _run_watches(self) -> None:
        """What breaks around the daemon from now on is noticed and put right (healing.py)."""
        for what, watch in self.daemon.watches.items():
            self._background(watch(self.should_exit), what)

    async def _run_outbound(self) -> None:
        """Deliveries journalled before a restart are resumed (hyperdrive/outbound)."""
        courier = self.daemon.courier
        await asyncio.to_thread(courier.journal.open)
        self._background(courier.run(self.should_exit), "outbound deliveries")

    async def _run_inbox(self) -> None:
        d = self.daemon
        self._background(d.inbox.run(), "inbox")
        self._background(d.spool.watch(self.should_exit), "spool watch")

    async def _drain_inbox(self) -> None:
        """In-flight triggers reach an outcome within DRAIN_S (unless forced); the rest stay
        in the spool and resume at the next start."""
        if not await self._drain(self.daemon):
            log.warning("unfinished triggers stay in the spool and resume at next start")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _prepare_hull(self) -> None:
        """The default hull, when it has no version yet, starts building now (not awaited):
        the first push then waits for what is left of it, not for all of it."""
        await self.daemon.core.hulls.prepare(self.config.hull, self.daemon.bus)

    async def _serve_ssh(self) -> None:
        d = self.daemon
        if d.headquarters.source.hosted:  # clone, edit, push works from the first start
            await d.gitserver.ensure_repo(HEADQUARTERS)
        await d.gitserver.start()
        self._background(d.headquarters.watch_includes(self.should_exit), "includes watch")
        keys = d.headquarters.watch_admiral_keys(d.eventlog.append, self.should_exit)
        self._background(keys, "admiral keys watch")

    async def _serve_http(self) -> None:
        listen, keeper = self.config.api_listen, self.daemon.keeper
        tls = None
        if self.config.api_name and keeper is not None:
            api_tls = ApiTls(keeper, self.config.api_name)
            await api_tls.reload()
            tls = api_tls.context
        public, _ = await serve_public(self.daemon.api.public(), listen.host, listen.port, tls=tls)
        admin = web.AppRunner(self.daemon.api.admin(), access_log=None, shutdown_timeout=1)
        await admin.setup()
        sock = self.config.socket_path
        sock.unlink(missing_ok=True)
        old_umask = os.umask(0o177)
        try:
            await web.UnixSite(admin, str(sock)).start()
        finally:
            os.umask(old_umask)
        sock.chmod(0o600)
        self._runners = [public, admin]

    async def _close_http(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self.config.socket_path.unlink(missing_ok=True)

    async def shutdown(self) -> None:
        """Stop the steps in reverse: first what accepts work, then the drain, then the rest.

        Only the drain waits for deploys (bounded); a second signal cuts every step short.
        """
        log.info("stopping: draining in-flight deploys for up to %.0f s", DRAIN_S)
        self.daemon.bus.emit(ev.DaemonStopping(message="draining in-flight deploys"))
        self.should_exit.set()
        for step in reversed(self._started):
            if step.stop is None:
                continue
            try:
                await self._unless_forced(step.stop())
            except Exception:
                log.exception("stopping %s failed", step.name)

    async def _unless_forced(self, work: Awaitable[None]) -> None:
        """Run `work`, but give it up at once on a second signal."""
        task = asyncio.ensure_future(work)
        forced = asyncio.create_task(self.force_exit.wait())
        await asyncio.wait({task, forced}, return_when=asyncio.FIRST_COMPLETED)
        forced.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        elif task.exception() is not None:
            raise task.exception()  # type: ignore[misc]

    async def _drain(self, daemon: bootstrap.Daemon) -> bool:
        drain = asyncio.create_task(daemon.inbox.drain(DRAIN_S))
        forced = asyncio.create_task(self.force_exit.wait())
        await asyncio.wait({drain, forced}, return_when=asyncio.FIRST_COMPLETED)
        forced.cancel()
        if not drain.done():
            for task in list(daemon.inbox.tasks):
                task.cancel()
            await asyncio.wait({drain}, timeout=10)
            return False
        return drain.result() and await daemon.bus.drain(5)


def setup_logging(verbose: bool = False) -> None:
    """stderr only; journald adds its own time stamps, so we leave ours out there."""
    fmt = "%(levelname)s %(name)s: %(message)s"
    if "JOURNAL_STREAM" not in os.environ:
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=fmt)


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The daemon's event loop, by HYPERDRIVE_EVENT_LOOP: the standard library's, or uvloop
    (fewer Python calls per request, but no less CPU and 2 MB more RSS: docs/performance.md)."""
    if name == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop  # noqa: PLC0415 - not loaded at all when the operator chose asyncio
    except ImportError as err:
        raise ConfigError(
            f"HYPERDRIVE_EVENT_LOOP=uvloop, but uvloop cannot be imported ({err}): "
            "reinstall Hyperdrive with its dependencies, or set HYPERDRIVE_EVENT_LOOP=asyncio"
        ) from err
    return uvloop.new_event_loop


def run(config: Config) -> None:
    os.umask(UMASK)  # nothing the daemon writes is world-readable (README: Security)
    with asyncio.Runner(loop_factory=loop_factory(config.event_loop)) as runner:
        runner.run(Server(config).serve())
