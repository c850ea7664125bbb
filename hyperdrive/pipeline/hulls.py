"""Hulls: the stopped base containers ships are snapshotted from, built on first need.

Hulls are versioned (`<name>-hull-<kind>-<n>`): assembling again makes a new version that new
ships use, while old ships keep the one they were snapshotted from; `prune` destroys a version
that is no longer current once no ship is left on it. `records/hulls.json` names the current
version of each kind; `$DATA/lxc/<hull>/setup.log` holds a hull build's output.

A kind has at most one build under way: whoever needs that kind meanwhile (a deploy, the
background build at the daemon's first start) waits for the same build and hears its progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyperdrive.config import KNOWN_HULLS
from hyperdrive.errors import DeployError, HyperdriveError
from hyperdrive.files import write_atomically
from hyperdrive.pipeline import events as ev
from hyperdrive.pipeline.events import Emitter
from hyperdrive.pipeline.ports import ContainerRuntime, HullBuilder
from hyperdrive.runtimes import KNOWN

BUILDERS = KNOWN_HULLS
# Built at the daemon's first start: busybox takes 0.3 s on first need, Debian a minute or more.
BACKGROUND = ("debian", "debian-13")


@dataclass
class _Build:
    """A hull build under way: who hears its events, and how far it is."""

    hull: str
    started: float  # epoch
    listeners: list[Emitter] = field(default_factory=list)
    background: Emitter | None = None  # hears the events only while nobody else does
    last: ev.HullBuildProgress | None = None
    task: asyncio.Task[str] | None = None

    def emit(self, event: ev.Event) -> None:
        if isinstance(event, ev.HullBuildProgress):
            self.last = event
        targets = list(self.listeners)
        if not targets and self.background is not None:
            targets = [self.background]
        for listener in targets:
            listener.emit(event)

    def joined(self) -> ev.HullBuildStarted:
        """What a newcomer is told: the build under way, how far it is."""
        done = f"{self.last.percent}%: {self.last.step}" if self.last else "starting"
        message = f"hull '{self.hull}' is being built ({done}): waiting for it"
        return ev.HullBuildStarted(hull=self.hull, message=message)


class Hulls:
    """Which hull version is current for each kind, and building, finding and pruning them."""

    def __init__(
        self, name: str, runtime: ContainerRuntime, builder: HullBuilder, records_file: Path
    ) -> None:
        self.name = name
        self.runtime = runtime
        self.builder = builder
        self.records_file = records_file
        self._builds: dict[str, _Build] = {}

    def _records(self) -> dict[str, dict[str, Any]]:
        """records/hulls.json: `{kind: {"version": 3, "runtimes": {"python": "3.11.2"}}}`
        (a bare version number, as older releases wrote it, is read too)."""
        try:
            data = json.loads(self.records_file.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        rows = {k: v if isinstance(v, dict) else {"version": v} for k, v in data.items()}
        return {k: v for k, v in rows.items() if isinstance(v.get("version"), int)}

    def _load(self) -> dict[str, int]:
        return {kind: row["version"] for kind, row in self._records().items()}

    def runtimes(self, kind: str) -> dict[str, str]:
        """The runtime versions `kind` carries: measured at its build, else the known defaults
        (a kind not built yet is chosen by what its build will have)."""
        measured = self._records().get(kind, {}).get("runtimes")
        if isinstance(measured, dict) and measured:
            return {str(k): str(v) for k, v in measured.items()}
        return dict(KNOWN.get(kind, {}))

    def in_use(self, asked: Iterable[str]) -> list[str]:
        """The kinds built here before and those `asked` for, in BUILDERS order."""
        kinds = set(self._load()) | set(asked)
        return [kind for kind in BUILDERS if kind in kinds]

    def offers(self) -> dict[str, dict[str, str]]:
        """Every hull kind's runtime versions, for choosing one (runtimes.choose_hull)."""
        return {kind: self.runtimes(kind) for kind in BUILDERS}

    def container(self, kind: str, version: int) -> str:
        return f"{self.name}-hull-{kind}-{version}"

    def current(self, kind: str) -> str | None:
        version = self._load().get(kind)
        return self.container(kind, version) if version else None

    def setup_log(self, hull: str) -> Path:
        return self.builder.setup_log(hull)

    def versions(self, kind: str, names: Iterable[str] | None = None) -> list[int]:
        """Every version of `kind` that exists on the lxcpath (or among `names`), oldest first."""
        pattern = re.compile(rf"{re.escape(self.name)}-hull-{re.escape(kind)}-([0-9]+)")
        listed = self.runtime.names() if names is None else names
        matches = (pattern.fullmatch(name) for name in listed)
        return sorted(int(m.group(1)) for m in matches if m)

    async def ensure(self, kind: str, out: Emitter) -> str:
        """The current hull of `kind`; when there is none, the build under way or a new one."""
        current = self.current(kind)
        if current is not None and await self._usable(current):
            return current
        build = self._builds.get(kind)
        if build is None:
            build = self._start(kind, f"{self._why_build(current)} and will now be created")
        else:
            out.emit(build.joined())
        return await self._join(build, out)

    async def assemble(self, kind: str, out: Emitter, *, fresh: bool = False) -> str:
        """Build a new version of `kind` and make it current (ships keep the one they have);
        `fresh`: from the mirror, not from the kept Debian tree."""
        under_way = self._builds.get(kind)
        if under_way is not None:
            out.emit(under_way.joined())
            with contextlib.suppress(HyperdriveError):
                await self._join(under_way, out)
        return await self._join(self._start(kind, "is being assembled", fresh=fresh), out)

    async def prepare(self, kind: str, out: Emitter) -> bool:
        """At start-up: build `kind` in the background when it has no version yet, so the first
        push does not wait for all of it. `out` hears the build while no deploy waits for it."""
        if kind not in BACKGROUND or kind in self._builds:
            return False
        current = self.current(kind)
        if current is not None and await self._usable(current):
            return False
        why = f"{self._why_build(current)} and is being built in the background"
        self._start(kind, why, background=out)
        return True

    async def _usable(self, hull: str) -> bool:
        """The hull exists and was made for ships as they run now (unprivileged)."""
        return await self.runtime.exists(hull) and self.builder.fits(hull)

    def _why_build(self, current: str | None) -> str:
        if current is not None and current in self.runtime.names():
            return f"replaces '{current}' (made for privileged ships)"
        return "is missing"

    def status(self) -> dict[str, Any]:
        """For `hd status`: each kind's current version and the build under way, if any."""
        rows: dict[str, Any] = {}
        for kind in BUILDERS:
            build = self._builds.get(kind)
            building = None
            if build is not None:
                last = build.last
                building = {
                    "hull": build.hull,
                    "percent": last.percent if last else 0,
                    "step": last.step if last else "starting",
                    "seconds": int(time.time() - build.started),
                }
            current = self.current(kind)
            runtimes = self.runtimes(kind) if current else {}
            rows[kind] = {"current": current, "building": building, "runtimes": runtimes}
        return rows

    async def close(self) -> None:
        """Stop the builds under way (each cleans up after itself); they start again when
        needed, and a deploy that waited for one stays in the spool for the next start."""
        tasks = [b.task for b in self._builds.values() if b.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _start(
        self, kind: str, why: str, *, fresh: bool = False, background: Emitter | None = None
    ) -> _Build:
        """Begin the one build of `kind` (none may be under way) as a task of its own."""
        if kind not in BUILDERS:
            raise DeployError("assemble", f"there is no hull {kind!r}: use {' or '.join(BUILDERS)}")
        records = self._load()
        version = max([records.get(kind, 0), *self.versions(kind)]) + 1
        build = _Build(self.container(kind, version), time.time(), background=background)
        self._builds[kind] = build
        build.task = asyncio.create_task(self._build(kind, version, build, why, fresh))
        build.task.add_done_callback(_retrieve)
        return build

    async def _join(self, build: _Build, out: Emitter) -> str:
        """Wait for the build, hearing its events; leaving (a superseded deploy) stops only
        the waiting, not the build."""
        assert build.task is not None
        build.listeners.append(out)
        try:
            return await asyncio.shield(build.task)
        finally:
            build.listeners.remove(out)

    async def prune(self, ships_in_use: Iterable[str], out: Emitter | None = None) -> list[str]:
        """Destroy hull versions that are not current and that no ship in use was made from.
        Every deploy ends here: the ships' configs are read only when an old version is left,
        and the lxcpath is listed once (both grow with the squadron)."""
        names, current = self.runtime.names(), self._load()
        old = [
            (kind, version)
            for kind in BUILDERS
            if kind not in self._builds  # a build is under way: its half-made version is new
            for version in self.versions(kind, names)
            if version != current.get(kind)
        ]
        used = {self.hull_of(ship) for ship in ships_in_use} if old else set()
        retired = []
        for kind, version in old:
            hull = self.container(kind, version)
            if hull not in used and not self._has_clones(hull):
                with contextlib.suppress(HyperdriveError):
                    await self.runtime.destroy(hull)
                    retired.append(hull)
                    if out is not None:
                        message = f"hull '{hull}' destroyed: not current and no ship uses it"
                        out.emit(ev.HullRetired(hull=hull, message=message))
        return retired

    def hull_of(self, ship: str) -> str | None:
        """The hull an overlay ship was snapshotted from."""
        return self.runtime.snapshot_source(ship)

    def _has_clones(self, hull: str) -> bool:
        return self.runtime.has_snapshots(hull)

    async def _build(self, kind: str, version: int, build: _Build, why: str, fresh: bool) -> str:
        name = build.hull
        try:
            return await self._make(kind, version, build, why, fresh)
        except asyncio.CancelledError:
            message = f"hull '{name}': build stopped with the daemon; it starts again when needed"
            build.emit(
                ev.HullBuildFailed(hull=name, log=str(self.setup_log(name)), message=message)
            )
            raise
        except HyperdriveError as err:
            build.emit(
                ev.HullBuildFailed(hull=name, log=str(self.setup_log(name)), message=str(err))
            )
            raise
        finally:
            if self._builds.get(kind) is build:
                del self._builds[kind]

    async def _make(self, kind: str, version: int, build: _Build, why: str, fresh: bool) -> str:
        """Create the container (a failure leaves nothing of it behind), then make it current."""
        name, t0 = build.hull, time.monotonic()
        await self.runtime.destroy(name)
        how = await self.builder.build(kind, name, why, fresh, build.emit)
        runtimes = await self.builder.runtimes(kind, name)
        row = {"version": version, "runtimes": runtimes}
        write_atomically(self.records_file, json.dumps({**self._records(), kind: row}))
        ms = int((time.monotonic() - t0) * 1000)
        message = f"hull '{name}' ready in {ms} ms ({how})"
        build.emit(ev.HullAssembled(hull=name, ms=ms, message=message))
        return name


def _retrieve(task: asyncio.Task[str]) -> None:
    """A build nobody waited for (the background one) must not warn 'never retrieved'."""
    if not task.cancelled():
        task.exception()
