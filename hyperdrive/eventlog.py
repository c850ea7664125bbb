"""The event log: every fact, one JSON object a line in events.jsonl, fanned out live.

Appends are synchronous and cheap (one write to the page cache); subscribers are async
iterators with bounded queues, so a slow reader never blocks the pipeline or other readers:
it is told how many events it missed instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Protocol

import orjson

from hyperdrive.credentials import strip_userinfo_in
from hyperdrive.files import undo_append
from hyperdrive.masking import mask_event

log = logging.getLogger(__name__)

Event = dict[str, Any]
FIELDS = ("ts", "seq", "event", "app", "sha", "ship", "deploy", "ms", "message")
MAX_LINE = 64 * 1024  # bytes an event line may take: one huge delivery cannot flood the log
CUT_TEXT, CUT_ITEMS = 1024, 16  # what an oversized event keeps of its other strings and lists
SECRET_KEY = re.compile(r"secret|token|signature|password|private", re.IGNORECASE)


_SECOND: list[tuple[int, str]] = [(-1, "")]  # the last whole second stamped, and its text


def now_iso() -> str:
    """UTC with milliseconds: `2026-11-25T14:54:35.123Z`. The text of the second is made once
    per second: a datetime and its isoformat per event cost a delivery ~2 µs."""
    now = time.time()
    second, cached = int(now), _SECOND[0]  # one tuple: a thread never sees half of it
    if cached[0] != second:
        cached = _SECOND[0] = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{cached[1]}.{int((now - second) * 1000):03d}Z"


def parse_since(value: str | float | None) -> float | None:
    """Accept epoch seconds, an ISO time, or a span back from now like `90s`, `10m`, `2h`, `1d`."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    span = re.fullmatch(r"(\d+)([smhd])", value)
    if span:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[span.group(2)]
        return time.time() - int(span.group(1)) * unit
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ValueError(f"cannot read time {value!r}: use 10m, 2h, epoch or ISO 8601") from None


def event_time(event: Mapping[str, Any]) -> float:
    try:
        return datetime.fromisoformat(str(event["ts"]).replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError):
        return 0.0


@dataclass(frozen=True)
class Filter:
    """Which events a reader wants; empty fields match everything."""

    app: str | None = None
    deploy: str | None = None
    since: float | None = None

    def __call__(self, event: Mapping[str, Any]) -> bool:
        if self.app is not None and event.get("app") != self.app:
            return False
        if self.deploy is not None and event.get("deploy") != self.deploy:
            return False
        return self.since is None or event_time(event) >= self.since


def redact(event: Mapping[str, Any]) -> Event:
    """Drop empty fields, mask any field whose name says it holds a secret, and strip the
    userinfo of any URL in a value (the last line of defence for a token in a git URL)."""
    clean: Event = {}
    for key, value in event.items():
        if value is None:
            continue
        clean[key] = "********" if _names_a_secret(key) else strip_userinfo_in(value)
    return clean


@functools.lru_cache(maxsize=1024)
def _names_a_secret(key: str) -> bool:
    """Events use few field names: each is matched once, not on every event."""
    return SECRET_KEY.search(key) is not None


# orjson's own forms of dataclasses and datetimes go to `str`, as json's `default=str` did
_ORJSON = (
    orjson.OPT_APPEND_NEWLINE | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
)


def _encoded(record: Event) -> bytes:
    """One line: orjson (a third of json.dumps' time), json for what orjson refuses
    (surrogate-escaped text, integers past 64 bits, keys that are not text)."""
    try:
        return orjson.dumps(record, default=str, option=_ORJSON)
    except orjson.JSONEncodeError:
        return json.dumps(record, separators=(",", ":"), default=str).encode() + b"\n"


def capped(record: Event, limit: int = MAX_LINE) -> tuple[Event, bytes]:
    """The record and its line, at most `limit` bytes: a longer one keeps its fixed fields,
    its other strings and lists are cut, and its message is cut last, saying so."""
    line = _encoded(record)
    if len(line) <= limit:
        return record, line
    note = f" [cut: this event was {len(line)} bytes; the log keeps {limit // 1024} KiB a line]"
    small: Event = {k: _shortened(v) if k not in FIELDS else v for k, v in record.items()}
    message = str(record.get("message", ""))
    keep = len(message)
    for _ in range(64):  # bounded; escapes (\uXXXX) are why one cut may not be enough
        small["message"] = message[:keep] + note
        line = _encoded(small)
        if len(line) <= limit:
            return small, line
        if keep == 0:
            break
        keep = max(0, keep - (len(line) - limit))
    bare: Event = {k: record[k] for k in FIELDS if k in record and k != "message"}
    bare["message"] = note.strip()
    return bare, _encoded(bare)


