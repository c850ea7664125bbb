"""Self-healing: notice at once what breaks around the daemon (its nginx master killed, its nft
table deleted, a live ship stopped) and put it right, with an event. Nothing here polls: the
kernel and LXC tell us (a pidfd turns readable when its process exits; `nft monitor` streams
ruleset changes; `lxc-monitor` streams container states)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from asyncio.subprocess import DEVNULL, PIPE
from collections.abc import Awaitable

from hyperdrive.errors import HyperdriveError
from hyperdrive.nginx_reload import MasterDied, Routes
from hyperdrive.pipeline import events as ev
from hyperdrive.pipeline.recovery import Recovery
from hyperdrive.pipeline.revival import Revival, States
from hyperdrive.procs import dying_with_us
from hyperdrive.proxy import NginxProxy

log = logging.getLogger(__name__)
RETRY_S = 1.0  # a master that cannot be started again is tried again after this long
STILLBORN_AT_ONCE = 3  # new masters that die as they start are replaced at once this often
MAX_PAUSE_S = 60.0
SETTLE_S = 0.02  # a deleted table comes as one line per part: heal once, after the burst
MAX_LINE = 16 << 20  # an `nft monitor` line can hold a whole set someone added


async def exited(pid: int) -> None:
    """Return once process `pid` has exited. Any process, not only a child: a pidfd (Linux
    5.3+) becomes readable when it exits, and the event loop waits on it like on a socket."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[None] = loop.create_future()
    loop.add_reader(fd, _settle, gone)
    try:
        await gone
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def first(*waits: Awaitable[object]) -> None:
    """Wait until the first of `waits` is done; cancel the others."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:  # what went wrong in the one that ended is not swallowed
        if not task.cancelled() and (error := task.exception()) is not None:
            raise error


class Pause:
    """How long to wait before following a monitor again: 1 s, doubling to 60 s while it keeps
    ending at once (not allowed, not installed), back to 1 s after it ran a minute."""

    def __init__(self) -> None:
        self.next_s, self._since = RETRY_S, time.monotonic()

    async def wait(self, stop: asyncio.Event) -> None:
        if time.monotonic() - self._since > MAX_PAUSE_S:
            self.next_s = RETRY_S
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), self.next_s)
        self.next_s = min(self.next_s * 2, MAX_PAUSE_S)
        self._since = time.monotonic()


class NginxWatch:
    """Waits on our nginx master's pidfd; when it dies, a new master serves the live config."""

    def __init__(self, routes: Routes, emit: ev.Emitter) -> None:
        self.routes = routes
        self.out = emit
        self.stillborn = 0  # masters in a row that died as they started
        self.lost: list[int] = []  # masters that died since one was last seen serving

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop`: wait for a master, wait for it to die, bring it back."""
        nginx = self.routes.nginx
        while not stop.is_set():
            pid = nginx.master_pid()
            if pid is None and nginx.live() is None:  # no config yet: the first deploy starts it
                nginx.started.clear()
                await first(nginx.started.wait(), stop.wait())
                continue
            if pid is not None:
                await first(exited(pid), stop.wait())
                if stop.is_set():
                    return
            await self._heal(pid, stop)

    async def _heal(self, dead: int | None, stop: asyncio.Event) -> None:
        """Start a master again; said as an event with how long the apps went unserved."""
        began = time.monotonic()
        dead = dead if dead is not None else self.routes.nginx.last_pid()
        if dead is not None and dead not in self.lost:
            self.lost.append(dead)
        try:
            pid = await self.routes.revive()
        except MasterDied as err:
            self.stillborn += 1
            log.warning("%s; starting another", err)
            if self.stillborn > STILLBORN_AT_ONCE:  # not just killed along with the one before
                await _pause(stop)
            return
        except (HyperdriveError, OSError) as err:
            log.warning("nginx master died and could not be started again: %s", err)
            await _pause(stop)
            return
        if pid is None:
            return
        lost, self.lost, self.stillborn = self.lost, [], 0
        ms = round((time.monotonic() - began) * 1000)
        message = f"{_masters(lost)} died; master {pid} serves the config in force again"
        log.warning("%s (%d ms)", message, ms)
        self.out.emit(ev.NginxRestarted(pid=pid, ms=ms, message=message))


def _masters(pids: list[int]) -> str:
    """`nginx master 12`, or `nginx masters 12 and 34` (one killed as it started)."""
    if len(pids) < 2:
        return f"nginx master {pids[0] if pids else '?'}"
    return f"nginx masters {', '.join(map(str, pids[:-1]))} and {pids[-1]}"


async def _pause(stop: asyncio.Event) -> None:
    """RETRY_S before the next try, or less when the daemon stops."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), RETRY_S)


def touches(line: bytes, table: str) -> bool:
    """Whether one `nft -j monitor` line deletes part of our table (an element going is a
    swap's own doing: not a fault). The monitor tells every table's changes on the host: a
    line that names no deletion or not our table is passed over unparsed."""
    if not line.startswith(b'{"delete": ') or f'"{table}"'.encode() not in line:
        return False
    try:
        change = json.loads(line)
    except ValueError:
        return False
    gone = change.get("delete") if isinstance(change, dict) else None
    if not isinstance(gone, dict) or "element" in gone:
        return False
    return any(
        isinstance(part, dict)
        and part.get("family") == "ip"
        and (part.get("table") if kind != "table" else part.get("name")) == table
        for kind, part in gone.items()
    )


class TableWatch:
    """`nft monitor` streams the kernel's ruleset changes (netlink): when part of our table is
    deleted or flushed, it is made again and re-pointed from the records, with an event."""

    def __init__(
        self,
        proxy: NginxProxy,
        recovery: Recovery,
        emit: ev.Emitter,
        nft: str = "nft",
    ) -> None:
        self.proxy = proxy
        self.recovery = recovery  # what the records say should be in the table
        self.out = emit
        self.nft = nft
        self._lock = asyncio.Lock()
        self._pending: asyncio.Task[None] | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop`: once the table is made, follow `nft monitor`, started again (later
        each time) should it end."""
        await first(self.proxy.ready.wait(), stop.wait())
        pause = Pause()
        while not stop.is_set():
            proc = await asyncio.create_subprocess_exec(
                *dying_with_us(self.nft, "-j", "monitor", "ruleset"),
                stdin=DEVNULL, stdout=PIPE, stderr=DEVNULL, limit=MAX_LINE,
            )  # fmt: skip
            try:
                await self.heal("found at the watch's start")  # what went while not watched
                await first(self._follow(proc), stop.wait())
            finally:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
            await pause.wait(stop)

    async def _follow(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        try:
            while line := await proc.stdout.readline():
                if touches(line, self.proxy.traffic.table) and self._pending is None:
                    self._pending = asyncio.create_task(self._settle_then_heal())
        except ValueError as err:  # a line past MAX_LINE (someone's huge set): start again
            log.warning("nft monitor: %s", err)
        log.warning("nft monitor ended (exit %s); following it again", proc.returncode)

    async def _settle_then_heal(self) -> None:
        """One heal for a burst of deletions (a table going is one line per rule)."""
        try:
            await asyncio.sleep(SETTLE_S)
            await self.heal("said by the kernel (nft monitor)")
        finally:
            self._pending = None

    async def heal(self, cause: str) -> bool:
        """If the table lacks anything, make it whole from the records; whether it had to."""
        async with self._lock:
            if not self.proxy.prepared:  # no ship yet: the first deploy makes the table
                return False
            damage = await self.proxy.traffic.damage()
            if not damage:
                return False
            began = time.monotonic()
            try:
                # traffic first, in one transaction; then the ships' egress and nginx's ports
                repointed = await self.proxy.restore(self.recovery.targets())
                await self.recovery.readmit()
                await self.proxy.apply_offer()
            except HyperdriveError as err:
                log.warning("%s; restoring it failed: %s", damage, err)
                return False
        ms = round((time.monotonic() - began) * 1000)
        apps = ", ".join(repointed) or "no app"
        message = f"{damage}; made again from the records ({cause}), {apps} re-pointed"
        log.warning("%s (%d ms)", message, ms)
        self.out.emit(ev.TrafficTableRestored(cause=cause, ms=ms, message=message))
        return True


class ShipWatch:
    """LXC's monitor, followed for as long as the daemon runs: a live ship's death is revived
    (pipeline/revival.py); should lxc-monitor end, it is started again."""

    def __init__(self, revival: Revival, states: States) -> None:
        self.revival = revival
        self.states = states

    async def run(self, stop: asyncio.Event) -> None:
        pause = Pause()
        while not stop.is_set():
            await first(self.revival.follow(self.states, stop), stop.wait())
            if not stop.is_set():
                log.warning("lxc-monitor ended; following it again in %.0f s", pause.next_s)
                await pause.wait(stop)
