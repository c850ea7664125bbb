"""The live ships' processes seen from the host: every exit an event, a crash loop reported,
and the Procfile's cron jobs run in the live ship on their schedule.

Exits are seen through inotify on each live ship's run/ps (the supervisor in the ship
rewrites a process's file at every start and exit: processes.py), so nothing wakes while
nothing exits. Cron is one timer: the daemon sleeps until the next due minute of any job of
any live ship (or until the live ships change), runs what is due, and computes the next.
A job still running when it is due again is not started twice: that run is skipped, and
said (CronSkipped). Each run is bounded by CRON_TIMEOUT_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TextIO

from hyperdrive.config import Config
from hyperdrive.errors import AttachTimedOut, HyperdriveError
from hyperdrive.pipeline import events as ev
from hyperdrive.pipeline import processes
from hyperdrive.pipeline.model import Records
from hyperdrive.pipeline.ports import ContainerRuntime
from hyperdrive.procfile import CronJob
from hyperdrive.watch import FolderWatch

log = logging.getLogger(__name__)

CRON_TIMEOUT_S = 3600.0
TAIL_LINES = 5
EXIT_TAIL_BYTES = 4096
CRON_LOG_LIMIT = processes.LOG_LIMIT_BYTES
Now = Callable[[], datetime]


@dataclass(frozen=True)
class LiveShip:
    app: str
    ship: str


@dataclass
class Conductor:
    """Watches and cron for every live ship; `refresh()` after the live ships changed."""

    config: Config
    records: Records
    runtime: ContainerRuntime
    emit: Callable[[ev.Event], None]
    now: Now = datetime.now  # naive local time: cron's fields are the host's wall clock
    _watches: dict[LiveShip, asyncio.Task[None]] = field(default_factory=dict)
    _cron: asyncio.Task[None] | None = None
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _running: dict[tuple[str, str], asyncio.Task[None]] = field(default_factory=dict)
    _fired: datetime | None = None  # the minute last run: a timer early by a hair is no rerun
    # each live ship's cron jobs, by the ship and its creation time
    _cron_jobs: dict[tuple[LiveShip, float], tuple[CronJob, ...]] = field(default_factory=dict)

    def live(self) -> list[LiveShip]:
        return [LiveShip(a.name, a.live) for a in self.records.all() if a.live]

    def refresh(self) -> None:
        """Watch exactly the live ships, and let the cron timer look at their jobs again."""
        live = set(self.live())
        for gone in set(self._watches) - live:
            self._watches.pop(gone).cancel()
        for new in live - set(self._watches):
            self._watches[new] = asyncio.create_task(self._watch(new))
        if self._cron is None or self._cron.done():
            self._cron = asyncio.create_task(self._cron_loop())
        self._wake.set()

    async def on_event(self, event: ev.Event) -> None:
        """The bus's listener for the events after which another ship may be live."""
        self.refresh()

    async def close(self) -> None:
        tasks = [*self._watches.values(), *self._running.values()]
        tasks += [self._cron] if self._cron else []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._watches.clear()
        self._running.clear()

    # -- exits --
    async def _watch(self, live: LiveShip) -> None:
        ship_dir = self.config.ship_dir(live.ship)
        names = list((await asyncio.to_thread(processes.recorded, ship_dir)).processes)
        seen = {s.name: s for s in processes.read_states(ship_dir, names)}
        never = asyncio.Event()
        async with FolderWatch(ship_dir / "run" / "ps", lambda n: n in seen) as watch:
            async for _ in watch.changes(never):
                for state in processes.read_states(ship_dir, names):
                    self._compare(live, seen[state.name], state)
                    seen[state.name] = state

    def _compare(
        self, live: LiveShip, before: processes.ProcessState, now: processes.ProcessState
    ) -> None:
        """An exit is a restart count that went up; a crash loop is said once per streak."""
        if now.restarts <= before.restarts:
            return
        ship_dir = self.config.ship_dir(live.ship)
        lines = processes.log_tail(ship_dir, now.name, EXIT_TAIL_BYTES)
        lines = [ln for ln in lines if not ln.startswith("[hyperdrive] ")][-TAIL_LINES:]
        shown = f": {' | '.join(lines)}" if lines else ""
        self.emit(
            ev.ProcessExited(
                app=live.app,
                ship=live.ship,
                process=now.name,
                code=now.last_code,
                restarts=now.restarts,
                message=f"{now.name} exited {now.last_code} (restart {now.restarts}){shown}",
            )
        )
        if now.crashing and not before.crashing:
            said = (
                f"{now.name} keeps crashing: {now.streak} exits in a row within "
                f"{processes.BACKOFF_RESET_S} s of starting; restarted with backoff up to "
                f"{processes.BACKOFF_MAX_S} s"
            )
            self.emit(
                ev.ProcessCrashLooped(app=live.app, ship=live.ship, process=now.name, message=said)
            )

    # -- cron --
    def jobs(self) -> list[tuple[LiveShip, CronJob]]:
        """Every live ship's cron jobs. A ship's processes.json is written before it goes
        live and never after, so it is read once per live ship (by name and creation time:
        a ship made again under the same name is read again), not at every deploy's end."""
        known, self._cron_jobs = self._cron_jobs, {}
        for app in self.records.all():
            if app.live:
                made = ship.created if (ship := app.live_ship) else 0.0
                key = (LiveShip(app.name, app.live), made)
                self._cron_jobs[key] = known[key] if key in known else self._recorded_cron(key[0])
        return [(live, job) for (live, _), jobs in self._cron_jobs.items() for job in jobs]

    def _recorded_cron(self, live: LiveShip) -> tuple[CronJob, ...]:
        return processes.recorded(self.config.ship_dir(live.ship)).cron

    def next_due(self, after: datetime) -> tuple[datetime | None, list[tuple[LiveShip, CronJob]]]:
        """The next minute any job is due, and the jobs due then."""
        due: dict[datetime, list[tuple[LiveShip, CronJob]]] = {}
        for live, job in self.jobs():
            when = job.schedule.next_after(after)
            if when is not None:
                due.setdefault(when, []).append((live, job))
        if not due:
            return None, []
        first = min(due)
        return first, due[first]

    async def _cron_loop(self) -> None:
        while True:
            self._wake.clear()
            now = self.now()
            when, jobs = self.next_due(max(now, self._fired) if self._fired else now)
            wait = None if when is None else max(0.0, (when - now).total_seconds())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
                continue  # the live ships changed: compute again
            self._fired = when
            for live, job in jobs:
                self.start_job(live, job)

    def is_running(self, app: str, job: str) -> bool:
        return (app, job) in self._running

    def start_job(self, live: LiveShip, job: CronJob) -> None:
        key = (live.app, job.name)
        if key in self._running:
            said = f"{job.name} is still running from its last start: this run is skipped"
            self.emit(ev.CronSkipped(app=live.app, ship=live.ship, job=job.name, message=said))
            return
        task = asyncio.create_task(self._run_job(live, job))
        self._running[key] = task
        task.add_done_callback(lambda _: self._running.pop(key, None))

    async def _run_job(self, live: LiveShip, job: CronJob) -> None:
        ship_dir = self.config.ship_dir(live.ship)
        t0, tail = time.monotonic(), await asyncio.to_thread(CronOutput, ship_dir, job.name)
        argv = ["/bin/sh", f"/hyperdrive/cron/{job.name}"]
        try:
            code: int | None = await self.runtime.attach(
                live.ship, argv, {}, CRON_TIMEOUT_S, tail.line
            )
            said = f"exited {code}"
        except AttachTimedOut:
            code, said = None, f"killed after {CRON_TIMEOUT_S:g} s"
        except HyperdriveError as err:
            code, said = None, f"could not run: {err}"
        finally:
            tail.close()
        ms = int((time.monotonic() - t0) * 1000)
        shown = f": {' | '.join(tail.last)}" if tail.last else ""
        self.emit(
            ev.CronRan(
                app=live.app,
                ship=live.ship,
                job=job.name,
                schedule=job.spec,
                code=code,
                ms=ms,
                message=f"{job.name} ({job.spec}) {said} after {ms} ms{shown}",
            )
        )


class CronOutput:
    """A cron job's output in `$DATA/lxc/<ship>/cron/<job>.log` (the daemon's folder, out of
    the ship's reach), moved to `.1` at CRON_LOG_LIMIT; its last lines kept for the event."""

    def __init__(self, ship_dir: Path, job: str) -> None:
        self.path = ship_dir / "cron" / f"{job}.log"
        self.last: list[str] = []
        self._fh: TextIO | None = None
        if ship_dir.is_dir():  # a ship destroyed meanwhile gets no folder made again
            self.path.parent.mkdir(exist_ok=True)
            self._open()

    def _open(self) -> None:
        self._fh = open(self.path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115

    def line(self, text: str) -> None:
        self.last = [*self.last[-(TAIL_LINES - 1) :], text[:300]]
        if self._fh is None:
            return
        self._fh.write(text + "\n")
        self._fh.flush()
        if self._fh.tell() >= CRON_LOG_LIMIT:
            self._fh.close()
            self.path.replace(self.path.with_name(self.path.name + ".1"))
            self._open()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
