"""The other commands, each a thin handler over the deploy's stages: Rollback, Retire,
Assemble (build a ship, do not launch it), Launch (put an assembled ship in service) and
AssembleHulls (`hd assemble`: a new version of every hull)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from hyperdrive.errors import DeployError, HyperdriveError
from hyperdrive.pipeline import events as ev
from hyperdrive.pipeline.build import Builder
from hyperdrive.pipeline.bus import FAILED, FINISHED, Context
from hyperdrive.pipeline.commands import Assemble, AssembleHulls, Deploy, Launch, Retire, Rollback
from hyperdrive.pipeline.deploy import IGNORED, Deployer
from hyperdrive.pipeline.golive import GoLive, RouteTable
from hyperdrive.pipeline.hulls import Hulls
from hyperdrive.pipeline.job import Job, Stamped, open_job
from hyperdrive.pipeline.model import STOPPED
from hyperdrive.pipeline.ports import ContainerRuntime, Proxy
from hyperdrive.pipeline.ships import Ships
from hyperdrive.pipeline.start import Starter


@dataclass(kw_only=True)
class Handlers:
    """Rollback, Retire, Assemble, Launch and AssembleHulls over the deploy's parts."""

    deployer: Deployer
    routes: RouteTable
    proxy: Proxy
    runtime: ContainerRuntime
    hulls: Hulls

    @property
    def ships(self) -> Ships:
        return self.deployer.ships

    @property
    def starter(self) -> Starter:
        return self.deployer.starter

    @property
    def builder(self) -> Builder:
        return self.deployer.builder

    @property
    def golive(self) -> GoLive:
        return self.deployer.golive

    def _job(self, cmd: Deploy, ctx: Context) -> Job:
        d = self.deployer
        return open_job(cmd, ctx, d.records, d.fleet, d.clock)

    async def retire(self, cmd: Retire, ctx: Context) -> str:
        """Take the app out of service; a deleted branch retires it only if it is the one
        the app deploys."""
        if cmd.ref is not None:
            orders = self.deployer.fleet.orders(cmd.app)
            branch = await self.deployer.planner.branch(cmd.app, orders)
            if cmd.ref != f"refs/heads/{branch}":
                message = f"{cmd.ref} deleted; {cmd.app} deploys {branch}"
                ctx.emit(
                    ev.TriggerIgnored(
                        app=cmd.app, deploy=cmd.deploy, kind="retire", message=message
                    )
                )
                return IGNORED
        previews = [a.name for a in self.deployer.records.all() if a.preview_of == cmd.app]
        for name in [cmd.app, *previews]:  # an app's previews go with it
            await self._take_down(name)
            why = (cmd.reason or "asked to") if name == cmd.app else f"{cmd.app} was retired"
            ctx.emit(ev.AppRetired(app=name, deploy=cmd.deploy, message=f"{name} retired: {why}"))
        return FINISHED

    async def _take_down(self, name: str) -> None:
        """Routes removed, traffic unpointed, ships destroyed, the record dropped."""
        records = self.deployer.records
        await self.golive.after.settle(name)
        app = records.get(name)
        if app.routed:
            app.routed = False
            await self.routes.apply()
            with contextlib.suppress(HyperdriveError):
                await self.proxy.unpoint(name)
        app.live = None  # stopped by us from here on: not a live ship's death (revival.py)
        for ship in list(app.ships):
            await self.ships.destroy(app, ship)
        records.drop(name)

    async def rollback(self, cmd: Rollback, ctx: Context) -> str:
        """Swap back to the newest kept ship that was healthy, health-checking it first."""
        await self.golive.after.settle(cmd.app)  # the ship a guard still holds is a target
        job = self._job(Deploy(deploy=cmd.deploy, app=cmd.app, source="rollback"), ctx)
        job.ship = self.ships.rollback_target(job.app)
        if job.ship is None:
            return self.ships.failed(
                job, DeployError("rollback", "no earlier healthy ship is kept")
            )
        try:
            await self.starter.revive(job)
        except DeployError as err:
            return self.ships.failed(job, err)
        return await self.golive.go_live(job, rolled_back=True)

    async def assemble(self, cmd: Assemble, ctx: Context) -> str:
        """Build a ship for the app and leave it stopped, ready for `hd launch`; it becomes a
        rollback target only once it has been healthy."""
        job = self._job(Deploy(deploy=cmd.deploy, app=cmd.app, sha=cmd.sha, source="cli"), ctx)
        try:
            sha = await self.deployer.planner.plan(job)
            if sha is None:  # no ref given: the plan names a commit or fails
                return IGNORED
            job.ship = self.ships.new(job.app, sha, cmd.deploy, job.orders.port)
            await self.builder.export(job)
            await self.builder.assemble(job)
            await self.builder.build(job)
            await self.runtime.stop(job.built.name, kill=True)
        except DeployError as err:
            if job.ship is not None:
                await self.ships.keep_failed(job.app, job.ship)
            return self.ships.failed(job, err)
        job.built.state, job.built.healthy = STOPPED, False
        self.deployer.records.save(job.app)
        job.emit(ev.DeployFinished, f"ship '{job.built.name}' ready: hd launch {job.built.name}")
        return FINISHED

    async def launch(self, cmd: Launch, ctx: Context) -> str:
        """Put an assembled ship in service: start, health, swap (in its app's lane)."""
        app = cmd.app or self.ships.owner(cmd.ship)
        if app is None:
            ctx.emit(
                ev.DeployFailed(
                    deploy=cmd.deploy, stage="launch", message=f"no ship named {cmd.ship}"
                )
            )
            return FAILED
        job = self._job(Deploy(deploy=cmd.deploy, app=app, source="launch"), ctx)
        job.ship = job.app.ship(cmd.ship)
        if job.ship is None:
            return self.ships.failed(job, DeployError("launch", f"{app} has no ship {cmd.ship}"))
        try:
            await self.starter.revive(job)
        except DeployError as err:
            return self.ships.failed(job, err)
        return await self.golive.go_live(job)

    async def assemble_hulls(self, cmd: AssembleHulls, ctx: Context) -> str:
        """`hd assemble`: a new version of every hull kind built here before, the default and
        those orders name (not every kind Hyperdrive knows); ships keep the hull they came from."""
        for kind in self.hulls.in_use(self.deployer.fleet.hulls()):
            try:
                await self.hulls.assemble(kind, Stamped(ctx, cmd.deploy), fresh=cmd.fresh)
            except HyperdriveError as err:
                message = f"hull {kind}: {err}"
                ctx.emit(ev.DeployFailed(deploy=cmd.deploy, stage="assemble", message=message))
                return FAILED
        ctx.emit(ev.DeployFinished(deploy=cmd.deploy, message="hulls assembled"))
        return FINISHED
