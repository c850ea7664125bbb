"""The plan stage: which commit a trigger deploys, or that it deploys nothing (another branch)."""

from __future__ import annotations

from hyperdrive.errors import DeployError
from hyperdrive.gitremote import shown_url
from hyperdrive.headquarters.orders import Orders
from hyperdrive.names import check_sha
from hyperdrive.pipeline import events as ev
from hyperdrive.pipeline.fleet import Fleet
from hyperdrive.pipeline.job import Job, stage
from hyperdrive.pipeline.ports import Git


def not_deployed(app: str, ref: str, branch: str, orders: Orders) -> str:
    """What a pusher of another branch is told: which branch deploys, and how to change it."""
    name = ref.removeprefix("refs/heads/").removeprefix("refs/tags/")
    if orders.branch:
        why = "as its orders say"
    elif orders.hosted_here:
        why = "its default branch: the first branch pushed"
    else:
        why = f"the default branch of {shown_url(orders.autodeploy_url or '')}"
    how = f"name it in headquarters' {app}/orders: `branch {name}`"
    if orders.branch:
        how = f"name it in headquarters' {app}/orders instead of {branch}"
    if orders.hosted_here and ref.startswith("refs/heads/"):
        how = f"push it as {branch} (`git push hyperdrive {name}:{branch}`) or {how}"
    stored = "stored" if orders.hosted_here else "pushed"
    return f"{name} {stored}, not deployed: {app} deploys {branch} ({why}); to deploy {name}, {how}"


class Planner:
    """Orders + git: the branch an app follows and the commit at its tip."""

    def __init__(self, git: Git, fleet: Fleet) -> None:
        self.git = git
        self.fleet = fleet

    async def branch(self, app: str, orders: Orders) -> str:
        """The branch (or tag) the app deploys: its orders', else its repo's default branch."""
        if orders.branch:
            return orders.branch
        if orders.autodeploy_url:
            return await self.git.remote_default_branch(app, orders.autodeploy_url)
        return await self.git.default_branch(app)

    async def plan(self, job: Job) -> str | None:
        """Which commit to deploy; None when the push is not for the deploy branch."""
        cmd, orders, t0 = job.cmd, job.orders, job.now()
        rejected = self.fleet.rejected(cmd.app)
        if rejected and not self.fleet.ordered(cmd.app):
            raise DeployError("plan", f"orders rejected: {rejected}")
        async with stage("plan"):
            if cmd.sha is not None:
                check_sha(cmd.sha)
            branch = await self.branch(self.fleet.repo(cmd.app), orders)
        followed = (f"refs/heads/{branch}", f"refs/tags/{branch}")  # orders may name a tag
        if cmd.ref is not None and cmd.ref not in followed:
            job.emit(ev.TriggerIgnored, not_deployed(cmd.app, cmd.ref, branch, orders), kind="push")
            return None
        sha = await self._commit(job, cmd.ref or branch, branch)
        job.emit(
            ev.StageFinished, f"{branch} is at {sha[:7]}", stage="plan", ms=job.ms(t0), sha=sha
        )
        return sha

    async def _commit(self, job: Job, ref: str, branch: str) -> str:
        """The commit to deploy: the branch tip for a webhook (its payload only notifies)."""
        cmd, orders = job.cmd, job.orders
        notified = cmd.source.startswith("webhook")
        async with stage("fetch"):
            sha = None if notified else cmd.sha
            if orders.autodeploy_url is not None:
                t0 = job.now()
                fetched = await self.git.fetch(self.fleet.repo(cmd.app), orders.autodeploy_url, ref)
                sha = sha or fetched
                message = f"fetched {branch} of {shown_url(orders.autodeploy_url)}"
                job.emit(ev.StageFinished, message, stage="fetch", ms=job.ms(t0), sha=sha)
            sha = sha or await self.git.resolve(self.fleet.repo(cmd.app), ref)
        if sha is None:
            raise DeployError("plan", f"{cmd.app} has no commits on {branch} yet")
        if notified and cmd.sha is not None and cmd.sha != sha:
            tip = sha[:7]
            said = f"the delivery named {cmd.sha[:7]}, {branch} is at {tip}: deploying {tip}"
            job.emit(ev.StageFinished, said, stage="plan", sha=sha)
        return sha
