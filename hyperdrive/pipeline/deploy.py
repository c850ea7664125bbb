"""A deploy, stage by stage: plan → export → assemble → build → start → health → swap → drain.

Each stage emits its event with its duration. Until the swap nothing a client can reach has
changed, so any failure (or a newer push) leaves the old ship serving.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from hyperdrive.errors import DeployError
from hyperdrive.pipeline import events as ev
from hyperdrive.pipeline.build import Builder
from hyperdrive.pipeline.bus import FINISHED, Context, Superseded
from hyperdrive.pipeline.commands import Deploy
from hyperdrive.pipeline.fleet import Fleet
from hyperdrive.pipeline.golive import GoLive, app_url
from hyperdrive.pipeline.job import Job, open_job
from hyperdrive.pipeline.model import Records
from hyperdrive.pipeline.plan import Planner
from hyperdrive.pipeline.ports import Clock
from hyperdrive.pipeline.ships import Ships
from hyperdrive.pipeline.start import Starter

IGNORED = "ignored"


@dataclass(kw_only=True)
class Deployer:
    """The Deploy command's handler: the stage sequence, and what becomes of its ship."""

    records: Records
    fleet: Fleet
    clock: Clock
    planner: Planner
    builder: Builder
    starter: Starter
    golive: GoLive
    ships: Ships

    async def deploy(self, cmd: Deploy, ctx: Context) -> str:
        if cmd.preview_of is not None and self.fleet.previews(cmd.app) is None:
            message = f"{cmd.app} was retired before this deploy of it ran (previews max)"
            ctx.emit(
                ev.TriggerIgnored(app=cmd.app, deploy=cmd.deploy, kind="preview", message=message)
            )
            return IGNORED
        known = self.records.known(cmd.app) or cmd.app in self.fleet.names()
        job = open_job(cmd, ctx, self.records, self.fleet, self.clock)
        job.emit(ev.DeployStarted, f"deploy of {cmd.app} started ({cmd.source})")
        try:
            sha = await self.planner.plan(job)
        except DeployError as err:
            outcome = self.ships.failed(job, err)
            if not known:  # `deploy ghost`: said in the log, but no record of an app nobody made
                self.records.drop(cmd.app)
            return outcome
        if sha is None:
            if not known:  # no record of an app nobody made, nor of a preview retired since
                self.records.drop(cmd.app)
            return IGNORED
        if self._already_live(job, sha):
            return FINISHED
        job.ship = self.ships.new(job.app, sha, cmd.deploy, job.orders.port)
        try:
            await self.launch_new(job)
        except (asyncio.CancelledError, Superseded):
            await self.ships.scrap(job.app, job.built)
            raise
        except DeployError as err:
            await self.ships.keep_failed(job.app, job.built)
            return self.ships.failed(job, err)
        return await self.golive.go_live(job)

    def _already_live(self, job: Job, sha: str) -> bool:
        """A push of the commit that is live already: said, and nothing is built."""
        live = job.app.live_ship
        if live is None or live.sha != sha or job.cmd.source == "hq":
            return False
        job.ship = live
        url = app_url(self.golive.config, job.app.name)
        job.emit(ev.DeployFinished, f"{sha[:7]} is already live on {live.name}", url=url, ms=0)
        return True

    async def launch_new(self, job: Job) -> None:
        """export → assemble → build → release → start → health, on a ship nobody is sent to
        yet."""
        await self.builder.export(job)
        await self.builder.assemble(job)
        plan = await self.builder.build(job)
        await self.builder.release(job, plan)
        await self.starter.start(job, plan)
        await self.starter.health(job)
