"""After the swap: the guard on the new ship's real traffic, and the old ship's drain.

For `guard` seconds after a swap the app's responses are counted as nginx finishes them (the
request stream, accesslog.py); past the guard's line, traffic goes back to the old ship at once
(one nft transaction) and `RolledBack` carries the numbers. The old ship therefore keeps
running, without new connections, until the guard is over, and until its own open connections
(WebSockets, SSE, long requests) have closed or `drain` seconds have passed. Then its app gets
SIGTERM to close what is left itself, TERM_GRACE_S to exit (its other Procfile processes up to
`drain`, if longer), and the ship is stopped (kept for `hd rollback`). All of it runs beside
the deploy; a newer deploy of the app ends it first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from hyperdrive.config import Config, Guard
from hyperdrive.errors import HyperdriveError
from hyperdrive.headquarters.orders import Orders
from hyperdrive.pipeline import events as ev
from hyperdrive.pipeline import processes
from hyperdrive.pipeline.model import LIVE, STOPPED, App, Ship
from hyperdrive.pipeline.ports import Clock, ContainerRuntime, Probe, Proxy, Requests
from hyperdrive.pipeline.ships import Ships

log = logging.getLogger(__name__)

TERM_APP = ("/bin/sh", "-c", "kill -TERM -1")  # every process in the ship but its init
TERM_GRACE_S = 3.0  # after SIGTERM, before the ship is killed
DRAIN_STEP_S = 0.5  # the old ship's connections are counted this often (a /proc read)
BAD_SHIP_DRAIN_S = 2.0  # a ship the guard left: nginx's keep-alive to it ends within 1 s


def _now() -> float:
    """The event loop's clock: every wait here is bounded in real time, fakes or not."""
    return asyncio.get_running_loop().time()


def drain_seconds(orders: Orders, config: Config) -> float:
    """`drain` from the orders, else the squadron's HYPERDRIVE_DRAIN_SECONDS."""
    return config.drain_seconds if orders.drain_seconds is None else orders.drain_seconds


def guard_of(orders: Orders, config: Config) -> Guard:
    """`guard` from the orders, else the squadron's HYPERDRIVE_GUARD."""
    return config.guard if orders.guard is None else orders.guard


@dataclass
class Tally:
    """The app's responses since the swap, and whether they crossed the guard's line."""

    guard: Guard
    requests: int = 0
    errors: int = 0

    def count(self, status: int) -> None:
        self.requests += 1
        self.errors += status >= 500

    @property
    def percent(self) -> float:
        return 100.0 * self.errors / self.requests if self.requests else 0.0

    @property
    def tripped(self) -> bool:
        """At least `min_requests` responses, and more than `max_percent` of them 5xx."""
        enough = self.requests >= self.guard.min_requests
        return self.guard.on and enough and self.percent > self.guard.max_percent

    def said(self) -> str:
        g = self.guard
        return (
            f"{self.errors} of {self.requests} responses were 5xx ({self.percent:.0f} %; "
            f"the guard allows {g.max_percent:g} % of at least {g.min_requests})"
        )


@dataclass
class Watch:
    """One app's time after a swap: the ship that went live, the one it replaced, the count."""

    app: App
    new: Ship
    old: Ship
    deploy: str
    guard: Guard
    drain: float
    swapped: float  # monotonic
    tally: Tally
    out: ev.Emitter
    tripped: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)  # a newer deploy came
    swapping: asyncio.Future[None] | None = None  # the swap back, once the guard tripped
    rolled_back: bool = False
    unsubscribe: Callable[[], None] = lambda: None

    def on_status(self, status: int) -> None:
        if self.tripped.is_set():
            return
        self.tally.count(status)
        if self.tally.tripped:
            self.tripped.set()


