"""`hd logs APP --app [-f]` and `ssh … logs APP --app`: what the app's processes print.

Each process's output is in the live ship's run/logs/<type>.log (the in-ship logger keeps it
under 2 MiB, the previous 2 MiB in <type>.log.1: pipeline/processes.py), each cron job's in
`$DATA/lxc/<ship>/cron/<job>.log`. Lines are shown as `<type> | <line>`; the last N of each
file first, then (follow) new lines as they are written, seen with inotify. Following stays on
the ship that was live when it began: after a deploy, run it again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
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


async def app_output(ship_dir: Path, lines: int = 100, follow: bool = False) -> AsyncIterator[str]:
    """The last `lines` of each file, then (follow) every new line until cancelled."""
    found = await asyncio.to_thread(sources, ship_dir)
    for source in found:
        for line in await asyncio.to_thread(source.tail, lines):
            yield line
    if not follow:
        return
    changed = asyncio.Event()
    watchers = [
        asyncio.create_task(_watch(folder, changed))
        for folder in (ship_dir / "run" / "logs", ship_dir / "cron")
    ]
    try:
        while True:
            await changed.wait()
            changed.clear()
            for source in found:
                for line in await asyncio.to_thread(source.new_lines):
                    yield line
    finally:
        for task in watchers:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*watchers, return_exceptions=True)


async def _watch(folder: Path, changed: asyncio.Event) -> None:
    never = asyncio.Event()
    async with FolderWatch(folder, lambda name: name.endswith(".log")) as watch:
        async for _ in watch.changes(never, settle=FOLLOW_SETTLE_S):
            changed.set()
