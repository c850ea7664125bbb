"""The deploy pipeline: plan → fetch → assemble → build → start → health → swap → drain → retire.

Each stage is a small step that emits its event with its duration. Until the swap nothing
a client can reach has changed, so any failure (or a newer push) leaves the old ship serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import shutil
import socket
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address
from pathlib import Path

import aiohttp

from hyperdrive.buildpacks import BuildPlan, build_timeout, detect
from hyperdrive.config import Config
from hyperdrive.errors import AttachTimedOut, DeployError, HyperdriveError, InvalidName, ProxyError
from hyperdrive.headquarters import Orders
from hyperdrive.lxc_async import Mount, ShipSpec
from hyperdrive.names import check_sha, ship_name
from hyperdrive.network import IpAllocator, bridge_address, enable_forwarding, ensure_bridge
from hyperdrive.nginx_reload import AppRoute, Routes
from hyperdrive.pipeline import events as ev
from hyperdrive.pipeline.bus import FAILED, FINISHED, Context
from hyperdrive.pipeline.commands import Assemble, AssembleHulls, Deploy, Launch, Retire, Rollback
from hyperdrive.pipeline.fleet import Fleet
from hyperdrive.pipeline.health import (
    KILLED_FOR_MEMORY,
    listening,
    oom_kills,
    wait_healthy,
    watch_healthy,
)
from hyperdrive.pipeline.hulls import BUILDERS, Hulls
from hyperdrive.pipeline.model import BUILDING, HEALTHY, LIVE, STOPPED, App, Records, Ship
from hyperdrive.pipeline.model import FAILED as SHIP_FAILED
from hyperdrive.pipeline.ports import Clock, ContainerRuntime, Git
from hyperdrive.traffic import StablePorts, Traffic

IGNORED = "ignored"
START_TIMEOUT_S = 30
LOG_CAP_BYTES = 16 * 1024 * 1024
EVENT_LINES_CAP = 5000
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Parts:
    """The adapters the pipeline drives, wired in bootstrap.py."""

    config: Config
    runtime: ContainerRuntime
    routes: Routes
    traffic: Traffic
    ports: StablePorts
    ips: IpAllocator
    repos: Git
    records: Records
    fleet: Fleet
    hulls: Hulls
    clock: Clock
    drain_s: float = 3.0
    bridge_ready: bool = field(default=False)


class SetupLog:
    """`$DATA/lxc/<ship>/setup.log` (capped) and BuildOutput events (capped) for each line."""

    def __init__(self, path: Path, emit: Callable[[str], None]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fh = open(path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115
        self._emit = emit
        self.bytes = 0
        self.lines = 0
        self.tail: deque[str] = deque(maxlen=3)

    def line(self, text: str) -> None:
        self.lines += 1
        self.tail.append(text[:300])
        if self.bytes < LOG_CAP_BYTES:
            self.bytes += len(text) + 1
            self._fh.write(text + "\n")
            if self.bytes >= LOG_CAP_BYTES:
                self._fh.write("[hyperdrive: output beyond 16 MiB is not kept]\n")
            self._fh.flush()
        if self.lines <= EVENT_LINES_CAP:
            self._emit(text)
        elif self.lines == EVENT_LINES_CAP + 1:
            self._emit(f"[hyperdrive: more output in {self.path}]")

    def close(self) -> None:
        self._fh.close()


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
    started: float
    ship: Ship | None = None

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


def not_deployed(app: str, ref: str, branch: str, orders: Orders) -> str:
    """What a pusher of another branch is told: which branch deploys, and how to change it."""
    name = ref.removeprefix("refs/heads/").removeprefix("refs/tags/")
    if orders.branch:
        why = "as its orders say"
    elif orders.hosted_here:
        why = "its default branch: the first branch pushed"
    else:
        why = f"the default branch of {orders.autodeploy_url}"
    how = f"name it in headquarters' {app}/orders: `branch {name}`"
    if orders.branch:
        how = f"name it in headquarters' {app}/orders instead of {branch}"
    if orders.hosted_here and ref.startswith("refs/heads/"):
        how = f"push it as {branch} (`git push hyperdrive {name}:{branch}`) or {how}"
    stored = "stored" if orders.hosted_here else "pushed"
    return f"{name} {stored}, not deployed: {app} deploys {branch} ({why}); to deploy {name}, {how}"


class Pipeline:
    """Command handlers for Deploy, Retire, Rollback, Assemble and Launch."""

    def __init__(self, parts: Parts) -> None:
        self.p = parts
        # routes are computed and applied under one lock: two apps going live at once must
        # not each render a config that lacks the other
        self.routes_lock = asyncio.Lock()

    # -- paths and small helpers --
    def ship_dir(self, ship: str) -> Path:
        return self.p.config.ship_dir(ship)

    def url(self, app: str) -> str:
        config = self.p.config
        if config.domain:
            return f"http://{app}.{config.domain}/"
        port = "" if config.http_port == 80 else f":{config.http_port}"
        return f"http://{socket.gethostname()}{port}/{app}/"

    def _ms(self, t0: float) -> int:
        return int((self.p.clock.monotonic() - t0) * 1000)

    async def _ensure_bridge(self) -> str:
        if not self.p.bridge_ready:
            await ensure_bridge(self.p.config.name, self.p.config.subnet)
            enable_forwarding()
            await self.p.traffic.ensure_table()
            self.p.bridge_ready = True
        return str(bridge_address(self.p.config.subnet))

    @contextlib.asynccontextmanager
    async def _stage(self, stage: str) -> AsyncIterator[None]:
        """Turn any error a user can cause inside a stage into a DeployError naming the stage."""
        try:
            yield
        except DeployError:
            raise
        except (HyperdriveError, OSError, aiohttp.ClientError) as err:
            raise DeployError(stage, str(err) or type(err).__name__) from err

    def _job(self, cmd: Deploy, ctx: Context) -> Job:
        app = self.p.records.get(cmd.app)
        return Job(cmd, ctx, app, self.p.fleet.orders(cmd.app), self.p.clock.monotonic())

    # -- Deploy --
    async def deploy(self, cmd: Deploy, ctx: Context) -> str:
        job = self._job(cmd, ctx)
        job.emit(ev.DeployStarted, f"deploy of {cmd.app} started ({cmd.source})")
        try:
            sha = await self._plan(job)
        except DeployError as err:
            return self._failed(job, err)
        if sha is None:
            return IGNORED
        live = job.app.live_ship
        if live is not None and live.sha == sha and cmd.source != "hq":
            job.ship = live
            job.emit(
                ev.DeployFinished,
                f"{sha[:7]} is already live on {live.name}",
                url=self.url(cmd.app),
                ms=0,
            )
            return FINISHED
        job.ship = self._new_ship(job.app, sha, cmd.deploy, job.orders.port)
        try:
            await self._launch_new(job)
        except asyncio.CancelledError:
            await self._scrap(job.app, job.ship)
            raise
        except DeployError as err:
            await self._keep_failed(job.app, job.ship)
            return self._failed(job, err)
        return await self._go_live(job)

    async def _plan(self, job: Job) -> str | None:
        """Which commit to deploy; None when the push is not for the deploy branch."""
        cmd, orders = job.cmd, job.orders
        rejected = self.p.fleet.rejected(cmd.app)
        if rejected and not self.p.fleet.ordered(cmd.app):
            raise DeployError("plan", f"orders rejected: {rejected}")
        async with self._stage("plan"):
            if cmd.sha is not None:
                check_sha(cmd.sha)
            branch = orders.branch or await self._default_branch(cmd.app, orders)
        followed = (f"refs/heads/{branch}", f"refs/tags/{branch}")  # orders may name a tag
        if cmd.ref is not None and cmd.ref not in followed:
            job.emit(ev.TriggerIgnored, not_deployed(cmd.app, cmd.ref, branch, orders), kind="push")
            return None
        ref = cmd.ref or branch
        async with self._stage("fetch"):
            sha = cmd.sha
            if orders.autodeploy_url is not None:
                t0 = self.p.clock.monotonic()
                fetched = await self.p.repos.fetch(cmd.app, orders.autodeploy_url, ref)
                sha = sha or fetched
                job.emit(
                    ev.StageFinished,
                    f"fetched {branch} of {orders.autodeploy_url}",
                    stage="fetch",
                    ms=self._ms(t0),
                    sha=sha,
                )
            sha = sha or await self.p.repos.resolve(cmd.app, ref)
        if sha is None:
            raise DeployError("plan", f"{cmd.app} has no commits on {branch} yet")
        return sha

    async def _default_branch(self, app: str, orders: Orders) -> str:
        if orders.autodeploy_url:
            return await self.p.repos.remote_default_branch(app, orders.autodeploy_url)
        return await self.p.repos.default_branch(app)

    def _new_ship(self, app: App, sha: str, deploy: str, port: int) -> Ship:
        """`<name>-<app>-<sha7>`; a redeploy of the same commit gets `-2`, `-3`, …"""
        base = ship_name(self.p.config.name, app.name, sha)
        taken = {s.name for s in app.ships}
        name = next(n for n in [base, *(f"{base}-{i}" for i in range(2, 10_000))] if n not in taken)
        return Ship(name, sha, ip="", port=port, created=self.p.clock.time(), deploy=deploy)

    async def _launch_new(self, job: Job) -> None:
        """fetch → assemble → build → start → health, on a ship nobody is sent to yet."""
        assert job.ship is not None
        job.app.upsert(job.ship)
        self.p.records.save(job.app)
        await self._export(job)
        await self._assemble(job)
        plan = await self._build(job)
        await self._start(job, plan)
        await self._health(job)

    async def _export(self, job: Job) -> None:
        assert job.ship is not None
        t0, ship = self.p.clock.monotonic(), job.ship
        target = self.ship_dir(ship.name) / "app"
        shutil.rmtree(target, ignore_errors=True)
        async with self._stage("fetch"):
            remote = not job.orders.hosted_here
            await self.p.repos.export(job.cmd.app, ship.sha, target, remote=remote)
        job.emit(ev.StageFinished, f"exported {ship.sha[:7]}", stage="export", ms=self._ms(t0))

    async def _assemble(self, job: Job) -> None:
        assert job.ship is not None
        p, t0, ship = self.p, self.p.clock.monotonic(), job.ship
        kind = job.orders.hull or p.config.hull
        async with self._stage("assemble"):
            gateway = await self._ensure_bridge()
            hull = await p.hulls.ensure(kind, Stamped(job.ctx, job.cmd.deploy))
            ship.ip = str(p.ips.allocate(ship.name))
            await p.runtime.snapshot(hull, ship.name)
            await p.runtime.write_config(ship.name, self._spec(ship, job.orders, gateway))
            await p.runtime.start(ship.name)
        job.emit(
            ev.ShipAssembled,
            f"ship '{ship.name}' assembled from hull '{hull}' at {ship.ip}",
            ms=self._ms(t0),
        )

    def _spec(self, ship: Ship, orders: Orders, gateway: str) -> ShipSpec:
        folder = self.ship_dir(ship.name)
        cache = self.p.config.cache_dir(orders.app)
        for path in (folder / "run", cache):
            path.mkdir(parents=True, exist_ok=True)
        mounts = (
            Mount(folder / "app", "/app", readonly=False),
            Mount(folder / "run", "/hyperdrive", readonly=False),
            Mount(cache, "/var/cache/hyperdrive", readonly=False),
        )
        return ShipSpec(
            ip=IPv4Address(ship.ip),
            gateway=IPv4Address(gateway),
            prefixlen=self.p.config.subnet.prefixlen,
            bridge=self.p.config.bridge,
            hostname=orders.app,
            memory_bytes=orders.memory_bytes,
            cpus=orders.cpus,
            mounts=mounts,
        )

    def _write_scripts(self, ship: Ship, plan: BuildPlan, env: dict[str, str]) -> None:
        """/hyperdrive/env, build and start: what runs inside the ship, written by us."""
        run = self.ship_dir(ship.name) / "run"
        path = ":".join(filter(None, (plan.path_prefix, SYSTEM_PATH)))
        env = {
            **plan.env,
            **env,
            "PATH": path,
            "HOME": "/app",
            "PIP_CACHE_DIR": "/var/cache/hyperdrive/pip",
            "npm_config_cache": "/var/cache/hyperdrive/npm",
        }
        lines = [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())]
        (run / "env").write_text("\n".join(lines) + "\n")
        (run / "env").chmod(0o600)
        build = plan.build or "true"
        (run / "build").write_text(f"#!/bin/sh\n. /hyperdrive/env\ncd /app\n{build}\n")
        (run / "web").write_text(f". /hyperdrive/env\ncd /app\n{plan.start}\n")
        (run / "start").write_text(_START)

    async def _build(self, job: Job) -> BuildPlan:
        assert job.ship is not None
        p, t0, ship = self.p, self.p.clock.monotonic(), job.ship
        async with self._stage("build"):
            plan = detect(self.ship_dir(ship.name) / "app")
            self._write_scripts(ship, plan, p.fleet.env(job.cmd.app))
        if plan.build is None:
            return plan
        log = SetupLog(
            self.ship_dir(ship.name) / "setup.log", lambda text: job.emit(ev.BuildOutput, text)
        )
        try:
            code = await self._run_build(job, log)
        finally:
            log.close()
        if code != 0:
            why = f"{plan.kind} build exited {code}"
            if code == 137 and await self._oom_kills(job) > 0:
                why = f"{plan.kind} build was killed for memory ({_memory(job.orders)})"
            job.emit(ev.BuildFailed, why, log=str(log.path))
            output = " | ".join(log.tail)
            raise DeployError("build", f"{why}: {output}; see {log.path}")
        job.emit(ev.ShipBuilt, f"{plan.kind} build completed", ms=self._ms(t0))
        return plan

    async def _run_build(self, job: Job, log: SetupLog) -> int:
        """/hyperdrive/build in the ship, killed after BUILD_TIMEOUT (orders' env) seconds."""
        assert job.ship is not None
        async with self._stage("build"):
            seconds = build_timeout(self.p.fleet.env(job.cmd.app))
            try:
                argv = ["/bin/sh", "/hyperdrive/build"]
                return await self.p.runtime.attach(job.ship.name, argv, {}, seconds, log.line)
            except AttachTimedOut:
                message = f"build timed out after {seconds:g} s (BUILD_TIMEOUT); see {log.path}"
                job.emit(ev.BuildFailed, message, log=str(log.path))
                raise DeployError("build", message) from None

    async def _start(self, job: Job, plan: BuildPlan) -> None:
        assert job.ship is not None
        t0 = self.p.clock.monotonic()
        async with self._stage("start"):
            await self._run_start(job.ship)
        job.emit(ev.ShipStarted, f"started: {plan.start[:200]}", ms=self._ms(t0))

    async def _run_start(self, ship: Ship) -> None:
        argv = ["/bin/sh", "/hyperdrive/start"]
        code = await self.p.runtime.attach(ship.name, argv, {}, START_TIMEOUT_S)
        if code != 0:
            raise DeployError("start", f"the start script exited {code}")

    async def _health(self, job: Job) -> None:
        assert job.ship is not None
        t0, ship, orders = self.p.clock.monotonic(), job.ship, job.orders
        url = f"http://{ship.ip}:{ship.port}{orders.healthcheck_path}"
        problem = await wait_healthy(url, orders.healthcheck_seconds, await self._oom_watch(job))
        if problem is not None:
            message = f"{url} {problem} after {orders.healthcheck_seconds:g} s"
            if problem.startswith(KILLED_FOR_MEMORY):
                message = f"{problem} (after {self._ms(t0)} ms)"
            elif problem.startswith("did not answer"):
                message += await self._listening(ship)
            message += self._app_log_tail(ship)
            job.emit(ev.HealthCheckFailed, message, ms=self._ms(t0))
            raise DeployError("health", message)
        ship.healthy, ship.state = True, HEALTHY
        self.p.records.save(job.app)
        job.emit(ev.ShipHealthy, f"{url} answered", ms=self._ms(t0))

    async def _listening(self, ship: Ship) -> str:
        """Where the app listens instead of PORT: the commonest reason it did not answer."""
        info = await self.p.runtime.info(ship.name)
        found = listening(info.pid if info else None)
        if found is None:
            return ""
        if not found:
            return "; the app listens on no TCP port"
        if ship.port in found:
            where = ", ".join(sorted(found[ship.port]))
            return f"; the app listens on PORT {ship.port} only on {where}: listen on 0.0.0.0"
        shown = ", ".join(str(port) for port in sorted(found))
        return f"; the app listens on {shown}, not on PORT {ship.port}"

    # -- memory: the kernel's OOM kills in the ship's cgroup --
    async def _oom_kills(self, job: Job) -> int:
        assert job.ship is not None
        if job.orders.memory_bytes is None:
            return 0
        info = await self.p.runtime.info(job.ship.name)
        return oom_kills(info.pid if info else None)

    async def _oom_watch(self, job: Job) -> Callable[[], str | None] | None:
        """For the health wait: a check that says so once the app was killed for memory."""
        assert job.ship is not None
        if job.orders.memory_bytes is None:
            return None
        info = await self.p.runtime.info(job.ship.name)
        pid = info.pid if info else None
        before, limit = oom_kills(pid), _memory(job.orders)

        def killed() -> str | None:
            if oom_kills(pid) > before:
                return f"{KILLED_FOR_MEMORY}: it needs more than the ordered memory {limit}"
            return None

        return killed

    def _app_log_tail(self, ship: Ship) -> str:
        log = self.ship_dir(ship.name) / "run" / "app.log"
        try:
            lines = log.read_text(errors="replace").splitlines()[-5:]
        except OSError:
            return ""
        return "; app output: " + " | ".join(lines) if lines else ""

    # -- swap, drain, retire --
    async def _go_live(self, job: Job) -> str:
        assert job.ship is not None
        job.ctx.point_of_no_return()
        app, ship, previous = job.app, job.ship, job.app.live_ship
        try:
            await self._swap(job, previous)
        except DeployError as err:
            await self._keep_failed(app, ship)
            return self._failed(job, err)
        ship.state = LIVE
        app.live, app.since = ship.name, self.p.clock.time()
        took = self._ms(job.started)
        app.last_deploy = {
            "deploy": job.cmd.deploy,
            "result": "finished",
            "ms": took,
            "at": self.p.clock.time(),
        }
        self.p.records.save(app)
        url = self.url(app.name)
        job.emit(ev.DeployFinished, f"{app.name} {ship.sha[:7]} is live at {url}", url=url, ms=took)
        if previous is not None and previous.name != ship.name:
            await self._drain(job, previous)
        await self._retire_old(job)
        return FINISHED

    def routes(self, with_app: str | None = None) -> list[AppRoute]:
        """Every routed app (plus `with_app`) as nginx routes to its stable address.

        Only `with_app` is rendered from its orders; the others keep the route nginx last
        accepted for them, so new orders (a taken servername…) fail only their own app's deploy.
        """
        p = self.p
        names = {a.name for a in p.records.all() if a.routed} | ({with_app} if with_app else set())
        return [self._route(name, fresh=name == with_app) for name in sorted(names)]

    def _route(self, name: str, fresh: bool) -> AppRoute:
        p, kept = self.p, self.p.records.get(name).route
        if fresh or not kept:
            orders = p.fleet.orders(name)
            kept = {
                "servernames": list(orders.servernames),
                "publish_port": orders.publish_port,
                "check_path": orders.healthcheck_path,
            }
        return AppRoute(
            name,
            str(bridge_address(p.config.subnet)),
            p.ports.port(name),
            tuple(kept["servernames"]),
            kept["publish_port"],
            kept["check_path"],
        )

    async def apply_routes(self, with_app: str | None = None) -> None:
        """Render and apply the routes; `with_app`'s route (and override) is the one tried."""
        async with self.routes_lock:
            routes = self.routes(with_app)
            await self.p.routes.apply(routes, fresh={with_app} if with_app else set())
            for route in routes:
                if route.app == with_app:
                    app = self.p.records.get(with_app)
                    app.routed = True
                    app.route = {
                        "servernames": list(route.servernames),
                        "publish_port": route.publish_port,
                        "check_path": route.check_path,
                    }

    async def _swap(self, job: Job, previous: Ship | None) -> None:
        assert job.ship is not None
        p, t0, app, ship = self.p, self.p.clock.monotonic(), job.app, job.ship
        stable = p.ports.port(app.name)
        # nginx verifies a route through the stable address: a new app's must already lead to
        # its ship; a live app's still leads to the old one, so a refused route serves nothing new
        first = previous is None or not app.routed
        if first:
            await self._point(stable, ship)
        try:
            await self.apply_routes(with_app=app.name)
        except (ProxyError, InvalidName) as err:
            if first:
                await self._point_back(previous, stable)
            job.emit(ev.NginxConfigRejected, str(err))
            raise DeployError("swap", f"nginx refused the new routes: {err}") from err
        if not first:
            await self._point(stable, ship)
        bridge = bridge_address(p.config.subnet)
        problem = await wait_healthy(f"http://{bridge}:{stable}{job.orders.healthcheck_path}", 5)
        if problem is not None:
            await self._point_back(previous, stable)
            raise DeployError("swap", f"the new ship stopped answering after the swap: {problem}")
        job.emit(
            ev.TrafficSwapped,
            f"traffic for {app.name} now goes to {ship.name}",
            previous=previous.name if previous else None,
            ms=self._ms(t0),
        )

    async def _point(self, stable: int, ship: Ship) -> None:
        async with self._stage("swap"):
            await self.p.traffic.point(stable, ship.ip, ship.port)

    async def _point_back(self, previous: Ship | None, stable: int) -> None:
        with contextlib.suppress(HyperdriveError):
            if previous is not None:
                await self.p.traffic.point(stable, previous.ip, previous.port)
            else:
                await self.p.traffic.remove(stable)

    async def _drain(self, job: Job, old: Ship) -> None:
        """Old workers finish in-flight requests (conntrack keeps them on the old ship) while the
        new ship is watched; if it stops answering meanwhile, the old one takes traffic back."""
        stable = f"{bridge_address(self.p.config.subnet)}:{self.p.ports.port(job.app.name)}"
        problem = await watch_healthy(
            f"http://{stable}{job.orders.healthcheck_path}", self.p.drain_s
        )
        if problem is not None:
            await self._fall_back(job, old, problem)
            return
        with contextlib.suppress(HyperdriveError):
            await self.p.runtime.stop(old.name, kill=True)
        old.state = STOPPED
        self.p.records.save(job.app)
        job.emit(
            ev.ShipDrained,
            f"ship '{old.name}' drained and stopped, kept for rollback",
            ship=old.name,
            sha=old.sha,
        )

    async def _fall_back(self, job: Job, old: Ship, problem: str) -> None:
        """The new ship died within the drain: the old one, still running, serves again."""
        assert job.ship is not None
        app, new = job.app, job.ship
        await self.p.traffic.point(self.p.ports.port(app.name), old.ip, old.port)
        app.live, app.since, old.state, new.healthy = old.name, self.p.clock.time(), LIVE, False
        await self._keep_failed(app, new)
        app.last_deploy = {
            "deploy": job.cmd.deploy,
            "result": "rolled back: the new ship stopped answering",
            "at": self.p.clock.time(),
        }
        self.p.records.save(app)
        job.emit(
            ev.RolledBack,
            f"'{new.name}' stopped answering within {self.p.drain_s:g} s of the swap ({problem}); "
            f"traffic is back on '{old.name}' ({old.sha[:7]}){self._app_log_tail(new)}",
            ship=old.name,
            sha=old.sha,
        )

    async def _retire_old(self, job: Job) -> None:
        """Keep HYPERDRIVE_KEEP_SHIPS stopped ships; destroy the older ones."""
        app = job.app
        kept = [s for s in app.ships if s.name != app.live and s.state != BUILDING]
        for ship in kept[: max(0, len(kept) - self.p.config.keep_ships)]:
            await self._destroy(app, ship)
            job.emit(ev.ShipRetired, f"ship '{ship.name}' destroyed", ship=ship.name, sha=ship.sha)
        self.p.records.save(app)
        # hull versions that are not current and that no ship is left on
        in_use = [s.name for a in self.p.records.all() for s in a.ships]
        await self.p.hulls.prune(in_use, job.ctx)

    async def _destroy(self, app: App, ship: Ship) -> None:
        with contextlib.suppress(HyperdriveError):
            await self.p.runtime.destroy(ship.name)
        self.p.ips.release(ship.name)
        shutil.rmtree(self.ship_dir(ship.name), ignore_errors=True)
        app.forget(ship.name)

    async def _scrap(self, app: App, ship: Ship) -> None:
        """A superseded deploy: its ship is of no further use."""
        await asyncio.shield(self._destroy(app, ship))
        self.p.records.save(app)

    async def _keep_failed(self, app: App, ship: Ship) -> None:
        """A failed ship is stopped and kept for inspection (counted against KEEP_SHIPS); one
        whose container was never made (lxc-copy failed) is forgotten, its setup.log kept."""
        if not await self.p.runtime.exists(ship.name):
            self.p.ips.release(ship.name)
            app.forget(ship.name)
            self.p.records.save(app)
            return
        with contextlib.suppress(HyperdriveError):
            await self.p.runtime.stop(ship.name, kill=True)
        ship.state = SHIP_FAILED
        self.p.records.save(app)

    def _failed(self, job: Job, err: DeployError) -> str:
        app, ship = job.app, job.ship
        app.last_deploy = {
            "deploy": job.cmd.deploy,
            "result": f"failed at {err.stage}",
            "at": self.p.clock.time(),
        }
        self.p.records.save(app)
        serving = f"; {app.live} keeps serving" if app.live else ""
        log = str(self.ship_dir(ship.name) / "setup.log") if ship else None
        job.emit(ev.DeployFailed, f"{err}{serving}", stage=err.stage, log=log)
        return FAILED

    # -- other commands --
    async def retire(self, cmd: Retire, ctx: Context) -> str:
        p = self.p
        if cmd.ref is not None:
            orders = p.fleet.orders(cmd.app)
            branch = orders.branch or await self._default_branch(cmd.app, orders)
            if cmd.ref != f"refs/heads/{branch}":
                message = f"{cmd.ref} deleted; {cmd.app} deploys {branch}"
                ctx.emit(
                    ev.TriggerIgnored(
                        app=cmd.app, deploy=cmd.deploy, kind="retire", message=message
                    )
                )
                return IGNORED
        app = p.records.get(cmd.app)
        if app.routed:
            app.routed = False
            await self.apply_routes()
            with contextlib.suppress(HyperdriveError):
                await p.traffic.remove(p.ports.port(cmd.app))
        for ship in list(app.ships):
            await self._destroy(app, ship)
        p.records.drop(cmd.app)
        ctx.emit(
            ev.AppRetired(
                app=cmd.app,
                deploy=cmd.deploy,
                message=f"{cmd.app} retired: {cmd.reason or 'asked to'}",
            )
        )
        return FINISHED

    async def rollback(self, cmd: Rollback, ctx: Context) -> str:
        """Swap back to the newest kept ship that was healthy, health-checking it first."""
        job = self._job(Deploy(deploy=cmd.deploy, app=cmd.app, source="rollback"), ctx)
        candidates = [s for s in job.app.ships if s.healthy and s.name != job.app.live]
        if not candidates:
            return self._failed(job, DeployError("rollback", "no earlier healthy ship is kept"))
        job.ship = candidates[-1]
        try:
            await self._revive(job)
        except DeployError as err:
            return self._failed(job, err)
        result = await self._go_live(job)
        if result == FINISHED:
            job.emit(
                ev.RolledBack,
                f"{cmd.app} rolled back to {job.ship.sha[:7]}",
                ms=self._ms(job.started),
            )
        return result

    async def _revive(self, job: Job) -> None:
        """Start a kept ship again (container and app) and health-check it."""
        assert job.ship is not None
        info = await self.p.runtime.info(job.ship.name)
        async with self._stage("start"):
            if info is None or info.state != "RUNNING":
                await self._ensure_bridge()
                await self.p.runtime.start(job.ship.name)
            await self._run_start(job.ship)
        await self._health(job)

    async def assemble(self, cmd: Assemble, ctx: Context) -> str:
        """Build a ship for the app and leave it stopped, ready for `hd launch`."""
        job = self._job(Deploy(deploy=cmd.deploy, app=cmd.app, sha=cmd.sha, source="cli"), ctx)
        try:
            sha = await self._plan(job)
            assert sha is not None
            job.ship = self._new_ship(job.app, sha, cmd.deploy, job.orders.port)
            job.app.upsert(job.ship)
            await self._export(job)
            await self._assemble(job)
            await self._build(job)
            await self.p.runtime.stop(job.ship.name, kill=True)
        except DeployError as err:
            return self._failed(job, err)
        job.ship.state, job.ship.healthy = STOPPED, True
        self.p.records.save(job.app)
        job.emit(ev.DeployFinished, f"ship '{job.ship.name}' ready: hd launch {job.ship.name}")
        return FINISHED

    async def assemble_hulls(self, cmd: AssembleHulls, ctx: Context) -> str:
        """`hd assemble`: a new version of every hull; ships keep the one they came from."""
        for kind in BUILDERS:
            try:
                await self.p.hulls.assemble(kind, Stamped(ctx, cmd.deploy), fresh=cmd.fresh)
            except HyperdriveError as err:
                ctx.emit(
                    ev.DeployFailed(
                        deploy=cmd.deploy, stage="assemble", message=f"hull {kind}: {err}"
                    )
                )
                return FAILED
        ctx.emit(ev.DeployFinished(deploy=cmd.deploy, message="hulls assembled"))
        return FINISHED

    async def launch(self, cmd: Launch, ctx: Context) -> str:
        """Put an assembled ship in service: start, health, swap."""
        app = next((a for a in self.p.records.all() if a.ship(cmd.ship)), None)
        if app is None:
            raise DeployError("launch", f"no ship named {cmd.ship}")
        job = self._job(Deploy(deploy=cmd.deploy, app=app.name, source="launch"), ctx)
        job.ship = app.ship(cmd.ship)
        try:
            await self._revive(job)
        except DeployError as err:
            return self._failed(job, err)
        return await self._go_live(job)


_START = """#!/bin/sh
# Written by Hyperdrive: runs /hyperdrive/web in the background and restarts it when it exits.
. /hyperdrive/env
cd /app
/bin/sh -c 'trap "" HUP; while :; do /bin/sh /hyperdrive/web; echo "[hyperdrive] app exited $?"; \\
  sleep 1; done' </dev/null >>/hyperdrive/app.log 2>&1 &
"""


def _memory(orders: Orders) -> str:
    size = orders.memory_bytes or 0
    return f"{size // (1024 * 1024)}M" if size % (1024 * 1024) == 0 else f"{size} bytes"