@dataclass(kw_only=True)
class AfterSwap:
    """Each app's guard and drain after its swap, in the background (one per app at a time)."""

    config: Config
    runtime: ContainerRuntime
    proxy: Proxy
    probe: Probe
    requests: Requests
    ships: Ships
    clock: Clock
    watches: dict[str, Watch] = field(default_factory=dict)  # the guarded swap of each app
    tasks: set[asyncio.Task[None]] = field(default_factory=set)  # guards and drains going on

    def begin(
        self,
        app: App,
        *,
        new: Ship,
        old: Ship,
        orders: Orders,
        deploy: str,
        out: ev.Emitter,
        guarded: bool = True,
    ) -> Watch:
        """Start counting the app's responses, right at its swap (`guarded`: a rollback is
        not, it goes back to a ship known to be good)."""
        guard = guard_of(orders, self.config) if guarded else Guard(seconds=0)
        watch = Watch(
            app,
            new,
            old,
            deploy,
            guard,
            drain_seconds(orders, self.config),
            _now(),
            Tally(guard),
            out,
        )
        if guard.on:
            watch.unsubscribe = self.requests.subscribe(app.name, watch.on_status)
        self.watches[app.name] = watch
        return watch

    def carry_on(self, watch: Watch) -> None:
        """The rest of the guard and the drain, beside whatever the daemon does next."""
        task = asyncio.create_task(self._after(watch), name=f"after-swap {watch.app.name}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def release(self, app: str) -> None:
        """A newer deploy of the app swaps next: the guard of the last one ends (it would swap
        back over the newer one), while its old ship's drain goes on; a swap back under way is
        finished first (the newer deploy then replaces the ship it went back to)."""
        watch = self.watches.pop(app, None)
        if watch is not None:
            watch.unsubscribe()
            watch.released.set()
            if watch.swapping is not None:
                await asyncio.shield(watch.swapping)

    async def settle(self, app: str) -> None:
        """End the app's guard and drains now (a rollback, a retire): its old ships are stopped
        at once; a swap back under way is finished first."""
        await self.release(app)
        for task in [t for t in self.tasks if t.get_name() == f"after-swap {app}"]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def close(self) -> None:
        """The daemon stops: every watch ends (a restart stops old ships in recovery)."""
        for app in {t.get_name().removeprefix("after-swap ") for t in self.tasks}:
            await self.settle(app)

    def guard_left(self, watch: Watch) -> float:
        return max(0.0, watch.swapped + watch.guard.seconds - _now())

    async def idle(self, watch: Watch) -> bool:
        """Whether the old ship may stop now: its connections closed, or its drain is over."""
        if _now() >= watch.swapped + watch.drain:
            return True
        info = await self.runtime.info(watch.old.name)
        found = self.probe.sockets(info.pid if info else None, watch.old.port)
        return found is None or found.clients == 0

    async def _after(self, watch: Watch) -> None:
        term = True
        try:
            await self.guard(watch)
            if not watch.rolled_back:
                await self.drain(watch)
        except asyncio.CancelledError:
            term = False  # cut short: the old ship is stopped now, not waited for
            raise
        finally:
            await asyncio.shield(self.finish(watch, term=term))

    async def guard(self, watch: Watch) -> None:
        """Until the guard is over (or a newer deploy ends it): swap back once it trips."""
        left = self.guard_left(watch)
        if left <= 0 or watch.released.is_set():
            return
        ended = [asyncio.ensure_future(e.wait()) for e in (watch.tripped, watch.released)]
        try:
            await asyncio.wait(ended, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in ended:
                waiter.cancel()
        if watch.tripped.is_set() and not watch.released.is_set():
            swap = watch.swapping = asyncio.ensure_future(self.swap_back(watch))
            try:
                await asyncio.shield(swap)
            except asyncio.CancelledError:
                await swap  # a swap back is finished before anything else happens to the app
                raise

    async def drain(self, watch: Watch) -> None:
        """Until the old ship's client connections have closed, at most `drain` s after the
        swap; counted every DRAIN_STEP_S in the ship's own network namespace."""
        await self._until_idle(watch.old, watch.swapped + watch.drain)

    async def _until_idle(self, ship: Ship, deadline: float) -> None:
        info = await self.runtime.info(ship.name)
        pid = info.pid if info else None
        while _now() < deadline:
            found = self.probe.sockets(pid, ship.port)
            if found is None or found.clients == 0:
                return
            await asyncio.sleep(min(DRAIN_STEP_S, max(0.0, deadline - _now())))

    async def swap_back(self, watch: Watch) -> None:
        """The guard tripped: the old ship serves again, the new one is kept as failed."""
        t0, app, old, new = _now(), watch.app, watch.old, watch.new
        watch.unsubscribe()
        await self.proxy.point(app.name, old.ip, old.port)
        app.live, app.since, old.state = old.name, self.clock.time(), LIVE
        watch.rolled_back = True
        self.ships.records.save(app)
        after = t0 - watch.swapped
        why = f"the guard saw {watch.tally.said()} within {after:.1f} s of the swap"
        message = f"{why}; traffic is back on '{old.name}' ({old.sha[:7]}), '{new.name}' is kept"
        tally = watch.tally
        said = f"rolled back by the guard: {tally.errors} of {tally.requests} 5xx"
        self.ships.record_outcome(app, watch.deploy, said)
        watch.out.emit(
            ev.RolledBack(
                app=app.name,
                deploy=watch.deploy,
                ship=old.name,
                sha=old.sha,
                message=message,
                requests=watch.tally.requests,
                errors=watch.tally.errors,
                percent=round(watch.tally.percent, 1),
                failed_ship=new.name,
                ms=int((_now() - t0) * 1000),
            )
        )
        await self._until_idle(new, _now() + BAD_SHIP_DRAIN_S)
        await self.ships.keep_failed(app, new)

    async def finish(self, watch: Watch, *, term: bool = True) -> None:
        """The watch is over: stop the ship that no longer serves (SIGTERM first)."""
        watch.unsubscribe()
        if self.watches.get(watch.app.name) is watch:
            del self.watches[watch.app.name]
        old = watch.old
        if old.name == watch.new.name:
            return
        if watch.rolled_back or old.name == watch.app.live:
            return
        if old.state != LIVE or watch.app.ship(old.name) is None:
            return  # stopped or destroyed meanwhile
        t0 = _now()
        if term:
            await self.terminate(old, watch.drain)
        with contextlib.suppress(HyperdriveError):
            await self.runtime.stop(old.name, kill=True)
        old.state = STOPPED
        self.ships.records.save(watch.app)
        held = _now() - watch.swapped
        watch.out.emit(
            ev.ShipDrained(
                app=watch.app.name,
                deploy=watch.deploy,
                ship=old.name,
                sha=old.sha,
                ms=int((_now() - t0) * 1000),
                message=f"ship '{old.name}' drained ({held:.1f} s after the swap) and stopped, "
                "kept for rollback",
            )
        )

    async def terminate(self, ship: Ship, grace: float = TERM_GRACE_S) -> None:
        """SIGTERM to the ship's processes, then up to TERM_GRACE_S for the web process to stop
        serving and up to `grace` (the drain limit; TERM_GRACE_S at least) for every Procfile
        process to exit (its supervisor says so in run/ps); the ship's stop kills the rest."""
        info = await self.runtime.info(ship.name)
        pid = info.pid if info else None
        try:
            await self.runtime.attach(ship.name, TERM_APP, {}, TERM_GRACE_S)
        except HyperdriveError as err:
            log.warning("SIGTERM to %s: %s", ship.name, err)
            return
        t0 = _now()
        while _now() < t0 + TERM_GRACE_S:
            found = self.probe.sockets(pid, ship.port)
            if found is None or (found.clients == 0 and not found.listening):
                break
            await asyncio.sleep(0.1)
        await self._until_stopped(ship, t0 + max(TERM_GRACE_S, grace))

    async def _until_stopped(self, ship: Ship, deadline: float) -> None:
        ship_dir = self.config.ship_dir(ship.name)
        names = list((await asyncio.to_thread(processes.recorded, ship_dir)).processes)
        while _now() < deadline:
            states = await asyncio.to_thread(processes.read_states, ship_dir, names)
            if all(s.state in ("stopped", "missing") for s in states):
                return
            await asyncio.sleep(0.1)
