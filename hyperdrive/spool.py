"""The durable inbox: a trigger is acknowledged only once it is on disk.

Triggers from inside the daemon (webhooks, the admin API) go straight into an append-only
journal through one writer thread that fsyncs once per batch (group commit). Triggers from
other processes (git's post-receive hook) are dropped as files into `spool/incoming/`; the
daemon learns of them through inotify (hyperdrive.watch), moves them into the journal and deletes
the file. A trigger leaves the journal only when the deploy it started has an outcome.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from hyperdrive.errors import SpoolError, SpoolFull
from hyperdrive.files import write_atomically
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


class _JournalWriter:
    """Group commit. The event loop writes each pass's records to the journal at once (a
    page-cache write); one thread fsyncs, back to back while there is more, and every record
    written before an fsync began is answered when it ends. A group costs one fsync and one
    wake-up of the loop, whatever its size, and the thread is woken only when it sleeps."""

    def __init__(self, path: Path, loop: asyncio.AbstractEventLoop) -> None:
        self.path = path
        self._loop = loop
        self._fd = _open_append(path)
        self._size = self._durable = os.fstat(self._fd).st_size  # where whole records end
        self._seq = 0  # writes made; an fsync that began after write n covers it
        self._lines: list[bytes] = []  # records of this loop pass, not written yet
        self._waiting: list[asyncio.Future[None]] = []
        self._written: collections.deque[_Written] = collections.deque()
        # a compaction under way: records wait in memory until the new journal is in place
        self._swap: tuple[bytes, int, list[asyncio.Future[None]]] | None = None
        self._scheduled = False
        self.room_checked = False  # a put asked statvfs for the records of this loop pass
        self._idle = False  # the thread sleeps until a write wakes it
        self._wake: queue.SimpleQueue[Callable[[], int] | bool | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="spool-writer", daemon=True)
        self.batches = 0
        self._thread.start()

    def append(self, lines: list[bytes]) -> asyncio.Future[None]:
        """Durable once the future is done; the records of one loop pass are one write."""
        future = self._loop.create_future()
        self._lines += lines
        self._waiting.append(future)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)
        return future

    def replace(self, content: bytes) -> asyncio.Future[None]:
        """Compaction: `content` (a snapshot holding every record appended so far) takes the
        journal's place; records appended after this call go into the new file. One at a time
        (FileSpool.compact holds a lock)."""
        if self._swap is not None:
            raise SpoolError("a compaction is already under way")
        future = self._loop.create_future()
        self._flush()  # this pass's records go to the old file; the snapshot holds them too
        self._swap = (content, self._seq, [future])
        self._wake.put(self._swap_in)
        return future

    async def close(self) -> None:
        """Answer every record already taken, then stop the thread and close the journal."""
        for _ in range(100):  # bounded: each round waits for what was outstanding
            self._flush()
            outstanding = [f for w in self._written for f in w.futures] + self._waiting
            outstanding += self._swap[2] if self._swap is not None else []
            if not outstanding:
                break
            await asyncio.gather(*outstanding, return_exceptions=True)
        self._wake.put(None)
        await asyncio.to_thread(self._thread.join, 10)
        os.close(self._fd)

    def _flush(self) -> None:
        """Write this pass's records as one append (held back while a compaction runs)."""
        self._scheduled = self.room_checked = False
        if not self._waiting or self._swap is not None:
            return
        futures, lines = self._waiting, self._lines
        self._waiting, self._lines = [], []
        start = self._size
        try:
            self._write(b"".join(lines))
        except OSError as err:  # the disk full: the journal is cut back to its last record
            self._truncate(start)
            _settle(futures, err)
            return
        self._seq += 1
        self._written.append(_Written(self._seq, self._size, futures))
        if self._idle:
            self._idle = False
            self._wake.put(True)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            self._size += written
            view = view[written:]

    def _truncate(self, size: int) -> None:
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, size)
        self._size = size

    def _run(self) -> None:
        """The thread: fsync while the loop has written more, else sleep until it writes."""
        synced = 0
        while True:
            upto = self._seq
            if upto == synced:
                self._idle = True
                if self._seq == synced:  # nothing came between the look and the flag
                    job = self._wake.get()
                    if job is None:
                        return
                    if callable(job):
                        synced = job()
                self._idle = False
                continue
            try:
                os.fdatasync(self._fd)  # the size is data to fdatasync; the times are not
            except OSError as err:
                self._loop.call_soon_threadsafe(self._synced, upto, err)
            else:
                self._loop.call_soon_threadsafe(self._synced, upto, None)
            synced = upto

    def _synced(self, upto: int, error: OSError | None) -> None:
        """On the loop: answer every record the fsync covered; on an error, cut the journal
        back to what an earlier fsync kept and fail everything after it."""
        self.batches += 1
        if error is not None:
            self._truncate(self._durable)
            _settle([f for w in self._written for f in w.futures], error)
            self._written.clear()
            return
        while self._written and self._written[0].seq <= upto:
            done = self._written.popleft()
            self._durable = done.end
            _settle(done.futures, None)

    def _swap_in(self) -> int:
        """In the thread: write the new journal beside the old one and rename it into place."""
        assert self._swap is not None
        content, covered, _ = self._swap
        try:
            write_atomically(self.path, content)
            fd = _open_append(self.path)
        except OSError as err:
            self._loop.call_soon_threadsafe(self._swapped, covered, err, None)
        else:
            self._loop.call_soon_threadsafe(self._swapped, covered, None, fd)
        return covered

    def _swapped(self, covered: int, error: OSError | None, fd: int | None) -> None:
        """On the loop: the records the snapshot holds are durable with it (or failed)."""
        assert self._swap is not None
        futures, self._swap = self._swap[2], None
        if fd is not None:
            os.close(self._fd)
            self._fd, self._size = fd, os.fstat(fd).st_size
            self._durable = self._size
        while self._written and self._written[0].seq <= covered:
            _settle(self._written.popleft().futures, error)
        _settle(futures, error)
        self._flush()


