"""Recovery at start: ships and nginx kept serving while the daemon was down; make the records
true again without disturbing what serves."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from hyperdrive.errors import HyperdriveError
from hyperdrive.headquarters.orders import Egress
from hyperdrive.pipeline import events as ev
from hyperdrive.pipeline.fleet import Fleet
from hyperdrive.pipeline.golive import RouteTable
from hyperdrive.pipeline.model import BUILDING, HEALTHY, LIVE, STOPPED, App, Records
from hyperdrive.pipeline.ports import ContainerRuntime, Network, Proxy
from hyperdrive.pipeline.ships import Ships
from hyperdrive.pipeline.start import Starter

log = logging.getLogger(__name__)
RECOVER_AT_ONCE = 8


@dataclass(kw_only=True)
class Recovery:
    """At start: ships and nginx kept serving while the daemon was down; make the records true.

    Interrupted deploys' ships are destroyed (their triggers are still in the spool and run
    again), live ships that are not running are started, the traffic map is re-pointed,
    nginx is re-rendered only if it differs, and containers nobody owns are destroyed.
    """

    name: str
    records: Records
    runtime: ContainerRuntime
    network: Network
    fleet: Fleet
    proxy: Proxy
    routes: RouteTable
    ships: Ships
    starter: Starter
    out: ev.Emitter

    async def run(self) -> None:
        apps = self.records.all()
        if apps or await self._ours():
            await self.network.ensure()
            await self.proxy.prepare()
            # after a reboot every live ship starts again: several at once (10 apps ≤ 5 s)
            bound = asyncio.Semaphore(RECOVER_AT_ONCE)

            async def recover(app: App) -> None:
                async with bound:
                    await self._app(app)

            results = await asyncio.gather(*(recover(app) for app in apps), return_exceptions=True)
            if failed := next((r for r in results if isinstance(r, BaseException)), None):
                raise failed
            await self._orphans()
        # nginx answers on HYPERDRIVE_HTTP_PORT from the start (404 until an app is routed);
        # a master left running by the previous daemon is adopted, not restarted.
        await self.routes.apply()

    def targets(self) -> dict[str, tuple[str, int]]:
        """What each routed app's traffic must point at, from the records: app -> (ship
        address, port)."""
        return {
            app.name: (live.ip, live.port)
            for app in self.records.all()
            if app.routed and (live := app.live_ship) is not None
        }

    async def readmit(self) -> None:
        """Every live ship's egress rule made true again (the table was lost)."""
        for app in self.records.all():
            if (live := app.live_ship) is not None:
                await self._admit(app.name, live.ip)

    async def _ours(self) -> list[str]:
        prefix = f"{self.name}-"
        return [c.name for c in await self.runtime.list() if c.name.startswith(prefix)]

    async def _app(self, app: App) -> None:
        # traffic first: a swap cut short may have pointed it at a ship about to be destroyed
        await self._serve_live(app)
        for ship in list(app.ships):
            if ship.state == BUILDING or (ship.state == HEALTHY and ship.name != app.live):
                await self.ships.destroy(app, ship)
                message = f"'{ship.name}' was mid-deploy at a restart"
                self.out.emit(
                    ev.ShipDestroyed(app=app.name, ship=ship.name, sha=ship.sha, message=message)
                )
            elif not await self.runtime.exists(ship.name):  # its retire was cut short
                await self.network.dismiss(ship.ip)
                self.network.release(ship.name)
                app.forget(ship.name)
            elif ship.state == LIVE and ship.name != app.live:  # its drain was cut short
                with contextlib.suppress(HyperdriveError):
                    await self.runtime.stop(ship.name, kill=True)
                ship.state = STOPPED
        self.records.save(app)

    async def _serve_live(self, app: App) -> None:
        """The live ship runs its app again, and the traffic map points at it."""
        live = app.live_ship
        if live is None:
            return
        info = await self.runtime.info(live.name)
        if info is None or info.state != "RUNNING":
            with contextlib.suppress(HyperdriveError):
                await self.runtime.start(live.name)
                await self.starter.run_start(live)
        await self._admit(app.name, live.ip)
        if app.routed:
            await self.proxy.point(app.name, live.ip, live.port)

    async def _admit(self, app: str, ip: str) -> None:
        """The table may be new (a reboot): the live ship's egress rule is made true again; if
        its allow list no longer resolves, the ship is cut off rather than let out."""
        egress = self.fleet.orders(app).egress
        try:
            await self.network.admit(ip, app, egress)
        except HyperdriveError as err:
            log.warning("%s: %s; its ship is cut off until the next deploy", app, err)
            await self.network.admit(ip, app, Egress(open=False))

    async def _orphans(self) -> None:
        known = {s.name for a in self.records.all() for s in a.ships}
        hull_prefix = f"{self.name}-hull-"
        for name in await self._ours():
            if name in known or name.startswith(hull_prefix):
                continue
            with contextlib.suppress(HyperdriveError):
                await self.runtime.destroy(name)
            self.network.release(name)
            self.out.emit(
                ev.ShipDestroyed(ship=name, message=f"orphan container '{name}' destroyed")
            )
