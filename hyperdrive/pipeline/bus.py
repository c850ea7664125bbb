"""The message bus: commands to one handler each, events to the log and their listeners.

Commands that share a lane (an app) run one at a time; a newer Deploy in a lane supersedes
a waiting one at once and cancels a running one that has not yet reached its point of no
return (the traffic swap). A semaphore bounds how many lanes work at the same time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hyperdrive.eventlog import EventSink
from hyperdrive.pipeline import events as ev
from hyperdrive.pipeline.commands import Command, Deploy

log = logging.getLogger(__name__)

FINISHED, FAILED, SUPERSEDED = "finished", "failed", "superseded"


class Superseded(Exception):
    """A newer deploy came while this one could not be cancelled (it waited for a hull
    build): raised where the wait ends, so the deploy is dropped there."""


class Context:
    """What a command handler gets besides its command: emit events, mark the swap."""

    def __init__(self, bus: MessageBus, lane: _Lane | None) -> None:
        self.bus = bus
        self._lane = lane

    def emit(self, event: ev.Event) -> None:
        self.bus.emit(event)

    def point_of_no_return(self) -> None:
        """From here on a newer deploy waits instead of cancelling this one."""
        if self._lane is not None:
            self._lane.cancellable = False

    @contextlib.contextmanager
    def not_cancelled(self) -> Iterator[None]:
        """A stretch a newer deploy must not cut (a hull build everyone needs): it waits, and
        this deploy is dropped (Superseded) when the stretch ends, if one came meanwhile."""
        lane = self._lane
        if lane is None or not lane.cancellable:
            yield
            return
        lane.cancellable, lane.shielded = False, True
        try:
            yield
        finally:
            lane.cancellable, lane.shielded = True, False
        running = lane.running
        if running is not None and running.deploy in lane.superseded_by:
            raise Superseded(lane.superseded_by[running.deploy])


CommandHandler = Callable[[Any, Context], Coroutine[Any, Any, str | None]]
EventHandler = Callable[[Any], Coroutine[Any, Any, None]]


@dataclass
class _Lane:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    waiting: Deploy | None = None
    running: Command | None = None
    task: asyncio.Task[str | None] | None = None
    cancellable: bool = False
    shielded: bool = False  # in a not_cancelled() stretch: a newer deploy marks, not cancels
    superseded_by: dict[str, str] = field(default_factory=dict)


class MessageBus:
    """Explicit handler tables, wired in bootstrap.py."""

    def __init__(
        self,
        command_handlers: Mapping[type[Command], CommandHandler],
        event_handlers: Mapping[type[ev.Event], Sequence[EventHandler]],
        events: EventSink,
        parallel: int = 4,
    ) -> None:
        self.command_handlers = dict(command_handlers)
        self.event_handlers = {k: list(v) for k, v in event_handlers.items()}
        self.events = events
        self._slots = asyncio.Semaphore(parallel)
        self._lanes: dict[str, _Lane] = {}
        self._listeners: set[asyncio.Task[None]] = set()
        self.inflight = 0

    def emit(self, event: ev.Event) -> None:
        """Record the fact, then let listeners react; a listener's failure is logged, not raised."""
        self.events.append(event.record())
        for handler in self.event_handlers.get(type(event), ()):
            task = asyncio.create_task(self._listen(handler, event))
            self._listeners.add(task)
            task.add_done_callback(self._listeners.discard)

    async def _listen(self, handler: EventHandler, event: ev.Event) -> None:
        try:
            await handler(event)
        except Exception:
            log.exception("event handler %s failed on %s", handler.__name__, event.name)

    async def handle(self, command: Command) -> str:
        """Run the command's handler in its lane; return the outcome word."""
        handler = self.command_handlers.get(type(command))
        if handler is None:
            raise LookupError(f"no handler for {type(command).__name__}")
        lane = self._lanes.setdefault(command.lane, _Lane()) if command.lane else None
        if lane is not None and isinstance(command, Deploy):
            self._supersede(lane, command)
        self.inflight += 1
        try:
            return await self._run(handler, command, lane)
        finally:
            self.inflight -= 1

    def _supersede(self, lane: _Lane, newer: Deploy) -> None:
        older = lane.waiting
        if older is not None:
            lane.superseded_by[older.deploy] = newer.deploy
        lane.waiting = newer
        running = lane.running
        if not isinstance(running, Deploy):
            return
        if lane.task is None:  # holds the lane but still waits for a free slot
            lane.superseded_by[running.deploy] = newer.deploy
        elif lane.cancellable:
            lane.superseded_by[running.deploy] = newer.deploy
            lane.task.cancel()
        elif lane.shielded:
            lane.superseded_by[running.deploy] = newer.deploy

    async def _run(self, handler: CommandHandler, command: Command, lane: _Lane | None) -> str:
        if lane is None:
            async with self._slots:
                return await self._call(handler, command, None)
        async with lane.lock:
            if lane.waiting is command:
                lane.waiting = None
            lane.running = command
            try:
                if self._was_superseded(lane, command):
                    return SUPERSEDED
                async with self._slots:
                    if self._was_superseded(lane, command):
                        return SUPERSEDED
                    return await self._call(handler, command, lane)
            finally:
                lane.running = None

    def _was_superseded(self, lane: _Lane, command: Command) -> bool:
        """A newer deploy came while this one waited (for the lane or for a slot): say so."""
        newer = lane.superseded_by.pop(command.deploy, None)
        if newer is not None:
            self._superseded(command, newer)
        return newer is not None

    async def _call(self, handler: CommandHandler, command: Command, lane: _Lane | None) -> str:
        task = asyncio.create_task(handler(command, Context(self, lane)))
        if lane is not None:
            lane.running, lane.task, lane.cancellable = command, task, isinstance(command, Deploy)
        try:
            return await task or FINISHED
        except Superseded:
            newer = lane.superseded_by.pop(command.deploy, None) if lane else None
            self._superseded(command, newer or "a newer deploy")
            return SUPERSEDED
        except asyncio.CancelledError:
            newer = lane.superseded_by.pop(command.deploy, None) if lane else None
            if newer is None or not task.cancelled():
                raise
            self._superseded(command, newer)
            return SUPERSEDED
        except Exception as err:
            log.exception("%s %s crashed", type(command).__name__, command.deploy)
            self._crashed(command, err)
            return FAILED
        finally:
            if lane is not None:
                lane.running, lane.task, lane.cancellable, lane.shielded = None, None, False, False

    def _superseded(self, command: Command, newer: str) -> None:
        app = getattr(command, "app", None)
        message = f"superseded by deploy {newer}"
        self.emit(ev.DeploySuperseded(app=app, deploy=command.deploy, by=newer, message=message))

    def _crashed(self, command: Command, err: Exception) -> None:
        app = getattr(command, "app", None)
        message = f"{type(err).__name__}: {err}"
        self.emit(ev.DeployFailed(app=app, deploy=command.deploy, message=message))

    async def drain(self, grace: float) -> bool:
        """Wait for event listeners to finish; True if they did within `grace` seconds."""
        if not self._listeners:
            return True
        done, _ = await asyncio.wait(set(self._listeners), timeout=grace)
        return not self._listeners - done
