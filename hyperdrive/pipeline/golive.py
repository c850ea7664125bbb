"""The go-live stages: routes, swap, drain (with fall-back), and the outcome.

Until the swap nothing a client can reach has changed. After it, the old ship drains while
the new one is watched (its health, and its real traffic: guard.py): a new ship that stops
answering, or whose 5xx pass the guard's line, hands traffic back to the old one, and the
deploy is a failure. A deploy has finished only after its drain: at least SETTLE_S of
watching, then until the old ship's connections have closed (at most `drain` s). A guard
that lasts longer goes on beside the daemon's other work, the old ship kept running for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass

from hyperdrive.config import Config
from hyperdrive.errors import DeployError, HyperdriveError, InvalidName, ProxyError
from hyperdrive.pipeline import events as ev
from hyperdrive.pipeline import processes
from hyperdrive.pipeline.bus import FINISHED
from hyperdrive.pipeline.fleet import Fleet
from hyperdrive.pipeline.guard import AfterSwap, Watch, drain_seconds
from hyperdrive.pipeline.job import Job, stage
from hyperdrive.pipeline.model import LIVE, STOPPED, Records, Route, Ship
from hyperdrive.pipeline.ports import Clock, ContainerRuntime, Probe, Proxy
from hyperdrive.pipeline.ships import Ships
from hyperdrive.pipeline.start import Starter

SWAP_CHECK_S = 5
SETTLE_S = 3.0  # the new ship is watched at least this long (or `drain`, if shorter)


def app_url(config: Config, app: str, host: str | None = None) -> str:
    """Where people reach the app: `http://<app>.<domain>/` or `http://<host>[:port]/<app>/`
    (`host`: the machine's name, when the caller has it already)."""
    if config.domain:
        return f"http://{app}.{config.domain}/"
    port = "" if config.http_port == 80 else f":{config.http_port}"
    return f"http://{host or socket.gethostname()}{port}/{app}/"


class RouteTable:
    """Every routed app's route, rendered and applied under one lock: two apps going live at
    once must not each render a config that lacks the other."""

    def __init__(self, records: Records, fleet: Fleet, proxy: Proxy) -> None:
        self.records = records
        self.fleet = fleet
        self.proxy = proxy
        self.lock = asyncio.Lock()

    def routes(self, with_app: str | None = None) -> list[Route]:
        """Every routed app (plus `with_app`). Only `with_app` is rendered from its orders; the
        others keep the route nginx last accepted, so new orders fail only their own deploy."""
        names = {a.name for a in self.records.all() if a.routed}
        names |= {with_app} if with_app else set()
        return [self._route(name, fresh=name == with_app) for name in sorted(names)]

    def _route(self, name: str, fresh: bool) -> Route:
        kept = self.records.get(name).route
        if kept and not fresh:
            return Route.from_json(name, kept)
        orders = self.fleet.orders(name)
        return Route(
            name,
            tuple(orders.servernames),
            orders.publish_port,
            orders.healthcheck_path,
            orders.https,
        )

    async def apply(self, with_app: str | None = None) -> None:
        """Render and apply the routes; `with_app`'s route (and override) is the one tried."""
        async with self.lock:
            routes = self.routes(with_app)
            await self.proxy.apply_routes(routes, fresh={with_app} if with_app else set())
            for route in routes:
                if route.app == with_app:
                    app = self.records.get(with_app)
                    app.routed, app.route = True, route.to_json()


@dataclass(kw_only=True)
class GoLive:
    """swap → drain → finished (or fall-back → failed), then retire what retention lets go."""

    config: Config
    runtime: ContainerRuntime
    proxy: Proxy
    probe: Probe
    routes: RouteTable
    ships: Ships
    starter: Starter
    clock: Clock
    after: AfterSwap

    async def go_live(self, job: Job, *, rolled_back: bool = False) -> str:
        """Swap, drain, finish; `rolled_back`: a rollback, said (RolledBack) before it finishes."""
        job.ctx.point_of_no_return()
        await self.after.release(job.app.name)  # an earlier deploy's guard ends: this swaps
        app, ship, previous = job.app, job.built, job.app.live_ship
        ship_dir = self.config.ship_dir(ship.name)
        if not (await asyncio.to_thread(processes.recorded, ship_dir)).web:
            return await self._live_unrouted(job, previous, rolled_back=rolled_back)
        try:
            await self.swap(job, previous)
        except DeployError as err:
            await self.ships.keep_failed(app, ship)
            return self.ships.failed(job, err)
        ship.state = LIVE
        app.live, app.since = ship.name, self.clock.time()
        self.ships.records.save(app)
        watch = None
        if previous is not None and previous.name != ship.name:
            watch = self.after.begin(
                app,
                new=ship,
                old=previous,
                orders=job.orders,
                deploy=job.cmd.deploy,
                out=job.ctx,
                guarded=not rolled_back,
            )
            if (failed := await self._drained(job, watch)) is not None:
                return failed
        return await self._finished(job, watch, rolled_back=rolled_back)

    async def _live_unrouted(self, job: Job, previous: Ship | None, *, rolled_back: bool) -> str:
        """A worker-only ship: nothing to swap. It is live at once, the old ship is stopped
        (SIGTERM first), and a route the app had while it served HTTP is taken away."""
        app, ship, t0 = job.app, job.built, job.now()
        ship.state = LIVE
        app.live, app.since = ship.name, self.clock.time()
        if app.routed:
            app.routed, app.route = False, {}
            await self.routes.apply()
            with contextlib.suppress(HyperdriveError):
                await self.proxy.unpoint(app.name)
        self.ships.records.save(app)
        if previous is not None and previous.name != ship.name and previous.state == LIVE:
            await self.after.terminate(previous, drain_seconds(job.orders, self.config))
            with contextlib.suppress(HyperdriveError):
                await self.runtime.stop(previous.name, kill=True)
            previous.state = STOPPED
            self.ships.records.save(app)
            said = f"ship '{previous.name}' stopped, kept for rollback (no route: no drain)"
            job.emit(ev.ShipDrained, said, ship=previous.name, sha=previous.sha, ms=job.ms(t0))
        return await self._finished(job, None, rolled_back=rolled_back)

    async def _drained(self, job: Job, watch: Watch) -> str | None:
        """The drain; the deploy's outcome if it failed there (a fall-back, the guard)."""
        problem = await self.drain(job, watch)
        if watch.rolled_back:
            await self.after.finish(watch)
            why = f"the guard rolled {job.app.name} back: {watch.tally.said()}"
            return self.ships.failed(job, DeployError("guard", why))
        if problem is not None:
            outcome = await self.fall_back(job, watch.old, problem)
            await self.after.finish(watch)  # the old ship is live again: only the count ends
            return outcome
        return None

    async def _finished(self, job: Job, watch: Watch | None, *, rolled_back: bool) -> str:
        """The old ship is stopped (SIGTERM first) before the outcome, unless a guard goes on:
        then it runs until the guard is over."""
        guarding = watch is not None and self.after.guard_left(watch) > 0
        later = guarding or (watch is not None and not await self.after.idle(watch))
        if watch is not None and not later:
            await self.after.finish(watch)
        app, ship = job.app, job.built
        if rolled_back:
            job.emit(ev.RolledBack, f"{app.name} rolled back to {ship.sha[:7]}", ms=job.ms())
        took = job.ms()
        self.ships.record_outcome(app, job.cmd.deploy, "finished", took)
        url = app_url(self.config, app.name)
        said = f"{app.name} {ship.sha[:7]} is live at {url}"
        if guarding and watch is not None:
            said += f" (guarded for {watch.guard.seconds:g} s after the swap)"
        job.emit(ev.DeployFinished, said, url=url, ms=took)
        await self.ships.retire_old(app, job.ctx, job.cmd.deploy)
        if later and watch is not None:
            self.after.carry_on(watch)
        return FINISHED

    async def swap(self, job: Job, previous: Ship | None) -> None:
        t0, app, ship = job.now(), job.app, job.built
        await self.proxy.prepare()  # the traffic map exists (a rollback may come first)
        # nginx verifies a route through the stable address: a new app's must already lead to
        # its ship; a live app's still leads to the old one, so a refused route serves nothing new
        first = previous is None or not app.routed
        if first:
            await self._point(app.name, ship)
        try:
            await self.routes.apply(with_app=app.name)
        except (ProxyError, InvalidName) as err:
            if first:
                await self._point_back(app.name, previous)
            job.emit(ev.NginxConfigRejected, str(err))
            raise DeployError("swap", f"nginx refused the new routes: {err}") from err
        if not first:
            await self._point(app.name, ship)
        stable = self.proxy.stable_url(app.name, job.orders.healthcheck_path)
        problem = await self.probe.wait_healthy(stable, SWAP_CHECK_S)
        if problem is not None:
            await self._point_back(app.name, previous)
            raise DeployError("swap", f"the new ship stopped answering after the swap: {problem}")
        job.emit(
            ev.TrafficSwapped,
            f"traffic for {app.name} now goes to {ship.name}",
            previous=previous.name if previous else None,
            ms=job.ms(t0),
        )

    async def _point(self, app: str, ship: Ship) -> None:
        async with stage("swap"):
            await self.proxy.point(app, ship.ip, ship.port)

    async def _point_back(self, app: str, previous: Ship | None) -> None:
        with contextlib.suppress(HyperdriveError):
            if previous is not None:
                await self.proxy.point(app, previous.ip, previous.port)
            else:
                await self.proxy.unpoint(app)

    async def drain(self, job: Job, watch: Watch) -> str | None:
        """The new ship is watched for SETTLE_S (or `drain`, if shorter) while the old one
        still runs (conntrack keeps its connections on it); what went wrong if the new ship
        stopped answering. The guard may swap back meanwhile (`watch.rolled_back`)."""
        stable = self.proxy.stable_url(job.app.name, job.orders.healthcheck_path)
        seconds = min(watch.drain, SETTLE_S)
        healthy = asyncio.ensure_future(self.probe.watch_healthy(stable, seconds))
        tripped = asyncio.ensure_future(watch.tripped.wait())
        try:
            await asyncio.wait({healthy, tripped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (healthy, tripped):
                waiter.cancel()
        if watch.tripped.is_set():
            await self.after.swap_back(watch)
            return None
        return healthy.result()

    async def fall_back(self, job: Job, old: Ship, problem: str) -> str:
        """The new ship died within the drain: the old one, still running, serves again, and
        the deploy has failed."""
        app, new, t0 = job.app, job.built, job.now()
        seconds = min(drain_seconds(job.orders, self.config), SETTLE_S)
        await self.proxy.point(app.name, old.ip, old.port)
        app.live, app.since, old.state = old.name, self.clock.time(), LIVE
        await self.ships.keep_failed(app, new)
        why = f"'{new.name}' stopped answering within {seconds:g} s of the swap ({problem})"
        back = f"traffic is back on '{old.name}' ({old.sha[:7]})"
        tail = await self.starter.app_log_tail(new)
        job.emit(ev.RolledBack, f"{why}; {back}{tail}", ship=old.name, sha=old.sha, ms=job.ms(t0))
        return self.ships.failed(job, DeployError("drain", f"{why}; rolled back"))
