"""Triggers taken here that the fleet has not acknowledged yet: a small durable journal.

A trigger is added once the local spool holds it and marked sent once the stream has acked
it; while NATS is unreachable the outbox grows, and everything in it is published when NATS
is back, in order, across daemon restarts (nothing lost).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

from hyperdrive.errors import SpoolError
from hyperdrive.files import write_atomically
from hyperdrive.modes import DATA_MODE
from hyperdrive.triggers import Trigger

log = logging.getLogger(__name__)

COMPACT_AFTER = 1000


class Outbox:
    """Append-only `fleet-outbox.jsonl`: `add` records, then `sent` records, fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._unsent: dict[str, Trigger] = {}
        self._records = 0
        self._lock = asyncio.Lock()
        self.changed = asyncio.Event()  # set whenever something is waiting to be sent
        self._waiters: dict[str, asyncio.Future[None]] = {}

    def load(self) -> None:
        """Replay the journal: what was added and never sent is waiting again."""
        self._unsent, self._records = {}, 0
        if self.path.exists():
            for raw in self.path.read_bytes().splitlines():
                self._records += 1
                self._replay(raw)
        if self._unsent:
            self.changed.set()

    def _replay(self, raw: bytes) -> None:
        try:
            obj = json.loads(raw)
            if obj["op"] == "add":
                trigger = Trigger.from_json(obj["trigger"])
                self._unsent[trigger.id] = trigger
            elif obj["op"] == "sent":
                self._unsent.pop(str(obj["id"]), None)
        except (ValueError, KeyError, TypeError, SpoolError) as err:
            log.warning("fleet outbox: skipping an unreadable record: %s", err)

    def unsent(self) -> list[Trigger]:
        return list(self._unsent.values())

    def __len__(self) -> int:
        return len(self._unsent)

    def __contains__(self, trigger_id: object) -> bool:
        return trigger_id in self._unsent

    async def add(self, trigger: Trigger) -> None:
        if trigger.id in self._unsent:
            return
        self._unsent[trigger.id] = trigger
        await self._append({"op": "add", "trigger": trigger.to_json()})
        self.changed.set()

    async def wait_sent(self, trigger_id: str, within: float) -> bool:
        """Whether the stream acked `trigger_id` within `within` seconds."""
        if trigger_id not in self._unsent:
            return True
        future = self._waiters.setdefault(trigger_id, asyncio.get_running_loop().create_future())
        try:
            await asyncio.wait_for(asyncio.shield(future), within)
        except TimeoutError:
            return False
        return True

    async def sent(self, trigger_id: str) -> None:
        waiter = self._waiters.pop(trigger_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._unsent.pop(trigger_id, None) is None:
            return
        await self._append({"op": "sent", "id": trigger_id})
        if not self._unsent and self._records > COMPACT_AFTER:
            async with self._lock:
                await asyncio.to_thread(write_atomically, self.path, b"", mode=DATA_MODE)
                self._records = 0

    async def _append(self, record: dict[str, object]) -> None:
        line = json.dumps(record, separators=(",", ":")).encode() + b"\n"
        async with self._lock:
            await asyncio.to_thread(_append_synced, self.path, line)
            self._records += 1


def _append_synced(path: Path, line: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, DATA_MODE)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
