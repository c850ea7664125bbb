"""The start and health stages: the app runs in its ship and answers on PORT, or the deploy
fails saying why (it exited, it listens elsewhere, it was killed for memory)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hyperdrive.buildpacks import BuildPlan
from hyperdrive.config import Config
from hyperdrive.errors import DeployError
from hyperdrive.files import OutsideTree, read_inside
from hyperdrive.pipeline import events as ev
from hyperdrive.pipeline import processes
from hyperdrive.pipeline.build import builds_nothing, memory
from hyperdrive.pipeline.health import KILLED_FOR_MEMORY, listening, oom_kills
from hyperdrive.pipeline.job import Job, stage, together
from hyperdrive.pipeline.model import HEALTHY, RUNNING_CPU_WEIGHT, Records, Ship
from hyperdrive.pipeline.ports import ContainerRuntime, Network, Probe
from hyperdrive.watch import FolderWatch

START_TIMEOUT_S = 30
TAIL_BYTES = 64 * 1024  # of run/logs/<type>.log, read for the last lines a failure message shows
# A worker-only app is healthy when each process still runs, never restarted, this long after
# the start (there is no HTTP to ask); a web app's other processes are checked after its HTTP
# check the same way.
WORKERS_UP_S = 3.0


@dataclass(kw_only=True)
class Starter:
    """Starts the app in a ship (new or kept) and health-checks it."""

    config: Config
    runtime: ContainerRuntime
    network: Network
    probe: Probe
    records: Records
    workers_up_s: float = WORKERS_UP_S

    async def start(self, job: Job, plan: BuildPlan) -> None:
        t0 = job.now()
        async with stage("start"):
            await together(  # lxc-attach is spawned first: the app waits on it, not on lxc-info
                self.run_start(job.built, weighted=not builds_nothing(plan)), self._note_init(job)
            )
        started = plan.start or ", ".join(plan.procfile.processes) or "no process (cron only)"
        job.emit(ev.ShipStarted, f"started: {started[:200]}", ms=job.ms(t0))

    async def _note_init(self, job: Job) -> None:
        """The ship's init pid for the health check's memory watch, read (lxc-info) beside
        the start script rather than after it."""
        info = await self.runtime.info(job.built.name)
        job.init_pid = info.pid if info else None

    async def run_start(self, ship: Ship, *, weighted: bool = True) -> None:
        """The app runs at a running ship's CPU weight; its ship was started at a build's
        (`weighted`: set it now), unless it had nothing to build (Builder.spec)."""
        if weighted:
            await self.runtime.set_cpu_weight(ship.name, RUNNING_CPU_WEIGHT)
        argv = ["/bin/sh", "/hyperdrive/start"]
        code = await self.runtime.attach(ship.name, argv, {}, START_TIMEOUT_S)
        if code != 0:
            raise DeployError("start", f"the start script exited {code}")

    async def answering(self, ship: Ship, path: str, seconds: float) -> None:
        """A ship started again without a deploy: its web process answers `path` within
        `seconds` (a worker-only app: at once), else DeployError says how it did not."""
        recorded = await asyncio.to_thread(processes.recorded, self.config.ship_dir(ship.name))
        if not recorded.web:
            return
        url = f"http://{ship.ip}:{ship.port}{path}"
        if (problem := await self.probe.wait_healthy(url, seconds)) is not None:
            raise DeployError("health", f"{url} {problem} after {seconds:g} s")

    async def revive(self, job: Job) -> None:
        """Start a kept ship again (container and app) and health-check it."""
        ship = job.built
        info = await self.runtime.info(ship.name)
        async with stage("start"):
            if info is None or info.state != "RUNNING":
                await self.network.ensure()
                await self.runtime.start(ship.name)
            await self.network.admit(ship.ip, job.cmd.app, job.orders.egress)
            await self.run_start(ship)
        await self.health(job)

    async def health(self, job: Job) -> None:
        """The web process answers on PORT, then every other process still runs; a
        worker-only app has only the second check, after WORKERS_UP_S."""
        ship_dir = self.config.ship_dir(job.built.name)
        recorded = await asyncio.to_thread(processes.recorded, ship_dir)
        others = [n for n in recorded.processes if n != "web"]
        if recorded.web:
            await self._http_health(job)
            if not others:  # a web process alone: nothing more to wait for or read
                return
        else:
            await asyncio.sleep(self.workers_up_s)
        await self._workers_up(job, others, recorded.web)

    async def _workers_up(self, job: Job, names: list[str], web: bool) -> None:
        """A process that exited before the swap fails the deploy, with its code and output."""
        t0, ship = job.now(), job.built
        ship_dir = self.config.ship_dir(ship.name)
        await self._noted(ship_dir, names, START_TIMEOUT_S)
        states = await asyncio.to_thread(processes.read_states, ship_dir, names)
        for state in states:
            if state.state == "running" and state.restarts == 0:
                continue
            if state.state == "missing":
                why = f"process `{state.name}` never started"
            else:
                why = f"process `{state.name}` exited {state.last_code} before the swap"
            message = why + await self.app_log_tail(ship, state.name)
            job.emit(ev.HealthCheckFailed, message, ms=job.ms(t0))
            raise DeployError("health", message)
        if not web:
            ship.healthy, ship.state = True, HEALTHY
            self.records.save(job.app)
            shown = ", ".join(names) or "no process"
            job.emit(ev.ShipHealthy, f"{shown} up after {self.workers_up_s:g} s", ms=job.ms(t0))

    @staticmethod
    async def _noted(ship_dir: Path, names: list[str], seconds: float) -> None:
        """Until each process's supervisor has noted its start in run/ps (a web process can
        answer before a worker's supervisor has written), at most `seconds`; inotify, no poll."""

        def all_noted() -> bool:
            states = processes.read_states(ship_dir, names)
            return all(s.state != "missing" for s in states)

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds), FolderWatch(ship_dir / "run" / "ps") as watch:
                if all_noted():
                    return
                async for _ in watch.changes(asyncio.Event()):
                    if all_noted():
                        return

    async def _http_health(self, job: Job) -> None:
        t0, ship, orders = job.now(), job.built, job.orders
        url = f"http://{ship.ip}:{ship.port}{orders.healthcheck_path}"
        seconds = orders.healthcheck_seconds
        problem = await self.probe.wait_healthy(url, seconds, await self._oom_watch(job))
        if problem is not None:
            message = f"{url} {problem} after {seconds:g} s"
            if problem.startswith(KILLED_FOR_MEMORY):
                message = f"{problem} (after {job.ms(t0)} ms)"
            elif problem.startswith("did not answer"):
                message += await self._listening(ship)
            message += await self.app_log_tail(ship)
            job.emit(ev.HealthCheckFailed, message, ms=job.ms(t0))
            raise DeployError("health", message)
        ship.healthy, ship.state = True, HEALTHY
        self.records.save(job.app)
        job.emit(ev.ShipHealthy, f"{url} answered", ms=job.ms(t0))

    async def _listening(self, ship: Ship) -> str:
        """Where the app listens instead of PORT: the commonest reason it did not answer."""
        info = await self.runtime.info(ship.name)
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

    async def _oom_watch(self, job: Job) -> Callable[[], str | None] | None:
        """For the health wait: a check that says so once the app was killed for memory."""
        pid = job.init_pid
        if pid is None:
            info = await self.runtime.info(job.built.name)
            pid = info.pid if info else None
        before, limit = oom_kills(pid), memory(job.orders, self.config)

        def killed() -> str | None:
            if oom_kills(pid) > before:
                return f"{KILLED_FOR_MEMORY}: it needs more memory than its limit ({limit})"
            return None

        return killed

    async def app_log_tail(self, ship: Ship, process: str = "web") -> str:
        """The last lines of a process's output for a failure message; the app owns
        /hyperdrive, so a link there out of the run folder is not followed (and said so)."""
        run = self.config.ship_dir(ship.name) / "run"
        name = f"logs/{process}.log"  # from run/: a run/logs that is a link out is refused too
        try:
            data = await asyncio.to_thread(read_inside, run, name, TAIL_BYTES, tail=True)
        except OutsideTree:
            return f"; app output not shown: /hyperdrive/{name} is a symbolic link out"
        lines = data.decode("utf-8", "replace").splitlines() if data else []
        if data and len(data) > TAIL_BYTES:
            lines = lines[1:]  # read from mid-line: half a line could hold half a secret
        lines = lines[-5:]
        return "; app output: " + " | ".join(lines) if lines else ""
