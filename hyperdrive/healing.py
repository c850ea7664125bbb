"""Self-healing: notice at once what breaks around the daemon (its nginx master killed) and put
it right, with an event. Nothing here polls: the kernel tells us (a pidfd turns readable when
its process exits)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable

from hyperdrive.errors import HyperdriveError
from hyperdrive.nginx_reload import Routes
from hyperdrive.pipeline import events as ev

log = logging.getLogger(__name__)
RETRY_S = 1.0  # a master that cannot be started again is tried again after this long


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
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class NginxWatch:
    """Waits on our nginx master's pidfd; when it dies, a new master serves the live config."""

    def __init__(self, routes: Routes, emit: ev.Emitter) -> None:
        self.routes = routes
        self.out = emit

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
        try:
            pid = await self.routes.revive(dead or 0)
        except HyperdriveError as err:
            log.warning("nginx master died and could not be started again: %s", err)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), RETRY_S)
            return
        if pid is None:
            return
        ms = round((time.monotonic() - began) * 1000)
        message = f"nginx master {dead} died; master {pid} serves the config in force again"
        log.warning("%s (%d ms)", message, ms)
        self.out.emit(ev.NginxRestarted(pid=pid, ms=ms, message=message))
