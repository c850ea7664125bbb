"""Recovery at start: ships and nginx kept serving while the daemon was down; make the records
true again without disturbing what serves."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from hyperdrive.errors import HyperdriveError
from hyperdrive.pipeline import events as ev
from hyperdrive.pipeline.handlers import Pipeline
from hyperdrive.pipeline.model import BUILDING, HEALTHY, LIVE, STOPPED, App


class Recovery:
    """At start: ships and nginx kept serving while the daemon was down; make the records true.

    Interrupted deploys' ships are destroyed (their triggers are still in the spool and run
    again), live ships that are not running are started, the traffic map is re-pointed,
    nginx is re-rendered only if it differs, and containers nobody owns are destroyed.
    """

    def __init__(self, pipeline: Pipeline, out: Callable[[ev.Event], None]) -> None:
        self.pipeline = pipeline
        self.p = pipeline.p
        self.emit = out

    async def run(self) -> None:
        apps = self.p.records.all()
        if apps or await self._ours():
            await self.pipeline._ensure_bridge()
            for app in apps:
                await self._app(app)
            await self._orphans()
        # nginx answers on HYPERDRIVE_HTTP_PORT from the start (404 until an app is routed);
        # a master left running by the previous daemon is adopted, not restarted.
        await self.pipeline.apply_routes()

    async def _ours(self) -> list[str]:
        prefix = f"{self.p.config.name}-"
        return [c.name for c in await self.p.runtime.list() if c.name.startswith(prefix)]

    async def _app(self, app: App) -> None:
        # traffic first: a swap cut short may have pointed it at a ship about to be destroyed
        live = app.live_ship
        if live is not None:
            info = await self.p.runtime.info(live.name)
            if info is None or info.state != "RUNNING":
                with contextlib.suppress(HyperdriveError):
                    await self.p.runtime.start(live.name)
                    await self.pipeline._run_start(live)
            if app.routed:
                await self.p.traffic.point(self.p.ports.port(app.name), live.ip, live.port)
        for ship in list(app.ships):
            if ship.state == BUILDING or (ship.state == HEALTHY and ship.name != app.live):
                await self.pipeline._destroy(app, ship)
                self.emit(
                    ev.ShipDestroyed(
                        app=app.name,
                        ship=ship.name,
                        sha=ship.sha,
                        message=f"'{ship.name}' was mid-deploy at a restart",
                    )
                )
            elif not await self.p.runtime.exists(ship.name):  # its retire was cut short
                self.p.ips.release(ship.name)
                app.forget(ship.name)
            elif ship.state == LIVE and ship.name != app.live:  # its drain was cut short
                with contextlib.suppress(HyperdriveError):
                    await self.p.runtime.stop(ship.name, kill=True)
                ship.state = STOPPED
        self.p.records.save(app)

    async def _orphans(self) -> None:
        known = {s.name for a in self.p.records.all() for s in a.ships}
        hull_prefix = f"{self.p.config.name}-hull-"
        for name in await self._ours():
            if name in known or name.startswith(hull_prefix):
                continue
            with contextlib.suppress(HyperdriveError):
                await self.p.runtime.destroy(name)
            self.p.ips.release(name)
            self.emit(ev.ShipDestroyed(ship=name, message=f"orphan container '{name}' destroyed"))
