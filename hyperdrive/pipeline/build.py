"""The build stages: export the commit, assemble a ship from its hull, write what runs in it,
run the build (its output in setup.log and in BuildOutput events)."""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import shutil
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from hyperdrive.buildpacks import BuildPlan, build_timeout, detect
from hyperdrive.config import Config
from hyperdrive.errors import AttachTimedOut, DeployError, HyperdriveError
from hyperdrive.headquarters.orders import Orders
from hyperdrive.masking import Masker
from hyperdrive.pipeline import events as ev
from hyperdrive.pipeline import processes
from hyperdrive.pipeline.fleet import Fleet
from hyperdrive.pipeline.health import oom_kills
from hyperdrive.pipeline.hulls import Hulls
from hyperdrive.pipeline.job import Job, Stamped, stage, together
from hyperdrive.pipeline.model import BUILD_CPU_WEIGHT, RUNNING_CPU_WEIGHT, Mount, Ship, ShipSpec
from hyperdrive.pipeline.ports import ContainerRuntime, Git, Network, Proxy
from hyperdrive.procs import in_thread_to_its_end
from hyperdrive.runtimes import choose_hull, read_asks
from hyperdrive.space import FOR_WORK, shortage

LOG_CAP_BYTES = 16 * 1024 * 1024
EVENT_LINES_CAP = 5000
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class SetupLog:
    """`$DATA/lxc/<ship>/setup.log` (capped) and BuildOutput events (capped) for each line;
    each line is masked first (the app's secrets, hyperdrive/masking.py), before any cut."""

    def __init__(
        self, path: Path, emit: Callable[[str], None], mask: Callable[[str], str] = str
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._mask = mask
        self._fh = open(path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115
        self._emit = emit
        self.bytes = 0
        self.lines = 0
        self.tail: deque[str] = deque(maxlen=3)

    def line(self, text: str) -> None:
        text = self._mask(text)
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


def builds_nothing(plan: BuildPlan) -> bool:
    """Nothing runs in the ship before its app: it may start at a running ship's CPU weight."""
    return plan.build is None and plan.procfile.release is None


def memory(orders: Orders, config: Config) -> str:
    """The ship's memory limit as people write it, and whence: `256M ordered`."""
    if orders.memory_bytes is not None:
        return f"{_megabytes(orders.memory_bytes)} ordered"
    return f"{_megabytes(config.ship_memory_bytes)}, HYPERDRIVE_SHIP_MEMORY"


def _megabytes(size: int) -> str:
    return f"{size // (1024 * 1024)}M" if size % (1024 * 1024) == 0 else f"{size} bytes"


@dataclass(kw_only=True)
class Builder:
    """export → assemble → build, on a ship nobody is sent to yet."""

    config: Config
    runtime: ContainerRuntime
    git: Git
    network: Network
    proxy: Proxy
    hulls: Hulls
    fleet: Fleet

    async def ready(self) -> None:
        """The bridge and the traffic map exist (once per daemon; cheap after that)."""
        await self.network.ensure()
        await self.proxy.prepare()

    async def export(self, job: Job) -> None:
        t0, ship = job.now(), job.built
        if why := shortage(self.config.data, FOR_WORK):
            raise DeployError("fetch", f"nothing built: {why}")
        target = self.config.ship_dir(ship.name) / "app"
        shutil.rmtree(target, ignore_errors=True)
        async with stage("fetch"):
            remote = not job.orders.hosted_here
            await self.git.export(self.fleet.repo(job.cmd.app), ship.sha, target, remote=remote)
        job.emit(ev.StageFinished, f"exported {ship.sha[:7]}", stage="export", ms=job.ms(t0))

    async def assemble(self, job: Job) -> None:
        """A snapshot of the hull, configured and started; a newer push waits for a hull build
        under way instead of cancelling it, and this deploy is dropped after it if superseded."""
        t0, ship = job.now(), job.built
        kind = await self.hull_kind(job)
        async with stage("assemble"):
            await self.ready()
            with job.ctx.not_cancelled():
                hull = await self.hulls.ensure(kind, Stamped(job.ctx, job.cmd.deploy))
            ship.ip = self.network.allocate(ship.name)
            _, _, spec = await together(  # the ship's egress rule is in place before it can run
                self.network.admit(ship.ip, job.cmd.app, job.orders.egress),
                self.runtime.snapshot(hull, ship.name),
                self._folders(job),
            )
            await self.runtime.write_config(ship.name, spec)
            await together(self.runtime.start(ship.name), self._scripts_early(job))
        message = f"ship '{ship.name}' assembled from hull '{hull}' at {ship.ip}"
        job.emit(ev.ShipAssembled, message, ms=job.ms(t0))

    async def _folders(self, job: Job) -> ShipSpec:
        """The ship's spec and the folders it mounts, made and handed over to its root (beside
        lxc-copy: they are in $DATA, not in the container's folder)."""
        ship = job.built
        spec = self.spec(ship, job.orders, building=await self.builds(job))
        for folder in (self.config.ship_dir(ship.name), self.config.cache_dir(job.cmd.app)):
            await self.runtime.hand_over(folder)  # what the ship mounts is its root's
        return spec

    async def hull_kind(self, job: Job) -> str:
        """The hull kind whose runtime versions the app's files ask for (.python-version,
        package.json engines…): the ordered one, else the first that has them. DeployError
        before anything is built when none does."""
        asks = await asyncio.to_thread(read_asks, self.config.ship_dir(job.built.name) / "app")
        named = job.orders.hull if "hull" in job.orders.lines else None
        default = job.orders.hull or self.config.hull
        return choose_hull(asks, self.hulls.offers(), default, named)

    async def builds(self, job: Job) -> bool:
        """Will anything run in the ship before its app (a build, a release)? The plan is kept
        for the build stage; True when unsure: that stage reads the app again and says what is
        wrong with it."""
        try:
            job.plan = await asyncio.to_thread(detect, self.config.ship_dir(job.built.name) / "app")
        except DeployError:
            return True
        return not builds_nothing(job.plan)

    def spec(self, ship: Ship, orders: Orders, *, building: bool = True) -> ShipSpec:
        folder, cache = self.config.ship_dir(ship.name), self.config.cache_dir(orders.app)
        for path in (folder / "run", cache):
            path.mkdir(parents=True, exist_ok=True)
        # names resolve through the daemon's forwarder on the bridge address (shipdns.py)
        resolv = folder / "resolv.conf"
        resolv.write_text(f"nameserver {self.network.gateway}\noptions timeout:2 attempts:2\n")
        mounts = (
            Mount(folder / "app", "/app", readonly=False),
            Mount(folder / "run", "/hyperdrive", readonly=False),
            Mount(cache, "/var/cache/hyperdrive", readonly=False),
            Mount(resolv, "/etc/resolv.conf"),
        )
        return ShipSpec(
            ip=IPv4Address(ship.ip),
            gateway=IPv4Address(self.network.gateway),
            prefixlen=self.network.prefixlen,
            bridge=self.network.bridge,
            hostname=orders.app,
            memory_bytes=orders.memory_bytes or self.config.ship_memory_bytes,
            cpus=orders.cpus,
            mounts=mounts,
            pids=self.config.ship_pids,
            # a build runs on spare CPU time only (idle), else at a tenth of the normal weight;
            # Starter.run_start gives the ship the normal weight before the app runs. A ship
            # with nothing to build starts at the normal weight (no lxc-cgroup runs later).
            cpu_idle=building,
            cpu_weight=BUILD_CPU_WEIGHT if building else RUNNING_CPU_WEIGHT,
        )

    def write_scripts(self, ship: Ship, plan: BuildPlan, env: dict[str, str]) -> list[Path]:
        """/hyperdrive/env, build, start and the Procfile's scripts (processes.py): what runs
        inside the ship, written by us."""
        run = self.config.ship_dir(ship.name) / "run"
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
        scripts = processes.write_scripts(self.config.ship_dir(ship.name), plan.procfile)
        return [run / "env", run / "build", *scripts]

    async def _scripts_early(self, job: Job) -> None:
        """The ship's scripts, written while its container starts (nothing in it runs them
        before the build stage attaches); when the plan is unknown or a write fails, the build
        stage writes them and says what went wrong."""
        if job.plan is not None:
            with contextlib.suppress(HyperdriveError, OSError):
                await self._write_scripts(job, job.plan)

    async def _write_scripts(self, job: Job, plan: BuildPlan) -> Masker:
        """The scripts and env in run/, the ship's root's; the masker of the secrets in them."""
        app, ship = job.cmd.app, job.built
        env, secrets = self.fleet.env(app), self.fleet.secrets(app)
        for script in await in_thread_to_its_end(self.write_scripts, ship, plan, env):
            await self.runtime.hand_over(script)
        job.masker = Masker.of(secrets)
        return job.masker

    async def build(self, job: Job) -> BuildPlan:
        t0, ship = job.now(), job.built
        async with stage("build"):
            plan = job.plan  # read at assemble, unless it could not be
            if plan is None:
                plan = await asyncio.to_thread(detect, self.config.ship_dir(ship.name) / "app")
            # written while the ship started, unless they could not be
            mask = job.masker
            if mask is None:
                mask = await self._write_scripts(job, plan)
        if plan.build is None:
            return plan
        log = SetupLog(
            self.config.ship_dir(ship.name) / "setup.log",
            lambda text: job.emit(ev.BuildOutput, text),
            mask,
        )
        try:
            code = await self._run(job, log)
        finally:
            log.close()
        if code != 0:
            why = f"{plan.kind} build exited {code}"
            if code == 137 and await self._oom_kills(job) > 0:
                why = f"{plan.kind} build was killed for memory ({memory(job.orders, self.config)})"
            why += self._egress_note(job.orders)
            job.emit(ev.BuildFailed, why, log=str(log.path))
            raise DeployError("build", f"{why}: {' | '.join(log.tail)}; see {log.path}")
        job.emit(ev.ShipBuilt, f"{plan.kind} build completed", ms=job.ms(t0))
        return plan

    def _egress_note(self, orders: Orders) -> str:
        """A failed build that could not reach the outside is told why, in its first line."""
        if not self.config.ship_egress:
            return " (egress is off for every ship: HYPERDRIVE_SHIP_EGRESS=off)"
        if orders.egress.off:
            return f" (egress is off for this app: {orders.where('egress')})"
        if orders.egress.allow:
            shown = " ".join(f"{h}:{p}" for h, p in orders.egress.allow)
            return f" (egress allows only {shown}: {orders.where('egress')})"
        return ""

    async def _run(self, job: Job, log: SetupLog, script: str = "build") -> int:
        """/hyperdrive/build (or release) in the ship, killed after BUILD_TIMEOUT (orders'
        env) seconds."""
        async with stage(script):
            seconds = build_timeout(self.fleet.env(job.cmd.app))
            try:
                argv = ["/bin/sh", f"/hyperdrive/{script}"]
                return await self.runtime.attach(job.built.name, argv, {}, seconds, log.line)
            except AttachTimedOut:
                message = (
                    f"{script} timed out after {seconds:g} s (BUILD_TIMEOUT; it runs on the "
                    f"CPU time running apps leave); see {log.path}"
                )
                failed = ev.BuildFailed if script == "build" else ev.ReleaseFailed
                job.emit(failed, message, log=str(log.path))
                raise DeployError(script, message) from None

    async def release(self, job: Job, plan: BuildPlan) -> None:
        """The Procfile's `release:` once, in the new ship with the app's env, before the
        health check; its output streamed as the build's; a non-zero exit fails the deploy."""
        command = plan.procfile.release
        if command is None:
            return
        t0, ship = job.now(), job.built
        mask = Masker.of(self.fleet.secrets(job.cmd.app))
        log = SetupLog(
            self.config.ship_dir(ship.name) / "setup.log",
            lambda text: job.emit(ev.BuildOutput, text),
            mask,
        )
        try:
            code = await self._run(job, log, "release")
        finally:
            log.close()
        if code != 0:
            why = f"release `{mask(command)[:200]}` exited {code}"
            job.emit(ev.ReleaseFailed, why, log=str(log.path))
            raise DeployError("release", f"{why}: {' | '.join(log.tail)}; see {log.path}")
        job.emit(ev.ReleaseFinished, f"release `{mask(command)[:200]}` exited 0", ms=job.ms(t0))

    async def _oom_kills(self, job: Job) -> int:
        info = await self.runtime.info(job.built.name)
        return oom_kills(info.pid if info else None)
