"""A live ship that dies without us (`lxc-stop -k` from outside, its init gone, the OOM killer)
is started again, as LXC's own monitor tells us it stopped, and is said to run again once it
answers its health check; a ship that keeps dying is started again later each time, and one
that cannot be started or does not answer makes the app roll back to a kept ship."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from hyperdrive.errors import HyperdriveError
from hyperdrive.pipeline import events as ev
from hyperdrive.pipeline.model import LIVE, App, Records, Route
from hyperdrive.pipeline.ports import ContainerRuntime
from hyperdrive.pipeline.start import Starter

log = logging.getLogger(__name__)
DEAD = frozenset({"STOPPED", "ABORTING"})
WINDOW_S = 60.0  # deaths counted over this long
CALM = 2  # deaths in the window restarted at once; after that, waits that double
MAX_WAIT_S = 60.0
REVIVED_CHECK_S = 30.0  # a ship started again answers its check within this, or rolls back

States = Callable[[], AsyncIterator[tuple[str, str]]]  # (container, new state), as LXC says


def backoff(deaths: int) -> float:
    """Seconds before the next restart of a ship that died `deaths` times in the window."""
    return 0.0 if deaths <= CALM else min(2.0 ** (deaths - CALM - 1), MAX_WAIT_S)


@dataclass(kw_only=True)
class Revival:
    """Follows every container state change; only a live ship's death is its business."""

    records: Records
    runtime: ContainerRuntime
    starter: Starter
    out: ev.Emitter
    rollback: Callable[[str], Awaitable[object]]  # puts a rollback trigger for the app
    clock: Callable[[], float] = time.monotonic
    deaths: dict[str, deque[float]] = field(default_factory=dict)
    _busy: set[str] = field(default_factory=set)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def follow(self, states: States, stop: asyncio.Event) -> None:
        """Until `stop`: each state change that means a live ship died starts its revival."""
        try:
            async for ship, state in states():
                if stop.is_set():
                    break
                if state in DEAD and (app := self.owner(ship)) and app.name not in self._busy:
                    self._spawn(self.revive(app, ship, state))
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def owner(self, ship: str) -> App | None:
        """The app whose live ship `ship` is, if any (a retired or drained ship is stopped by
        us, after it stopped being live)."""
        return next((a for a in self.records.all() if a.live == ship), None)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def revive(self, app: App, ship: str, state: str) -> None:
        """Say it died; wait as its crash count says; start it again, or roll back."""
        self._busy.add(app.name)
        try:
            info = await self.runtime.info(ship)
            if info is not None and info.state == "RUNNING":
                return  # started again meanwhile (lxc-monitor also says ABORTING on the way)
            deaths = self._died(app.name)
            said = f"live ship '{ship}' stopped without Hyperdrive ({state})"
            self.out.emit(ev.ShipDied(app=app.name, ship=ship, state=state, message=said))
            if wait := backoff(deaths):
                self._crash_looping(app.name, ship, deaths, wait)
                await asyncio.sleep(wait)
            if app.live == ship:
                await self._restart(app, ship, deaths)
        finally:
            self._busy.discard(app.name)

    def _crash_looping(self, app: str, ship: str, deaths: int, wait: float) -> None:
        message = (
            f"'{ship}' died {deaths} times in {WINDOW_S:.0f} s: backing off, "
            f"next start in {wait:.0f} s"
        )
        log.warning("%s: %s", app, message)
        self.out.emit(
            ev.ShipCrashLooping(app=app, ship=ship, restarts=deaths, wait_s=wait, message=message)
        )

    def _died(self, app: str) -> int:
        """Count one death of `app`'s live ship; how many in the window."""
        now = self.clock()
        seen = self.deaths.setdefault(app, deque())
        seen.append(now)
        while seen and seen[0] < now - WINDOW_S:
            seen.popleft()
        return len(seen)

    @staticmethod
    def _check_path(app: App) -> str:
        """The path the app's last accepted route checks (its orders' healthcheck)."""
        return Route.from_json(app.name, app.route).check_path if app.route else "/"

    async def _restart(self, app: App, ship: str, deaths: int) -> None:
        began, live = self.clock(), app.ship(ship)
        if live is None or live.state != LIVE:
            return
        try:
            await self.runtime.start(ship)
            await self.starter.run_start(live)
            await self.starter.answering(live, self._check_path(app), REVIVED_CHECK_S)
        except HyperdriveError as err:
            log.warning("%s: restarting %s failed: %s; rolling back", app.name, ship, err)
            with contextlib.suppress(HyperdriveError):
                await self.runtime.stop(ship, kill=True)
            message = f"'{ship}' could not be started again ({err}): rolling back to a kept ship"
            self.out.emit(ev.ShipDied(app=app.name, ship=ship, state="FAILED", message=message))
            await self.rollback(app.name)
            return
        ms = round((self.clock() - began) * 1000)
        message = f"'{ship}' runs again ({deaths} restart(s) in {WINDOW_S:.0f} s)"
        self.out.emit(
            ev.ShipRevived(app=app.name, ship=ship, sha=live.sha, restarts=deaths, ms=ms,
                           message=message)
        )  # fmt: skip