def _shortened(value: Any) -> Any:
    """A non-fixed field of an oversized event: long strings and lists cut, with a count."""
    if isinstance(value, str) and len(value) > CUT_TEXT:
        return value[:CUT_TEXT] + f"… ({len(value) - CUT_TEXT} more characters cut)"
    if isinstance(value, list | tuple) and len(value) > CUT_ITEMS:
        return [*value[:CUT_ITEMS], f"… ({len(value) - CUT_ITEMS} more items cut)"]
    if isinstance(value, dict) and len(_encoded(value)) > CUT_TEXT:
        return _shortened(json.dumps(value, default=str))
    return value


class EventSink(Protocol):
    """Append / subscribe: what the pipeline needs; the seam a fleet transport replaces."""

    def append(self, event: Mapping[str, Any]) -> Event: ...

    def subscribe(self, where: Filter = ...) -> Subscription: ...


class EventLog(EventSink, Protocol):
    """Append / subscribe / read: what readers of history (the API, `ssh … logs`, followers)
    type against; a JSONL file here, a JetStream stream in a fleet."""

    def read(self, where: Filter = ..., *, last: int | None = None) -> AsyncIterator[Event]:
        """Stored events that match, oldest first (`last`: only the newest N); never blocks
        the event loop."""
        ...

    @property
    def appended(self) -> int:
        """Events appended since start (for /metrics)."""
        ...

    @property
    def subscribers(self) -> int:
        """Live readers now (for /metrics)."""
        ...


async def tail(
    log: EventLog, where: Filter, *, history: int | None = 100, follow: bool = False
) -> AsyncIterator[Event]:
    """The last `history` matching events (None = all), then, with follow, live ones: no
    event twice, none lost between the two (the live reader is subscribed first)."""
    with contextlib.ExitStack() as stack:
        live = stack.enter_context(log.subscribe(where)) if follow else None
        last = 0
        async for event in log.read(where, last=history):
            last = int(event.get("seq", 0))
            yield event
        if live is None:
            return
        async for event in live:
            if int(event.get("seq", last + 1)) > last or event["event"] == "EventsMissed":
                yield event


