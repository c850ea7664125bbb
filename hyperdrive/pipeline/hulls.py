"""Hulls: the stopped base containers ships are snapshotted from, built on first need.

Hulls are versioned (`<name>-hull-<kind>-<n>`): assembling again makes a new version that new
ships use, while old ships keep the one they were snapshotted from.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Protocol

from hyperdrive.errors import DeployError
from hyperdrive.lxc_async import Lxc
from hyperdrive.network import write_atomically
from hyperdrive.pipeline import events as ev

BUILDERS = ("busybox",)


class Emitter(Protocol):
    def emit(self, event: ev.Event) -> None: ...


class Hulls:
    """Which hull version is current for each kind, in `records/hulls.json`."""

    def __init__(self, name: str, lxc: Lxc, records_file: Path) -> None:
        self.name = name
        self.lxc = lxc
        self.records_file = records_file
        self._locks: dict[str, asyncio.Lock] = {}

    def _load(self) -> dict[str, int]:
        try:
            data = json.loads(self.records_file.read_text())
        except (OSError, ValueError):
            return {}
        return {k: int(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def container(self, kind: str, version: int) -> str:
        return f"{self.name}-hull-{kind}-{version}"

    def current(self, kind: str) -> str | None:
        version = self._load().get(kind)
        return self.container(kind, version) if version else None

    async def ensure(self, kind: str, out: Emitter) -> str:
        """The current hull of `kind`, assembled now if there is none."""
        async with self._locks.setdefault(kind, asyncio.Lock()):
            current = self.current(kind)
            if current is not None and await self.lxc.exists(current):
                return current
            return await self._build(kind, out)

    async def assemble(self, kind: str, out: Emitter) -> str:
        """Build a new version of `kind` and make it current."""
        async with self._locks.setdefault(kind, asyncio.Lock()):
            return await self._build(kind, out)

    async def _build(self, kind: str, out: Emitter) -> str:
        if kind not in BUILDERS:
            raise DeployError("assemble", f"hull {kind!r} is not assembled here: run hd assemble")
        versions = self._load()
        version = versions.get(kind, 0) + 1
        name = self.container(kind, version)
        out.emit(
            ev.HullBuildStarted(
                hull=name, message=f"hull '{name}' is missing and will now be created"
            )
        )
        t0 = time.monotonic()
        await self.lxc.destroy(name)
        await self.lxc.create_busybox_hull(name)
        write_atomically(self.records_file, json.dumps({**versions, kind: version}))
        ms = int((time.monotonic() - t0) * 1000)
        out.emit(ev.HullAssembled(hull=name, ms=ms, message=f"hull '{name}' ready"))
        return name
