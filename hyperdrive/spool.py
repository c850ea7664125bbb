"""The durable inbox: a trigger is acknowledged only once it is on disk.

Triggers from inside the daemon (webhooks, the admin API) go straight into an append-only
journal through one writer thread that fsyncs once per batch (group commit). Triggers from
other processes (git's post-receive hook) are dropped as files into `spool/incoming/`; the
daemon learns of them through inotify (hyperdrive.watch), moves them into the journal and deletes
the file. A trigger leaves the journal only when the deploy it started has an outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import orjson

from hyperdrive.errors import SpoolError, SpoolFull
from hyperdrive.files import undo_append, write_atomically
from hyperdrive.space import FOR_TRIGGERS, shortage
from hyperdrive.triggers import Trigger
from hyperdrive.watch import ARRIVALS, FolderWatch

log = logging.getLogger(__name__)

SEEN_RETENTION_S = 7 * 24 * 3600
COMPACT_AFTER = 2000
JOURNAL = "journal.jsonl"


class Spool(Protocol):
    """Put a trigger / receive triggers / acknowledge: the seam a fleet transport replaces."""

    async def put(self, trigger: Trigger) -> bool:
        """Return once durable; False when this id was already taken (handled once)."""
        ...

    def receive(self) -> AsyncIterator[Trigger]: ...

    async def done(self, trigger_id: str, outcome: str) -> None: ...


class _Batch:
    """One request to the writer thread: lines to append, or a whole journal to swap in."""

    def __init__(
        self,
        lines: list[bytes],
        future: asyncio.Future[None],
        replace_with: bytes | None = None,
    ) -> None:
        self.lines = lines
        self.future = future
        self.replace_with = replace_with


class _JournalWriter:
    """A dedicated thread: appends whatever is queued, fsyncs once, answers every waiter."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._queue: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self._fh = open(path, "ab")  # noqa: SIM115 - lives as long as the writer
        self._thread = threading.Thread(target=self._run, name="spool-writer", daemon=True)
        self.batches = 0
        self._thread.start()

    def submit(self, batch: _Batch) -> None:
        self._queue.put(batch)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)
        self._fh.close()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            with contextlib.suppress(queue.Empty):
                while len(group) < 4096:
                    item = self._queue.get_nowait()
                    if item is None:
                        self._queue.put(None)
                        break
                    group.append(item)
            self._write(group)

    def _write(self, group: list[_Batch]) -> None:
        error: BaseException | None = None
        whole = os.fstat(self._fh.fileno()).st_size  # every group before ended on a record
        try:
            for batch in group:
                if batch.replace_with is not None:
                    self._swap(batch.replace_with)
                else:
                    self._fh.write(b"".join(batch.lines))
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self.batches += 1
        except OSError as err:
            error = err
            if not any(batch.replace_with is not None for batch in group):
                self._fh = undo_append(self._fh, self.path, whole)
        # one wake-up per event loop for the whole group, not one per trigger
        waiting: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for batch in group:
            waiting.setdefault(batch.future.get_loop(), []).append(batch.future)
        for loop, futures in waiting.items():
            loop.call_soon_threadsafe(_settle, futures, error)

    def _swap(self, content: bytes) -> None:
        """Compaction: write the new journal beside the old one and rename it into place."""
        self._fh.flush()
        write_atomically(self.path, content)
        self._fh.close()
        self._fh = open(self.path, "ab")  # noqa: SIM115


