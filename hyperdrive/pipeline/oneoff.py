"""`hd run APP -- COMMAND` (Heroku's `run`): a one-off ship made from the live one.

The one-off ship is a snapshot of the live ship's hull with a copy of its /app and its env
(so nothing it writes reaches the live ship), on an address of its own with the app's egress,
at a running ship's CPU weight; no Procfile process is started in it. The command's words are
joined with spaces and run by the ship's shell in /app (as Heroku does), bounded by
RUN_TIMEOUT_S; the ship is destroyed afterwards, whatever happened. Its name is the live
ship's with `-run<hex>`: a daemon restart destroys one left behind as an orphan.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace

from hyperdrive.config import Config
from hyperdrive.errors import HyperdriveError
from hyperdrive.pipeline.build import Builder
from hyperdrive.pipeline.fleet import Fleet
from hyperdrive.pipeline.model import RUNNING_CPU_WEIGHT, Records, Ship
from hyperdrive.pipeline.ports import ContainerRuntime, Network

RUN_TIMEOUT_S = 24 * 3600.0


def shell_line(argv: Sequence[str]) -> list[str]:
    """What runs in the one-off ship: the app's env, in /app, then the command."""
    return ["/bin/sh", "-c", f". /hyperdrive/env; cd /app; {' '.join(argv)}"]


@dataclass(kw_only=True)
class OneOff:
    config: Config
    records: Records
    runtime: ContainerRuntime
    network: Network
    builder: Builder
    fleet: Fleet

    async def run(self, app: str, argv: Sequence[str], on_line: Callable[[str], None]) -> int:
        """The command's exit status; its output line by line to `on_line`."""
        async with self.ship(app) as name:
            return await self.runtime.attach(name, shell_line(argv), {}, RUN_TIMEOUT_S, on_line)

    @contextlib.asynccontextmanager
    async def ship(self, app: str) -> AsyncIterator[str]:
        """A running one-off ship for `app`, destroyed when the block ends."""
        live = self.records.get(app).live_ship if self.records.known(app) else None
        hull = self.runtime.snapshot_source(live.name) if live else None
        if live is None or hull is None:
            raise HyperdriveError(f"{app} has no live ship to run a command beside")
        ship = Ship(f"{live.name[:50]}-run{secrets.token_hex(3)}", live.sha, "", live.port)
        try:
            await self._make(app, live, ship, hull)
            yield ship.name
        finally:
            await asyncio.shield(self._destroy(ship))

    async def _make(self, app: str, live: Ship, ship: Ship, hull: str) -> None:
        await asyncio.to_thread(self._copy, live.name, ship.name)
        ship.ip = self.network.allocate(ship.name)
        orders = self.fleet.orders(app)
        await self.network.admit(ship.ip, app, orders.egress)
        await self.runtime.snapshot(hull, ship.name)
        spec = self.builder.spec(ship, orders)
        spec = replace(spec, cpu_idle=False, cpu_weight=RUNNING_CPU_WEIGHT)
        for folder in (self.config.ship_dir(ship.name), self.config.cache_dir(app)):
            await self.runtime.hand_over(folder)
        await self.runtime.write_config(ship.name, spec)
        await self.runtime.start(ship.name)

    def _copy(self, live: str, ship: str) -> None:
        """The live ship's /app and env, copied (links kept as links, never followed)."""
        source, target = self.config.ship_dir(live), self.config.ship_dir(ship)
        shutil.copytree(source / "app", target / "app", symlinks=True)
        (target / "run").mkdir(parents=True, exist_ok=True)
        env = source / "run" / "env"
        if env.is_file() and not env.is_symlink():
            shutil.copy2(env, target / "run" / "env")

    async def _destroy(self, ship: Ship) -> None:
        with contextlib.suppress(HyperdriveError):
            await self.runtime.destroy(ship.name)
        if ship.ip:
            with contextlib.suppress(HyperdriveError):
                await self.network.dismiss(ship.ip)
            self.network.release(ship.name)
        await asyncio.to_thread(shutil.rmtree, self.config.ship_dir(ship.name), True)
