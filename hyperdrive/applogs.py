"""`hd logs APP --app [-f]` and `ssh … logs APP --app`: what the app's processes print.

Each process's output is in the live ship's run/logs/<type>.log (the in-ship logger keeps it
under 2 MiB, the previous 2 MiB in <type>.log.1: pipeline/processes.py), each cron job's in
`$DATA/lxc/<ship>/cron/<job>.log`. Lines are shown as `<type> | <line>`; the last N of each
file first, then (follow) new lines as they are written, seen with inotify; after a deploy or
a rollback the follow moves to the new live ship (a `hyperdrive | now following …` line).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from hyperdrive.files import OutsideTree, read_inside
from hyperdrive.pipeline import processes
from hyperdrive.watch import FolderWatch

TAIL_BYTES = 256 * 1024
CHUNK = 256 * 1024
FOLLOW_SETTLE_S = 0.05


@dataclass
class Source:
    """One log file: under `root` (never through a link out of it), and how far it was read."""

    name: str
    root: Path
    relative: str
    offset: int = 0

    def tail(self, lines: int) -> list[str]:
        """The last `lines` up to the file's size now; what is written after is new."""
        size = self._size()
        start = max(0, size - TAIL_BYTES)
        try:
            data = read_inside(self.root, self.relative, TAIL_BYTES, offset=start) or b""
        except OutsideTree:
            return [f"{self.name} | [hyperdrive: {self.relative} is a link out: not read]"]
        data = data[: size - start]
        self.offset = start + len(data)
        text = data.decode("utf-8", "replace").splitlines()
        if start:
            text = text[1:]  # begun mid-line
        return [f"{self.name} | {line}" for line in text[-lines:]] if lines else []

    def new_lines(self) -> list[str]:
        """What was written since the last read; a file that shrank was rotated: read anew."""
        size = self._size()
        if size < self.offset:
            self.offset = 0
        try:
            data = read_inside(self.root, self.relative, CHUNK, offset=self.offset)
        except OutsideTree:
            return []
        if not data:
            return []
        whole = data[: data.rfind(b"\n") + 1] if len(data) <= CHUNK else data[:CHUNK]
        self.offset += len(whole)
        text = whole.decode("utf-8", "replace").splitlines()
        return [f"{self.name} | {line}" for line in text]

    def _size(self) -> int:
        try:
            return (self.root / self.relative).lstat().st_size
        except OSError:
            return 0


def sources(ship_dir: Path) -> list[Source]:
    """The live ship's log files: each process (web first), then each cron job."""
    recorded = processes.recorded(ship_dir)
    run = ship_dir / "run"
    found = [Source(name, run, f"logs/{name}.log") for name in recorded.processes]
    found += [Source(j.name, ship_dir, f"cron/{j.name}.log") for j in recorded.cron]
    return found


async def app_output(
    ship_dir: Path, lines: int = 100, follow: bool = False, live: LiveDir | None = None
) -> AsyncIterator[str]:
    """The last `lines` of each file, then (follow) every new line until cancelled; `live`
    (the app's record file, and how to read its live ship's folder) moves the follow to the
    next live ship after a deploy or a rollback."""
    found = await asyncio.to_thread(sources, ship_dir)
    for source in found:
        for line in await asyncio.to_thread(source.tail, lines):
            yield line
    if not follow:
        return
    changed = asyncio.Event()
    watchers = _watch_ship(ship_dir, changed)
    if live is not None:
        name = live.record.name
        watchers.append(asyncio.create_task(_watch(live.record.parent, changed, name.__eq__)))
    try:
        while True:
            await changed.wait()
            changed.clear()
            for source in found:
                while new := await asyncio.to_thread(source.new_lines):
                    for line in new:
                        yield line
            now = await asyncio.to_thread(live.current) if live else ship_dir
            if now is not None and now != ship_dir:  # another ship is live: follow it
                ship_dir, found = now, await asyncio.to_thread(sources, now)
                _cancel(watchers[:2])
                watchers[:2] = _watch_ship(now, changed)
                yield f"hyperdrive | now following {now.name}"
                changed.set()  # what it printed before the switch, from its start
    finally:
        _cancel(watchers)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*watchers, return_exceptions=True)


@dataclass(frozen=True)
class LiveDir:
    """The app's record (`records/apps/<app>.json`: rewritten when its live ship changes)
    and how to read its live ship's folder now."""

    record: Path
    current: Callable[[], Path | None]


def _watch_ship(ship_dir: Path, changed: asyncio.Event) -> list[asyncio.Task[None]]:
    folders = (ship_dir / "run" / "logs", ship_dir / "cron")
    return [asyncio.create_task(_watch(folder, changed, _is_log)) for folder in folders]


def _is_log(name: str) -> bool:
    return name.endswith(".log")


def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()


async def _watch(folder: Path, changed: asyncio.Event, wanted: Callable[[str], bool]) -> None:
    """Set `changed` whenever a `wanted` file changes in `folder`."""
    never = asyncio.Event()
    async with FolderWatch(folder, wanted) as watch:
        async for _ in watch.changes(never, settle=FOLLOW_SETTLE_S):
            changed.set()