def _line(obj: dict[str, Any]) -> bytes:
    """One journal record; orjson (a fifth of json.dumps' time), json for text it refuses
    (surrogate-escaped bytes, which json writes as `\\udcXX`)."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError:
        return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


Seen = dict[str, tuple[float, str]]  # done trigger id -> (time done, fingerprint)


def read_journal(path: Path) -> tuple[dict[str, Trigger], Seen, int]:
    """Replay a journal: (pending triggers in order, done ids, records read).

    A torn last line (a crash mid-write, never acknowledged) is cut off so appends stay clean.
    """
    pending: dict[str, Trigger] = {}
    seen: Seen = {}
    if not path.exists():
        return pending, seen, 0
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep < len(data):
        log.warning("spool journal: dropping a torn last record of %d bytes", len(data) - keep)
        with open(path, "r+b") as fh:
            fh.truncate(keep)
    records = 0
    for raw in data[:keep].splitlines():
        records += 1
        _replay(raw, pending, seen)
    return pending, seen, records


def _replay(raw: bytes, pending: dict[str, Trigger], seen: Seen) -> None:
    try:
        obj = json.loads(raw)
        if obj["op"] == "put":
            trigger = Trigger.from_json(obj["trigger"])
            if trigger.id not in seen:
                pending[trigger.id] = trigger
        elif obj["op"] == "done":
            pending.pop(obj["id"], None)
            seen[obj["id"]] = (float(obj.get("ts", 0.0)), str(obj.get("fp", "")))
    except (ValueError, KeyError, TypeError, SpoolError) as err:
        log.warning("spool journal: skipping an unreadable record: %s", err)


RejectedCallback = Callable[[str, str], None]


class SpoolListener(Protocol):
    """Told of each trigger once it is durable, and of its outcome: the fleet's hook."""

    async def taken(self, trigger: Trigger) -> None: ...

    async def finished(self, trigger_id: str, outcome: str) -> None: ...