class Subscription:
    """A live reader: an async iterator over matching events with a bounded queue."""

    def __init__(self, where: Filter, maxsize: int, on_close: Callable[[Subscription], None]):
        self.where = where
        self.maxsize = maxsize
        self.missed = 0
        self._queue: deque[Event] = deque()
        self._wake = asyncio.Event()
        self._on_close = on_close
        self.closed = False

    def offer(self, event: Event) -> None:
        if self.closed or not self.where(event):
            return
        room = self.maxsize - len(self._queue) - (1 if self.missed else 0)
        if room <= 0:
            self.missed += 1
            return
        if self.missed:
            self._queue.append(gap_marker(self.missed))
            self.missed = 0
        self._queue.append(event)
        self._wake.set()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        while not self._queue:
            if self.missed:  # caught up after falling behind: say so now, not at the next event
                missed, self.missed = self.missed, 0
                return gap_marker(missed)
            if self.closed:
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()
        return self._queue.popleft()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._wake.set()
            self._on_close(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def gap_marker(missed: int) -> Event:
    return {
        "ts": now_iso(),
        "event": "EventsMissed",
        "missed": missed,
        "message": f"{missed} events skipped: this reader fell behind",
    }


Position = tuple[int, int]  # (generation of the file, byte offset in it)
BATCH = 2_000  # events read per trip to a worker thread


class JsonlEventLog:
    """Append-only JSONL with size-based rotation (`events.jsonl.1` … `.N`) and live fan-out.

    An index in memory (deploy id → where its first event is) lets a follower of one deploy
    seek straight to it; history is read in worker threads, a batch at a time.
    """

    def __init__(
        self,
        path: Path,
        max_bytes: int = 64 << 20,
        keep: int = 5,
        queue: int = 10_000,
        mask: Callable[[str], str] | None = None,
    ):
        self.path = path
        self.mask = mask  # the squadron's secrets out of every event: the one chokepoint
        self.max_bytes = max_bytes
        self.keep = keep
        self.queue = queue
        self.seq = 0
        self._fh: IO[bytes] | None = None
        self._size = 0
        self._subscribers: list[Subscription] = []
        self.appended = 0
        self._generation = 0  # the live file's; a rotated file `.n` is `generation - n`
        self._first: dict[str, Position] = {}
        self._indexed = asyncio.Event()
        self._indexing: asyncio.Task[None] | None = None
        self._partial = False  # the start-up scan failed: a deploy not in the index may be stored

    def open(self) -> None:
        """Open for append; a torn last line from a crash is ended so new lines stay whole.

        The index of stored deploys is built by one scan: in a worker thread when an event
        loop runs (reads of one deploy wait for it), else at once."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "ab")  # noqa: SIM115 - held for the daemon's life
        self._size = self._fh.tell()
        if self._size and _last_byte(self.path) != b"\n":
            self._fh.write(b"\n")
            self._fh.flush()
            self._size += 1
        self.seq = _last_seq(self.files())
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self._merge(_index(self._generations()))
            self._indexed.set()
            return
        self._indexing = asyncio.create_task(self._build_index(), name="event log index")

    async def _build_index(self) -> None:
        """An unreadable file leaves the index partial: reads of one deploy then scan it all."""
        try:
            self._merge(await asyncio.to_thread(_index, self._generations()))
        except OSError as err:
            log.warning("event log index not built (%s): deploy reads scan the whole log", err)
            self._partial = True
        finally:
            self._indexed.set()

    def _merge(self, found: Mapping[str, Position]) -> None:
        """Keep the earliest position of each deploy: appends made during the scan are later."""
        for deploy, position in found.items():
            known = self._first.get(deploy)
            if known is None or position < known:
                self._first[deploy] = position

    def close(self) -> None:
        for sub in list(self._subscribers):
            sub.close()
        if self._indexing is not None:
            self._indexing.cancel()
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def append(self, event: Mapping[str, Any]) -> Event:
        """Stamp, write and fan out one event; never blocks on a subscriber."""
        if self._fh is None:
            raise RuntimeError("event log is not open")
        self.seq += 1
        stamped = {"ts": now_iso(), "seq": self.seq, **event}
        if self.mask is not None:
            stamped = mask_event(stamped, self.mask)
        record, line = capped(redact(stamped))
        if self._size + len(line) > self.max_bytes and self._size:
            self._rotate()
        deploy = record.get("deploy")
        if isinstance(deploy, str) and deploy not in self._first:
            self._first[deploy] = (self._generation, self._size)
        try:
            self._fh.write(line)
            self._fh.flush()
        except OSError as err:  # the disk full: followers still see it; the file stays whole
            self._fh = undo_append(self._fh, self.path, self._size)
            log.warning("event log: %s not stored (%s)", record.get("event"), err)
        else:
            self._size += len(line)
        self.appended += 1
        for sub in self._subscribers:
            sub.offer(record)
        return record

    def _rotate(self) -> None:
        """events.jsonl → .1 → .2 …; the oldest beyond `keep` is dropped. No line is lost."""
        assert self._fh is not None
        self._fh.close()
        for n in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._fh = open(self.path, "ab")  # noqa: SIM115
        self._size = 0
        self._generation += 1
        oldest = self._generation - self.keep
        self._first = {d: p for d, p in self._first.items() if p[0] >= oldest}

    def files(self) -> list[Path]:
        """Oldest first: the rotated files, then the live one."""
        return [path for _, path in self._generations()]

    def _generations(self) -> list[tuple[int, Path]]:
        rotated = [
            (n, self.path.with_name(f"{self.path.name}.{n}")) for n in range(self.keep, 0, -1)
        ]
        named = [*rotated, (0, self.path)]
        return [(self._generation - n, path) for n, path in named if path.exists()]

    def stored(self, where: Filter | None = None) -> Iterator[Event]:
        """Every stored event that matches, oldest first, read here and now (tests, tools);
        unreadable (torn) lines are skipped. The daemon reads with `read`."""
        return _scan(self._generations(), where or Filter(), None, self.mask)

    async def read(
        self, where: Filter | None = None, *, last: int | None = None
    ) -> AsyncIterator[Event]:
        """Stored events that match, oldest first (`last`: the newest N), read in worker
        threads; one deploy's are read from its first event on, not from the start."""
        where = where or Filter()
        if last == 0:
            return
        start: Position | None = None
        if where.deploy is not None:
            await self._indexed.wait()
            start = self._first.get(where.deploy)
            if start is None and not self._partial:
                return  # nothing stored for it: no file is read at all
        events = _scan(self._generations(), where, start, self.mask)
        if last is not None:
            for event in await asyncio.to_thread(lambda: list(deque(events, maxlen=last))):
                yield event
            return
        reader = _Batches(events)
        try:
            while batch := await asyncio.to_thread(reader.take, BATCH):
                for event in batch:
                    yield event
        finally:
            reader.close()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def subscribe(self, where: Filter | None = None) -> Subscription:
        sub = Subscription(where or Filter(), self.queue, self._subscribers.remove)
        self._subscribers.append(sub)
        return sub


def _scan(
    files: list[tuple[int, Path]],
    where: Filter,
    start: Position | None,
    mask: Callable[[str], str] | None = None,
) -> Generator[Event, None, None]:
    """Matching events of `files` (generation, path), from `start` on, masked again (a value
    that became a secret after its event was written is hidden too). Every file is opened
    first, so a rotation while this runs moves no line out of reach."""
    handles = []
    try:
        for generation, path in files:
            if start is not None and generation < start[0]:
                continue
            with contextlib.suppress(FileNotFoundError):
                handles.append((generation, open(path, "rb")))  # noqa: SIM115 - closed below
        needle = _needle(where)
        for generation, fh in handles:
            if start is not None and generation == start[0]:
                fh.seek(start[1])
            for raw in fh:
                if needle is not None and needle not in raw:
                    continue  # cannot be that deploy's: not worth parsing
                event = _parse_line(raw)
                if event is not None and where(event):
                    yield _masked_again(event, raw, mask)
    finally:
        for _, fh in handles:
            fh.close()


def _needle(where: Filter) -> bytes | None:
    """Bytes every line of the wanted deploy holds: its id, which JSON writes as it is (ids
    have no character JSON escapes). Reading one deploy then parses only its own lines."""
    deploy = where.deploy
    if deploy is None or not re.fullmatch(r"[A-Za-z0-9._:-]+", deploy):
        return None
    return deploy.encode()


def _masked_again(event: Event, raw: bytes, mask: Callable[[str], str] | None) -> Event:
    """The stored event, masked when its line holds a secret: the line is JSON, and a secret
    in a value shows there as is or JSON-escaped, both forms the mask knows."""
    if mask is None:
        return event
    line = raw.decode("utf-8", "replace")
    return event if mask(line) == line else mask_event(event, mask)


class _Batches:
    """Stored events read in worker threads, a batch at a time. A reader cancelled while a
    thread is in a batch must not close the files under it: the last one out closes them."""

    def __init__(self, events: Generator[Event]) -> None:
        self.events = events
        self.lock = threading.Lock()

    def take(self, count: int) -> list[Event]:
        with self.lock:
            return list(itertools.islice(self.events, count))

    def close(self) -> None:
        if not self.lock.acquire(blocking=False):  # a thread is still reading: it closes
            threading.Thread(target=self._close_after, daemon=True).start()
            return
        try:
            self.events.close()
        finally:
            self.lock.release()

    def _close_after(self) -> None:
        with self.lock:
            self.events.close()


def _index(files: list[tuple[int, Path]]) -> dict[str, Position]:
    """Where each deploy's first event is: one pass over the stored files."""
    first: dict[str, Position] = {}
    for generation, path in files:
        with contextlib.suppress(FileNotFoundError), open(path, "rb") as fh:
            offset = 0
            for raw in fh:
                if b'"deploy"' in raw:
                    event = _parse_line(raw)
                    deploy = event.get("deploy") if event else None
                    if isinstance(deploy, str) and deploy not in first:
                        first[deploy] = (generation, offset)
                offset += len(raw)
    return first


def _last_seq(files: list[Path]) -> int:
    """The newest `seq` stored: read back from the end of the newest file that has one."""
    for path in reversed(files):
        with open(path, "rb") as fh:
            size, chunk = fh.seek(0, os.SEEK_END), 1 << 16
            while True:
                fh.seek(max(0, size - chunk))
                for raw in reversed(fh.read().split(b"\n")):
                    event = _parse_line(raw)
                    if event is not None and isinstance(event.get("seq"), int):
                        return int(event["seq"])
                if chunk >= size:
                    break
                chunk *= 4
    return 0


def _parse_line(raw: bytes) -> Event | None:
    try:
        event = json.loads(raw)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1)
