"""Ships through their life: a new one per deploy, kept when failed, scrapped when superseded,
retired when too old; and each app's record of how its last deploy went.

Retention: HYPERDRIVE_KEEP_SHIPS stopped ships that were healthy are kept as rollback targets
(at least one, whatever the setting; a preview keeps one); failed ships do not count against
that, and only the newest KEEP_FAILED of them are kept, for their setup.log.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
from dataclasses import dataclass

from hyperdrive.config import Config
from hyperdrive.errors import DeployError, HyperdriveError
from hyperdrive.names import ship_name
from hyperdrive.pipeline import events as ev
from hyperdrive.pipeline.bus import FAILED as FAILED_OUTCOME
from hyperdrive.pipeline.hulls import Hulls
from hyperdrive.pipeline.job import Job
from hyperdrive.pipeline.model import BUILDING, FAILED, STOPPED, App, Records, Ship
from hyperdrive.pipeline.ports import Clock, ContainerRuntime, Network

KEEP_FAILED = 2


@dataclass(kw_only=True)
class Ships:
    """Making, keeping and destroying ships, and the records that say which is which."""

    config: Config
    runtime: ContainerRuntime
    network: Network
    records: Records
    hulls: Hulls
    clock: Clock

    def new(self, app: App, sha: str, deploy: str, port: int) -> Ship:
        """`<name>-<app>-<sha7>`; a redeploy of the same commit gets `-2`, `-3`, …"""
        base = ship_name(self.config.name, app.name, sha)
        taken = {s.name for s in app.ships}
        names = itertools.chain([base], (f"{base}-{i}" for i in range(2, 10_000)))  # lazily
        name = next(n for n in names if n not in taken)
        ship = Ship(name, sha, ip="", port=port, created=self.clock.time(), deploy=deploy)
        app.upsert(ship)
        self.records.save(app)
        return ship

    def owner(self, ship: str) -> str | None:
        """The app a ship belongs to (`hd launch SHIP` names only the ship)."""
        return next((a.name for a in self.records.all() if a.ship(ship)), None)

    @staticmethod
    def rollback_target(app: App) -> Ship | None:
        """The newest kept ship that has been healthy and is not live."""
        kept = [s for s in app.ships if s.healthy and s.name != app.live and s.state == STOPPED]
        return max(kept, key=lambda s: s.created, default=None)

    def record_outcome(self, app: App, deploy: str, result: str, ms: int | None = None) -> None:
        """The app's `last_deploy`: which deploy, how it ended, how long it took, when."""
        outcome: dict[str, object] = {"deploy": deploy, "result": result, "at": self.clock.time()}
        if ms is not None:
            outcome["ms"] = ms
        app.last_deploy = outcome
        self.records.save(app)

    async def keep_failed(self, app: App, ship: Ship) -> None:
        """A failed ship is stopped and kept for inspection; one whose container was never
        made (lxc-copy failed) is forgotten, its setup.log kept."""
        ship.healthy = False
        if not await self.runtime.exists(ship.name):
            await self.network.dismiss(ship.ip)
            self.network.release(ship.name)
            app.forget(ship.name)
            self.records.save(app)
            return
        with contextlib.suppress(HyperdriveError):
            await self.runtime.stop(ship.name, kill=True)
        ship.state = FAILED
        self.records.save(app)

    async def scrap(self, app: App, ship: Ship) -> None:
        """A superseded deploy: its ship is of no further use."""
        await asyncio.shield(self.destroy(app, ship))
        self.records.save(app)

    async def destroy(self, app: App, ship: Ship) -> None:
        with contextlib.suppress(HyperdriveError):
            await self.runtime.destroy(ship.name)
        with contextlib.suppress(HyperdriveError):
            await self.network.dismiss(ship.ip)
        self.network.release(ship.name)
        shutil.rmtree(self.config.ship_dir(ship.name), ignore_errors=True)
        app.forget(ship.name)

    def too_old(self, app: App) -> list[Ship]:
        """The ships retention lets go: beyond KEEP_SHIPS healthy ones (never the last), and
        failed ones beyond the newest KEEP_FAILED."""
        idle = [s for s in app.ships if s.name != app.live and s.state != BUILDING]
        idle.sort(key=lambda s: s.created)
        healthy = [s for s in idle if s.healthy]
        failed = [s for s in idle if not s.healthy]
        keep = 1 if app.preview_of else max(1, self.config.keep_ships)  # previews keep one
        return healthy[: max(0, len(healthy) - keep)] + failed[: max(0, len(failed) - KEEP_FAILED)]

    async def retire_old(self, app: App, out: ev.Emitter, deploy: str) -> None:
        """Destroy the ships retention lets go, then hull versions nobody is left on."""
        for ship in self.too_old(app):
            t0 = self.clock.monotonic()
            await self.destroy(app, ship)
            ms = int((self.clock.monotonic() - t0) * 1000)
            out.emit(
                ev.ShipRetired(
                    app=app.name,
                    deploy=deploy,
                    ship=ship.name,
                    sha=ship.sha,
                    ms=ms,
                    message=f"ship '{ship.name}' destroyed",
                )
            )
        self.records.save(app)
        in_use = [s.name for a in self.records.all() for s in a.ships]
        await self.hulls.prune(in_use, out)

    def failed(self, job: Job, err: DeployError) -> str:
        """The deploy's outcome when a stage failed: recorded, and said with who keeps serving."""
        app, ship = job.app, job.ship
        self.record_outcome(app, job.cmd.deploy, f"failed at {err.stage}", job.ms())
        serving = f"; {app.live} keeps serving" if app.live else ""
        log = str(self.config.ship_dir(ship.name) / "setup.log") if ship else None
        job.emit(ev.DeployFailed, f"{err}{serving}", stage=err.stage, log=log)
        return FAILED_OUTCOME