class FileSpool:
    """The filesystem spool: journal with group commit, plus a watched incoming folder."""

    def __init__(self, root: Path, on_rejected: RejectedCallback | None = None) -> None:
        self.root = root
        self.incoming = root / "incoming"
        self.rejected = root / "rejected"
        self._on_rejected = on_rejected or (lambda name, why: None)
        self._pending: dict[str, Trigger] = {}
        self._seen: Seen = {}
        self._bodies: dict[str, str] = {}  # fingerprint -> the trigger id that carried it
        self._inflight: dict[str, asyncio.Future[None]] = {}
        self._ready: asyncio.Queue[Trigger] = asyncio.Queue()
        self._records = 0
        self._writer: _JournalWriter | None = None
        self.listeners: list[SpoolListener] = []

    async def open(self) -> None:
        """Replay the journal and queue every trigger a crash left unfinished."""
        for folder in (self.root, self.incoming, self.rejected):
            folder.mkdir(parents=True, exist_ok=True)
        journal = self.root / JOURNAL
        self._pending, self._seen, self._records = await asyncio.to_thread(read_journal, journal)
        self._writer = _JournalWriter(journal)
        self._index_bodies()
        for trigger in self._pending.values():
            self._ready.put_nowait(trigger)
        await self.ingest_incoming()

    async def close(self) -> None:
        if self._writer is not None:
            await asyncio.to_thread(self._writer.close)
            self._writer = None

    def pending(self) -> list[Trigger]:
        return list(self._pending.values())

    def waiting(self, trigger_id: str) -> bool:
        """Taken and without an outcome yet."""
        return trigger_id in self._pending

    def knows(self, trigger_id: str) -> bool:
        return trigger_id in self._pending or trigger_id in self._seen

    def fingerprint(self, trigger_id: str) -> str | None:
        """The fingerprint a known id was taken with (pending or done), else None."""
        if trigger_id in self._pending:
            return self._pending[trigger_id].fingerprint
        if trigger_id in self._seen:
            return self._seen[trigger_id][1]
        return None

    def carried(self, fingerprint: str) -> str | None:
        """The id of a known trigger (pending or done, within retention) with this body."""
        return self._bodies.get(fingerprint) if fingerprint else None

    def _index_bodies(self) -> None:
        """Body fingerprints of every trigger the spool knows, for a replay under a new id."""
        self._bodies = {fp: tid for tid, (_, fp) in self._seen.items() if fp}
        self._bodies |= {t.fingerprint: t.id for t in self._pending.values() if t.fingerprint}

    async def put(self, trigger: Trigger) -> bool:
        """Append and fsync (shared with concurrent puts); False for an id already taken."""
        if trigger.id in self._inflight:
            await asyncio.shield(self._inflight[trigger.id])
            return False
        if self.knows(trigger.id):
            return False
        if why := shortage(self.root, FOR_TRIGGERS):
            raise SpoolFull(f"could not persist trigger {trigger.id}: {why}")
        self._pending[trigger.id] = trigger
        if trigger.fingerprint:
            self._bodies[trigger.fingerprint] = trigger.id
        future = self._submit([_line({"op": "put", "trigger": trigger.to_json()})])
        self._inflight[trigger.id] = future
        try:
            await asyncio.shield(future)
        except OSError as err:
            self._pending.pop(trigger.id, None)
            self._index_bodies()
            raise SpoolError(f"could not persist trigger {trigger.id}: {err}") from err
        finally:
            self._inflight.pop(trigger.id, None)
        await self._tell(lambda listener: listener.taken(trigger), trigger.id)
        self._ready.put_nowait(trigger)
        return True

    async def done(self, trigger_id: str, outcome: str) -> None:
        """The deploy this trigger started has an outcome: the trigger leaves the inbox."""
        trigger = self._pending.pop(trigger_id, None)
        if trigger is None:
            return
        now = time.time()
        self._seen[trigger_id] = (now, trigger.fingerprint)
        record = {"op": "done", "id": trigger_id, "outcome": outcome, "ts": now}
        record["fp"] = trigger.fingerprint
        try:
            await self._submit([_line(record)])
        except OSError as err:  # the disk full: it stays pending on disk and runs again
            log.warning(
                "spool: could not record %s as done (%s): it runs again at start", trigger_id, err
            )
        await self._tell(lambda listener: listener.finished(trigger_id, outcome), trigger_id)

    async def _tell(
        self, call: Callable[[SpoolListener], Awaitable[None]], trigger_id: str
    ) -> None:
        """The trigger is durable whatever a listener does: its failure is logged, not raised."""
        for listener in self.listeners:
            try:
                await call(listener)
            except Exception:
                log.exception("spool: a listener failed on trigger %s", trigger_id)
        if self._records > COMPACT_AFTER and self._records > 4 * (len(self._pending) + 1):
            await self.compact()

    async def compact(self) -> None:
        """Rewrite the journal as just the pending triggers and the recently done ids."""
        horizon = time.time() - SEEN_RETENTION_S
        self._seen = {tid: seen for tid, seen in self._seen.items() if seen[0] >= horizon}
        self._index_bodies()
        lines = [_line({"op": "put", "trigger": t.to_json()}) for t in self._pending.values()]
        lines += [
            _line({"op": "done", "id": i, "ts": ts, "fp": fp}) for i, (ts, fp) in self._seen.items()
        ]
        self._records = len(lines)
        await self._submit([], replace_with=b"".join(lines))

    def _submit(
        self, lines: list[bytes], replace_with: bytes | None = None
    ) -> asyncio.Future[None]:
        if self._writer is None:
            raise SpoolError("the spool is not open")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._records += len(lines)
        self._writer.submit(_Batch(lines, future, replace_with))
        return future

    async def receive(self) -> AsyncIterator[Trigger]:
        """Every durable trigger, in order, once: pending ones from before a crash first."""
        while True:
            trigger = await self._ready.get()
            if trigger.id in self._pending:
                yield trigger

    async def watch(self, stop: asyncio.Event) -> None:
        """Ingest incoming files as inotify reports them; nothing polls."""
        async with FolderWatch(self.incoming, _is_incoming, ARRIVALS) as watch:
            await self.ingest_incoming()  # what landed between open() and the watch
            async for _ in watch.changes(stop):
                await self.ingest_incoming()

    async def ingest_incoming(self) -> int:
        """Move every complete incoming file into the journal; quarantine what is not a trigger."""
        names = sorted(p.name for p in self.incoming.iterdir() if _is_incoming(p.name))
        count = 0
        for name in names:
            path = self.incoming / name
            trigger = await asyncio.to_thread(self._load_incoming, path)
            if trigger is None:
                continue
            await self.put(trigger)
            path.unlink(missing_ok=True)
            count += 1
        return count

    def _load_incoming(self, path: Path) -> Trigger | None:
        try:
            return Trigger.from_json(json.loads(path.read_bytes()))
        except FileNotFoundError:
            return None
        except (ValueError, SpoolError) as err:
            reason = str(err) or type(err).__name__
            with contextlib.suppress(OSError):
                os.replace(path, self.rejected / path.name)
            log.warning("spool: quarantined %s: %s", path.name, reason)
            self._on_rejected(path.name, reason)
            return None


def _is_incoming(name: str) -> bool:
    return name.endswith(".json") and not name.startswith(".")


def _settle(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for future in futures:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
