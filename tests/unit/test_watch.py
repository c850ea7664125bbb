"""FolderWatch: inotify on the event loop, for a folder that may not exist yet."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from hyperdrive.watch import FolderWatch, Wanted, every_name

WAIT_S = 5.0


class Rounds:
    """Counts the rounds a running watch yields."""

    def __init__(self) -> None:
        self.count = 0

    async def reach(self, count: int) -> None:
        """Bounded wait until `count` rounds came."""
        async with asyncio.timeout(WAIT_S):
            while self.count < count:
                await asyncio.sleep(0.01)

    async def stays(self, count: int) -> bool:
        """No further round within a short while: nothing wanted happened."""
        await asyncio.sleep(0.3)
        return self.count == count


@asynccontextmanager
async def watching(
    folder: Path, wanted: Wanted = every_name, settle: float = 0.0
) -> AsyncIterator[Rounds]:
    rounds, stop = Rounds(), asyncio.Event()

    async def consume() -> None:
        async with FolderWatch(folder, wanted) as watch:
            started.set()
            async for _ in watch.changes(stop, settle):
                rounds.count += 1

    started = asyncio.Event()
    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), WAIT_S)
    yield rounds
    stop.set()
    await asyncio.wait_for(task, WAIT_S)  # stop ends the watch


async def test_a_wanted_file_makes_a_round_and_others_do_not(tmp_path: Path) -> None:
    async with watching(tmp_path, lambda name: name.endswith(".env")) as rounds:
        (tmp_path / "notes.txt").write_text("ignored")
        assert await rounds.stays(0)
        (tmp_path / "a.env").write_text("KEY=1\n")
        await rounds.reach(1)


async def test_a_rename_into_place_is_seen(tmp_path: Path) -> None:
    async with watching(tmp_path, lambda name: name == "admirals.pub") as rounds:
        (tmp_path / ".admirals.pub.swp").write_text("ssh-ed25519 AAAA")
        os.replace(tmp_path / ".admirals.pub.swp", tmp_path / "admirals.pub")
        await rounds.reach(1)


async def test_a_folder_that_does_not_exist_yet_is_waited_for(tmp_path: Path) -> None:
    folder = tmp_path / "etc" / "hyperdrive"
    async with watching(folder, lambda name: name == "admirals.pub") as rounds:
        folder.mkdir(parents=True)
        await rounds.reach(1)  # the folder appeared: look at what is in it
        await asyncio.sleep(0.1)
        seen = rounds.count
        (folder / "admirals.pub").write_text("key\n")
        await rounds.reach(seen + 1)


async def test_a_removed_and_recreated_folder_is_still_watched(tmp_path: Path) -> None:
    folder = tmp_path / "includes"
    folder.mkdir()
    async with watching(folder) as rounds:
        shutil.rmtree(folder)
        await rounds.reach(1)
        folder.mkdir()
        await rounds.reach(2)
        await asyncio.sleep(0.1)
        seen = rounds.count
        (folder / "a.env").write_text("KEY=2\n")
        await rounds.reach(seen + 1)


async def test_a_burst_settles_into_one_round(tmp_path: Path) -> None:
    async with watching(tmp_path, settle=0.5) as rounds:
        for n in range(20):
            (tmp_path / f"{n}.env").write_text("KEY=1\n")
        await rounds.reach(1)
        assert await rounds.stays(1)
