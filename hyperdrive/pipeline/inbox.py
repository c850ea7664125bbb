"""The inbox loop: every durable trigger becomes commands on the bus; done only at an outcome."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable

from hyperdrive.pipeline import events as ev
from hyperdrive.pipeline.bus import FAILED, MessageBus
from hyperdrive.pipeline.commands import Command, Deploy, Launch, from_trigger
from hyperdrive.spool import Spool
from hyperdrive.triggers import Trigger, TriggerKind

log = logging.getLogger(__name__)

Route = Callable[[Command], Awaitable[Command | None]]


async def _as_is(command: Command) -> Command | None:
    return command


class Inbox:
    """Takes triggers from the spool in order and runs each as its own task."""

    def __init__(
        self,
        spool: Spool,
        bus: MessageBus,
        owner: Callable[[str], str | None] = lambda ship: None,
        route: Route = _as_is,
    ) -> None:
        self.spool = spool
        self.bus = bus
        self.owner = owner  # a ship's app, so `hd launch SHIP` runs in that app's lane
        self.route = route  # another branch's push to its preview's lane (pipeline/previews.py)
        self.tasks: set[asyncio.Task[None]] = set()
        self.accepting = True
        self.handed_over = 0

    async def run(self) -> None:
        """Hand each trigger to the bus at once; stops taking new ones when told to stop."""
        async for trigger in self.spool.receive():
            if not self.accepting:
                return
            self.handed_over += 1
            task = asyncio.create_task(self._handle(trigger), name=f"trigger {trigger.id}")
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _handle(self, trigger: Trigger) -> None:
        if trigger.kind == TriggerKind.PUSH:
            self._push_received(trigger)
        if unfetched := trigger.text("unfetched"):  # a fleet's push whose commits did not come
            self.bus.emit(ev.DeployFailed(app=trigger.app, deploy=trigger.id, message=unfetched))
            await self.spool.done(trigger.id, FAILED)
            return
        asked = from_trigger(trigger)
        routed = [await self.route(self._in_lane(c)) for c in asked]
        commands = [c for c in routed if c is not None]
        if asked and not commands:  # refused previews, each said already
            await self.spool.done(trigger.id, "ignored")
            return
        if not commands:
            why = f"nothing to do for a '{trigger.kind}' trigger"
            self.bus.emit(
                ev.TriggerIgnored(
                    app=trigger.app, deploy=trigger.id, kind=str(trigger.kind), message=why
                )
            )
            await self.spool.done(trigger.id, "ignored")
            return
        outcomes = await asyncio.gather(*(self._command(c) for c in commands))
        worst = FAILED if FAILED in outcomes else outcomes[-1]
        await self.spool.done(trigger.id, worst)

    def _in_lane(self, command: Command) -> Command:
        if isinstance(command, Launch) and command.app is None:
            return dataclasses.replace(command, app=self.owner(command.ship))
        return command

    async def _command(self, command: Command) -> str:
        if isinstance(command, Deploy):
            self.bus.emit(
                ev.DeployQueued(
                    app=command.app,
                    sha=command.sha,
                    deploy=command.deploy,
                    source=command.source,
                    ref=command.ref,
                    message=f"deploy of {command.app} queued",
                )
            )
        try:
            return await self.bus.handle(command)
        except LookupError as err:
            app = getattr(command, "app", None)
            self.bus.emit(ev.DeployFailed(app=app, deploy=command.deploy, message=str(err)))
            return FAILED

    async def drain(self, grace: float) -> bool:
        """Let in-flight triggers reach an outcome; cancel what is left after `grace` seconds.

        A cancelled trigger stays pending in the spool and is taken up again at the next start.
        """
        self.accepting = False
        if not self.tasks:
            return True
        _, pending = await asyncio.wait(set(self.tasks), timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)
        return not pending

    def _push_received(self, trigger: Trigger) -> None:
        update, admiral = trigger.update, trigger.text("admiral")
        ref, sha = (update.ref, update.new) if update else (None, None)
        short = sha[:7] if sha else "?"
        self.bus.emit(
            ev.PushReceived(
                app=trigger.app,
                sha=sha,
                deploy=trigger.id,
                ref=ref,
                admiral=admiral,
                message=f"{admiral or 'someone'} pushed {short} to {ref}",
            )
        )