@dataclass(slots=True)
class _Written:
    """Records written to the journal as one append, waiting for an fsync to cover them."""

    seq: int
    end: int
    futures: list[asyncio.Future[None]]


def _open_append(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)


def _line(obj: dict[str, Any]) -> bytes:
    """One journal record; orjson (a fifth of json.dumps' time), json for text it refuses
    (surrogate-escaped bytes, which json writes as `\\udcXX`)."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError:
        return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


# A pending trigger as the spool keeps it: its JSON and its fingerprint. Bytes and text are not
# objects the garbage collector follows, so 30,000 stalled triggers do not make each full
# collection walk 30,000 dataclasses and their dicts (a 70-160 ms pause measured).
Kept = tuple[bytes, str]


def _kept(trigger: Trigger) -> Kept:
    return _line(trigger.to_json())[:-1], trigger.fingerprint


def _put_line(kept: Kept) -> bytes:
    return b'{"op":"put","trigger":' + kept[0] + b"}\n"


def _revived(kept: Kept) -> Trigger:
    """The trigger again, from what the spool wrote itself."""
    try:
        obj = orjson.loads(kept[0])
    except orjson.JSONDecodeError:  # json's `\\udcXX` for surrogate-escaped bytes
        obj = json.loads(kept[0])
    return Trigger.from_json(obj)


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


def _read_kept(path: Path) -> tuple[dict[str, Kept], Seen, int]:
    pending, seen, records = read_journal(path)
    return {tid: _kept(trigger) for tid, trigger in pending.items()}, seen, records


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
        self._pending: dict[str, Kept] = {}
        self._seen: Seen = {}
        self._bodies: dict[str, str] = {}  # fingerprint -> the trigger id that carried it
        self._inflight: dict[str, asyncio.Future[None]] = {}
        self._ready: asyncio.Queue[str] = asyncio.Queue()  # ids of triggers to hand over
        self._records = 0
        self._writer: _JournalWriter | None = None
        self.listeners: list[SpoolListener] = []
        self._compacting = asyncio.Lock()

    async def open(self) -> None:
        """Replay the journal and queue every trigger a crash left unfinished."""
        for folder in (self.root, self.incoming, self.rejected):
            folder.mkdir(parents=True, exist_ok=True)
        journal = self.root / JOURNAL
        self._pending, self._seen, self._records = await asyncio.to_thread(_read_kept, journal)
        self._writer = _JournalWriter(journal, asyncio.get_running_loop())
        self._index_bodies()
        for trigger_id in self._pending:
            self._ready.put_nowait(trigger_id)
        await self.ingest_incoming()

    async def close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            await writer.close()

    def pending(self) -> list[Trigger]:
        return [_revived(kept) for kept in self._pending.values()]

    def pending_count(self) -> int:
        """How many triggers wait for an outcome (without reading them back)."""
        return len(self._pending)

    def waiting(self, trigger_id: str) -> bool:
        """Taken and without an outcome yet."""
        return trigger_id in self._pending

    def knows(self, trigger_id: str) -> bool:
        return trigger_id in self._pending or trigger_id in self._seen

    def fingerprint(self, trigger_id: str) -> str | None:
        """The fingerprint a known id was taken with (pending or done), else None."""
        if trigger_id in self._pending:
            return self._pending[trigger_id][1]
        if trigger_id in self._seen:
            return self._seen[trigger_id][1]
        return None

    def carried(self, fingerprint: str) -> str | None:
        """The id of a known trigger (pending or done, within retention) with this body."""
        return self._bodies.get(fingerprint) if fingerprint else None

    def _index_bodies(self) -> None:
        """Body fingerprints of every trigger the spool knows, for a replay under a new id."""
        self._bodies = {fp: tid for tid, (_, fp) in self._seen.items() if fp}
        self._bodies |= {fp: tid for tid, (_, fp) in self._pending.items() if fp}

    async def put(self, trigger: Trigger) -> bool:
        """Append and fsync (shared with concurrent puts); False for an id already taken."""
        if trigger.id in self._inflight:
            await asyncio.shield(self._inflight[trigger.id])
            return False
        if self.knows(trigger.id):
            return False
        self._check_room(trigger.id)
        kept = self._pending[trigger.id] = _kept(trigger)
        if trigger.fingerprint:
            self._bodies[trigger.fingerprint] = trigger.id
        future = self._submit([_put_line(kept)])
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
        self._ready.put_nowait(trigger.id)
        return True

    def _check_room(self, trigger_id: str) -> None:
        """SpoolFull unless the disk keeps its reserve: one statvfs answers every put of a loop
        pass, as their records go to the journal in one write (the reserve is 4 MiB)."""
        writer = self._writer
        if writer is not None and writer.room_checked:
            return
        if why := shortage(self.root, FOR_TRIGGERS):
            raise SpoolFull(f"could not persist trigger {trigger_id}: {why}")
        if writer is not None:
            writer.room_checked = True

    async def done(self, trigger_id: str, outcome: str) -> None:
        """The deploy this trigger started has an outcome: the trigger leaves the inbox."""
        kept = self._pending.pop(trigger_id, None)
        if kept is None:
            return
        now, fingerprint = time.time(), kept[1]
        self._seen[trigger_id] = (now, fingerprint)
        record = {"op": "done", "id": trigger_id, "outcome": outcome, "ts": now, "fp": fingerprint}
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
            try:
                await self.compact()
            except OSError as err:  # the old journal is still whole: the trigger stays taken
                log.warning("spool: could not compact the journal (%s); it stays as it is", err)

    async def compact(self) -> None:
        """Rewrite the journal as just the pending triggers and the recently done ids."""
        async with self._compacting:
            await self._compact()

    async def _compact(self) -> None:
        horizon = time.time() - SEEN_RETENTION_S
        self._seen = {tid: seen for tid, seen in self._seen.items() if seen[0] >= horizon}
        self._index_bodies()
        lines = [_put_line(kept) for kept in self._pending.values()]
        lines += [
            _line({"op": "done", "id": i, "ts": ts, "fp": fp}) for i, (ts, fp) in self._seen.items()
        ]
        self._records = len(lines)
        if self._writer is None:
            raise SpoolError("the spool is not open")
        await self._writer.replace(b"".join(lines))

    def _submit(self, lines: list[bytes]) -> asyncio.Future[None]:
        if self._writer is None:
            raise SpoolError("the spool is not open")
        self._records += len(lines)
        return self._writer.append(lines)

    async def receive(self) -> AsyncIterator[Trigger]:
        """Every durable trigger, in order, once: pending ones from before a crash first."""
        while True:
            trigger_id = await self._ready.get()
            if (kept := self._pending.get(trigger_id)) is not None:
                yield _revived(kept)

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
