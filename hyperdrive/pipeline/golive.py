"""The go-live stages: routes, swap, drain (with fall-back), and the outcome.

Until the swap nothing a client can reach has changed. After it, the old ship drains while
the new one is watched: a new ship that stops answering then hands traffic back to the old
one, and the deploy is a failure. A deploy has finished only after its drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass

from hyperdrive.config import Config
from hyperdrive.errors import DeployError, HyperdriveError, InvalidName, ProxyError
from hyperdrive.pipeline import events as ev
from hyperdrive.pipeline.bus import FINISHED
from hyperdrive.pipeline.fleet import Fleet
from hyperdrive.pipeline.job import Job, stage
from hyperdrive.pipeline.model import LIVE, STOPPED, Records, Route, Ship
from hyperdrive.pipeline.ports import Clock, ContainerRuntime, Probe, Proxy
from hyperdrive.pipeline.ships import Ships
from hyperdrive.pipeline.start import Starter

SWAP_CHECK_S = 5


def app_url(config: Config, app: str) -> str:
    """Where people reach the app: `http://<app>.<domain>/` or `http://<host>[:port]/<app>/`."""
    if config.domain:
        return f"http://{app}.{config.domain}/"
    port = "" if config.http_port == 80 else f":{config.http_port}"
    return f"http://{socket.gethostname()}{port}/{app}/"


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
        return Route(name, tuple(orders.servernames), orders.publish_port, orders.healthcheck_path)

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

    async def go_live(self, job: Job, *, rolled_back: bool = False) -> str:
        """Swap, drain, finish; `rolled_back`: a rollback, said (RolledBack) before it finishes."""
        job.ctx.point_of_no_return()
        app, ship, previous = job.app, job.built, job.app.live_ship
        try:
            await self.swap(job, previous)
        except DeployError as err:
            await self.ships.keep_failed(app, ship)
            return self.ships.failed(job, err)
        ship.state = LIVE
        app.live, app.since = ship.name, self.clock.time()
        self.ships.records.save(app)
        if previous is not None and previous.name != ship.name:
            problem = await self.drain(job, previous)
            if problem is not None:
                return await self.fall_back(job, previous, problem)
        if rolled_back:
            job.emit(ev.RolledBack, f"{app.name} rolled back to {ship.sha[:7]}", ms=job.ms())
        return await self._finished(job)

    async def _finished(self, job: Job) -> str:
        app, ship, took = job.app, job.built, job.ms()
        self.ships.record_outcome(app, job.cmd.deploy, "finished", took)
        url = app_url(self.config, app.name)
        job.emit(ev.DeployFinished, f"{app.name} {ship.sha[:7]} is live at {url}", url=url, ms=took)
        await self.ships.retire_old(app, job.ctx, job.cmd.deploy)
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

    async def drain(self, job: Job, old: Ship) -> str | None:
        """Old workers finish in-flight requests (conntrack keeps them on the old ship) while the
        new ship is watched; what went wrong if it stopped answering meanwhile."""
        t0, seconds = job.now(), self.config.drain_seconds
        stable = self.proxy.stable_url(job.app.name, job.orders.healthcheck_path)
        problem = await self.probe.watch_healthy(stable, seconds)
        if problem is not None:
            return problem
        with contextlib.suppress(HyperdriveError):
            await self.runtime.stop(old.name, kill=True)
        old.state = STOPPED
        self.ships.records.save(job.app)
        job.emit(
            ev.ShipDrained,
            f"ship '{old.name}' drained and stopped, kept for rollback",
            ship=old.name,
            sha=old.sha,
            ms=job.ms(t0),
        )
        return None

    async def fall_back(self, job: Job, old: Ship, problem: str) -> str:
        """The new ship died within the drain: the old one, still running, serves again, and
        the deploy has failed."""
        app, new, seconds, t0 = job.app, job.built, self.config.drain_seconds, job.now()
        await self.proxy.point(app.name, old.ip, old.port)
        app.live, app.since, old.state = old.name, self.clock.time(), LIVE
        await self.ships.keep_failed(app, new)
        why = f"'{new.name}' stopped answering within {seconds:g} s of the swap ({problem})"
        back = f"traffic is back on '{old.name}' ({old.sha[:7]})"
        tail = await self.starter.app_log_tail(new)
        job.emit(ev.RolledBack, f"{why}; {back}{tail}", ship=old.name, sha=old.sha, ms=job.ms(t0))
        return self.ships.failed(job, DeployError("drain", f"{why}; rolled back"))
