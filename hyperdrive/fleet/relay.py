"""Between the local spool and the fleet's trigger stream; no NATS here (unit-tested on fakes).

Out: a shared trigger, once the local spool holds it, goes to the outbox to be published.
In: a trigger from the stream goes into the local spool (deduplicated by its id) and its
delivery is acknowledged only when the local deploy it started has an outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from hyperdrive.errors import SpoolError
from hyperdrive.fleet.outbox import Outbox
from hyperdrive.triggers import Trigger, TriggerKind

log = logging.getLogger(__name__)

CONFIRM_WITHIN_S = 5.0  # how long a webhook's answer waits for the stream's ack


class Delivery(Protocol):
    """One delivery of a stream message to this squadron's durable consumer."""

    async def ack(self) -> None: ...

    async def in_progress(self) -> None: ...

    async def term(self) -> None: ...


class LocalSpool(Protocol):
    """What the relay needs of the spool (FileSpool has it)."""

    def knows(self, trigger_id: str) -> bool: ...

    def waiting(self, trigger_id: str) -> bool: ...

    async def put(self, trigger: Trigger) -> bool: ...


def shared(trigger: Trigger) -> bool:
    """Whether every squadron should act on this trigger too.

    Webhooks (a forge's push to a repo apps follow, or to HQ's repo) carry everything a
    squadron needs: it fetches the code itself. A push to a repo hosted here, or to a hosted
    HQ, carries its commits as a git bundle (bundles.py). `hd deploy/rollback --fleet` are
    shared on purpose.
    """
    if trigger.kind in (TriggerKind.WEBHOOK, TriggerKind.PUSH, TriggerKind.HQ):
        return True
    if trigger.kind in (TriggerKind.DEPLOY, TriggerKind.ROLLBACK):
        return trigger.data.get("fleet") is True  # `hd deploy/rollback --fleet`
    return trigger.kind == TriggerKind.HQ_SYNC and trigger.text("reason") == "webhook"


def encode(trigger: Trigger) -> bytes:
    return json.dumps(trigger.to_json(), separators=(",", ":")).encode()


class Relay:
    """The spool's fleet listener and the consumer's message handler."""

    def __init__(
        self,
        spool: LocalSpool,
        outbox: Outbox,
        connected: Callable[[], bool] = lambda: False,
        prepare: Callable[[Trigger], Awaitable[Trigger]] | None = None,
    ) -> None:
        self.prepare = prepare  # before a trigger from the fleet is spooled: fetch its code
        self.spool = spool
        self.outbox = outbox
        self.connected = connected
        self.held: dict[str, Delivery] = {}  # trigger id -> the delivery to ack at its outcome
        self.holding = asyncio.Event()  # set while some delivery waits for its outcome
        self._from_fleet: set[str] = set()
        self.received_count = 0

    # -- the spool's listener --
    async def taken(self, trigger: Trigger) -> None:
        """Durable here: queue a shared one for the fleet (not one that came from it) and,
        while the fleet is reachable, return once the stream holds it (a webhook's 202 then
        means durable on the fleet); unreachable, the outbox keeps it and nothing waits."""
        if trigger.id in self._from_fleet or not shared(trigger):
            return
        await self.outbox.add(trigger)
        if self.connected() and not await self.outbox.wait_sent(trigger.id, CONFIRM_WITHIN_S):
            log.warning("fleet: %s not confirmed by the stream yet; it stays queued", trigger.id)

    async def finished(self, trigger_id: str, outcome: str) -> None:
        """The local deploy has an outcome: only now is the fleet's delivery acknowledged."""
        delivery = self.held.pop(trigger_id, None)
        if delivery is not None:
            self._note_held()
            await _quietly(delivery.ack(), "ack", trigger_id)

    # -- the consumer's handler --
    async def received(self, payload: bytes, delivery: Delivery) -> None:
        """Into the spool once (by id); ack now if it is already done here."""
        try:
            trigger = Trigger.from_json(json.loads(payload))
        except (ValueError, SpoolError) as err:
            log.warning("fleet: dropping a message that is not a trigger: %s", err)
            await _quietly(delivery.term(), "term", "?")
            return
        self.received_count += 1
        self.held[trigger.id] = delivery  # before put: its outcome may come at any await
        self._note_held()
        if not self.spool.knows(trigger.id):
            if self.prepare is not None:
                trigger = await self.prepare(trigger)
            self._from_fleet.add(trigger.id)
            try:
                await self.spool.put(trigger)
            finally:
                self._from_fleet.discard(trigger.id)
        if not self.spool.waiting(trigger.id) and self.held.get(trigger.id) is delivery:
            del self.held[trigger.id]
            self._note_held()
            await _quietly(delivery.ack(), "ack", trigger.id)

    def _note_held(self) -> None:
        if self.held:
            self.holding.set()
        else:
            self.holding.clear()

    async def keep_alive(self) -> None:
        """Tell the stream each held delivery is still being worked on (deploys take a while)."""
        for trigger_id, delivery in list(self.held.items()):
            await _quietly(delivery.in_progress(), "in-progress", trigger_id)


async def _quietly(work: Awaitable[None], what: str, trigger_id: str) -> None:
    """A lost connection only delays an ack: the stream redelivers and the spool knows it."""
    with contextlib.suppress(Exception):
        await work
        return
    log.debug("fleet: %s of %s not sent (NATS unreachable?)", what, trigger_id)
