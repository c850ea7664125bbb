"""Watch one folder with inotify on the event loop: nothing wakes up while nothing changes.

The inotify file descriptor is registered with `loop.add_reader`, so an idle watch costs no
thread, no timer and no CPU, and a change is seen as soon as the kernel reports it (watchfiles'
loop woke every `step` ms to look). The folder may not exist yet: then its nearest existing
ancestor is watched until it appears, and a folder that is removed is waited for again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import TracebackType

from inotify_simple import INotify
from inotify_simple import flags as f

log = logging.getLogger(__name__)

# what happens to a file in the folder: written, renamed in or out, created, removed
FILE_MASK = f.CLOSE_WRITE | f.MOVED_TO | f.MOVED_FROM | f.CREATE | f.DELETE | f.MODIFY
# a complete file arrived (written and closed, or renamed into place)
ARRIVALS = f.CLOSE_WRITE | f.MOVED_TO
# the watched folder itself went away (IGNORED comes unasked): wait for it again
SELF_MASK = f.DELETE_SELF | f.MOVE_SELF | f.ONLYDIR
GONE = f.DELETE_SELF | f.MOVE_SELF | f.IGNORED
# while the folder is missing: a sub-folder appears in its nearest existing ancestor
APPEARS_MASK = f.CREATE | f.MOVED_TO

Wanted = Callable[[str], bool]


def every_name(name: str) -> bool:
    return True


class FolderWatch:
    """`async with FolderWatch(folder) as watch: async for _ in watch.changes(stop): …`.

    Each round of `changes()` means "something you care about may have changed: look again";
    many kernel events between two rounds make one round.
    """

    def __init__(self, folder: Path, wanted: Wanted = every_name, mask: int = FILE_MASK) -> None:
        self.folder = folder
        self.wanted = wanted
        self.mask = mask
        self._inotify: INotify | None = None
        self._folder_wd: int | None = None
        self._ancestor: tuple[int, str] | None = None  # (watch, the child to wait for)
        self._dirty = asyncio.Event()

    async def __aenter__(self) -> FolderWatch:
        self._inotify = INotify(nonblocking=True)
        self._arm()
        asyncio.get_running_loop().add_reader(self._inotify.fileno(), self._readable)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._inotify is not None:
            asyncio.get_running_loop().remove_reader(self._inotify.fileno())
            self._inotify.close()
            self._inotify = None

    async def changes(self, stop: asyncio.Event, settle: float = 0.0) -> AsyncIterator[None]:
        """One round per burst of changes until `stop` is set; `settle` seconds after the
        first change gather the rest of a burst (an editor's write, rename and chmod)."""
        while await self._changed_or_stopped(stop):
            if settle:
                await asyncio.sleep(settle)  # runs only after a change, never while idle
            self._dirty.clear()
            yield

    async def _changed_or_stopped(self, stop: asyncio.Event) -> bool:
        if not self._dirty.is_set() and not stop.is_set():
            changed = asyncio.ensure_future(self._dirty.wait())
            stopped = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({changed, stopped}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()
                stopped.cancel()
        return not stop.is_set()

    def _arm(self) -> None:
        """Watch the folder, or while it is missing the nearest ancestor that exists."""
        assert self._inotify is not None
        for wd in (self._folder_wd, self._ancestor[0] if self._ancestor else None):
            if wd is not None:
                with contextlib.suppress(OSError):  # already gone with its folder
                    self._inotify.rm_watch(wd)
        self._folder_wd, self._ancestor = None, None
        child = self.folder
        while True:
            mask = SELF_MASK | (self.mask if child == self.folder else APPEARS_MASK)
            try:
                wd = self._inotify.add_watch(child, mask)
                break
            except (FileNotFoundError, NotADirectoryError):
                child = child.parent
        if child == self.folder:
            self._folder_wd = wd
        else:
            waited = self.folder.relative_to(child).parts[0]
            self._ancestor = (wd, waited)

    def _readable(self) -> None:
        """The kernel has events: note whether any concerns a wanted name (or the folder)."""
        assert self._inotify is not None
        try:
            events = self._inotify.read(timeout=0)
        except OSError as err:  # never leaves the loop spinning on an unreadable fd
            log.warning("inotify on %s: %s", self.folder, err)
            events = []
        rearm = False
        for event in events:
            if event.mask & f.Q_OVERFLOW:
                self._dirty.set()  # events were lost: look at everything again
            elif event.wd == self._folder_wd:
                rearm |= bool(event.mask & GONE)
                if event.name and self.wanted(event.name):
                    self._dirty.set()
            elif self._ancestor and event.wd == self._ancestor[0]:
                rearm |= event.name == self._ancestor[1] or bool(event.mask & GONE)
        if rearm:
            self._arm()
            self._dirty.set()  # the folder (re)appeared: what is in it now is news
