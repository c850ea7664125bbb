"""One deploy in flight, and what every stage shares: its events and its errors."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, replace
from typing import Any

import aiohttp

from hyperdrive.buildpacks import BuildPlan
from hyperdrive.errors import DeployError, HyperdriveError
from hyperdrive.headquarters.orders import Orders
from hyperdrive.masking import Masker
from hyperdrive.pipeline import events as ev
from hyperdrive.pipeline.bus import Context
from hyperdrive.pipeline.commands import Deploy
from hyperdrive.pipeline.fleet import Fleet
from hyperdrive.pipeline.model import App, Records, Ship
from hyperdrive.pipeline.ports import Clock


@dataclass(frozen=True)
class Stamped:
    """Emits through `ctx` with the deploy id filled in: hull events join the deploy's story."""

    ctx: Context
    deploy: str

    def emit(self, event: ev.Event) -> None:
        self.ctx.emit(event if event.deploy else replace(event, deploy=self.deploy))


@dataclass
class Job:
    """One deploy in flight: what it was asked, where it reports, and the ship it builds."""

    cmd: Deploy
    ctx: Context
    app: App
    orders: Orders
    clock: Clock
    started: float
    ship: Ship | None = None
    init_pid: int | None = None  # the ship's init, read while its app was being started
    plan: BuildPlan | None = None  # what the exported tree asks for, once read (assemble)
    masker: Masker | None = None  # of the env in the ship's scripts, once they are written

    @property
    def built(self) -> Ship:
        """The job's ship, once it has one (every stage after the plan)."""
        assert self.ship is not None, "a stage ran before the job had a ship"
        return self.ship

    def ms(self, since: float | None = None) -> int:
        """Milliseconds since `since` (default: the job's start)."""
        return int((self.clock.monotonic() - (self.started if since is None else since)) * 1000)

    def now(self) -> float:
        return self.clock.monotonic()

    def emit(self, event: type[ev.Event], message: str, **fields: object) -> None:
        """Emit `event` filled with this job's app, sha, ship and deploy id."""
        ship = self.ship
        base: dict[str, object] = {
            "app": self.cmd.app,
            "deploy": self.cmd.deploy,
            "sha": ship.sha if ship else self.cmd.sha,
            "ship": ship.name if ship else None,
        }
        self.ctx.emit(event(**{**base, **fields, "message": message}))  # type: ignore[arg-type]


async def together(*steps: Awaitable[Any]) -> list[Any]:
    """Run independent steps of a stage at once; each runs to its end, then the first error
    is raised as it is (a TaskGroup would cancel the others and wrap it in a group); else
    their results, in order."""
    results = await asyncio.gather(*steps, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


@contextlib.asynccontextmanager
async def stage(name: str) -> AsyncIterator[None]:
    """Turn any error a user can cause inside a stage into a DeployError naming the stage."""
    try:
        yield
    except DeployError:
        raise
    except (HyperdriveError, OSError, aiohttp.ClientError) as err:
        raise DeployError(name, str(err) or type(err).__name__) from err


def open_job(cmd: Deploy, ctx: Context, records: Records, fleet: Fleet, clock: Clock) -> Job:
    """A job for `cmd` with the app's record and the orders in force right now."""
    app, orders = records.get(cmd.app), fleet.orders(cmd.app)
    return Job(cmd, ctx, app, orders, clock, clock.monotonic())
