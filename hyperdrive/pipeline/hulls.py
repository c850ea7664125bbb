"""Hulls: the stopped base containers ships are snapshotted from, built on first need.

Hulls are versioned (`<name>-hull-<kind>-<n>`): assembling again makes a new version that new
ships use, while old ships keep the one they were snapshotted from; `prune` destroys a version
that is no longer current once no ship is left on it. `records/hulls.json` names the current
version of each kind; `$DATA/lxc/<hull>/setup.log` holds a hull build's output.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol

from hyperdrive.errors import ContainerError, DeployError, HyperdriveError
from hyperdrive.hull_debian import DebianHullBuild, Progress, mirror_from
from hyperdrive.lxc_async import Lxc
from hyperdrive.network import write_atomically
from hyperdrive.pipeline import events as ev

BUILDERS = ("busybox", "debian")


class Emitter(Protocol):
    def emit(self, event: ev.Event) -> None: ...


class Hulls:
    """Which hull version is current for each kind, and building, finding and pruning them."""

    def __init__(
        self,
        name: str,
        lxc: Lxc,
        records_file: Path,
        *,
        logs: Path | None = None,
        mirror: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.lxc = lxc
        self.records_file = records_file
        # $DATA/lxc: records_file is $DATA/records/hulls.json
        self.logs = logs or records_file.parent.parent / "lxc"
        self.mirror = mirror or mirror_from(os.environ if environ is None else environ)
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

    def setup_log(self, hull: str) -> Path:
        return self.logs / hull / "setup.log"

    def versions(self, kind: str) -> list[int]:
        """Every version of `kind` that exists on the lxcpath, oldest first."""
        pattern = re.compile(rf"{re.escape(self.name)}-hull-{re.escape(kind)}-([0-9]+)")
        found = []
        with contextlib.suppress(FileNotFoundError):
            for entry in self.lxc.lxcpath.iterdir():
                match = pattern.fullmatch(entry.name)
                if match and (entry / "config").is_file():
                    found.append(int(match.group(1)))
        return sorted(found)

    async def ensure(self, kind: str, out: Emitter) -> str:
        """The current hull of `kind`, assembled now if there is none."""
        async with self._locks.setdefault(kind, asyncio.Lock()):
            current = self.current(kind)
            if current is not None and await self.lxc.exists(current):
                return current
            return await self._build(kind, out, "is missing and will now be created")

    async def assemble(self, kind: str, out: Emitter) -> str:
        """Build a new version of `kind` and make it current (ships keep the one they have)."""
        async with self._locks.setdefault(kind, asyncio.Lock()):
            return await self._build(kind, out, "is being assembled")

    async def prune(self, ships_in_use: Iterable[str], out: Emitter | None = None) -> list[str]:
        """Destroy hull versions that are not current and that no ship in use was made from."""
        used = {self.hull_of(ship) for ship in ships_in_use}
        retired = []
        for kind in BUILDERS:
            if self._locks.setdefault(kind, asyncio.Lock()).locked():
                continue  # a build is under way: its half-made version is not an old one
            current = self._load().get(kind)
            for version in self.versions(kind):
                hull = self.container(kind, version)
                if version == current or hull in used or self._has_clones(hull):
                    continue
                with contextlib.suppress(HyperdriveError):
                    await self.lxc.destroy(hull)
                    retired.append(hull)
                    if out is not None:
                        message = f"hull '{hull}' destroyed: not current and no ship uses it"
                        out.emit(ev.HullRetired(hull=hull, message=message))
        return retired

    def hull_of(self, ship: str) -> str | None:
        """The hull an overlay ship was snapshotted from, read from its LXC config."""
        try:
            config = (self.lxc.lxcpath / ship / "config").read_text()
        except (OSError, ValueError):
            return None
        for line in config.splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "lxc.rootfs.path":
                kind, _, rest = value.strip().partition(":")
                if kind in ("overlay", "overlayfs"):
                    return Path(rest.rpartition(":")[0]).parent.name
        return None

    def _has_clones(self, hull: str) -> bool:
        """LXC's own list of snapshots made from this container (lxc-destroy refuses them)."""
        try:
            return bool((self.lxc.lxcpath / hull / "lxc_snapshots").read_text().strip())
        except OSError:
            return False

    async def _build(self, kind: str, out: Emitter, why: str) -> str:
        if kind not in BUILDERS:
            raise DeployError("assemble", f"there is no hull {kind!r}: use {' or '.join(BUILDERS)}")
        records = self._load()
        version = max([records.get(kind, 0), *self.versions(kind)]) + 1
        name = self.container(kind, version)
        out.emit(ev.HullBuildStarted(hull=name, message=f"hull '{name}' {why}"))
        t0 = time.monotonic()
        try:
            await self._create(kind, name, out)
        except HyperdriveError as err:
            out.emit(ev.HullBuildFailed(hull=name, log=str(self.setup_log(name)), message=str(err)))
            raise
        write_atomically(self.records_file, json.dumps({**records, kind: version}))
        ms = int((time.monotonic() - t0) * 1000)
        out.emit(ev.HullAssembled(hull=name, ms=ms, message=f"hull '{name}' ready in {ms} ms"))
        return name

    async def _create(self, kind: str, name: str, out: Emitter) -> None:
        """Create the container; a failure leaves nothing of it behind."""
        await self.lxc.destroy(name)
        if kind == "busybox":
            await self.lxc.create_busybox_hull(name)
            return

        def progress(step: Progress) -> None:
            out.emit(
                ev.HullBuildProgress(
                    hull=name, percent=step.percent, step=step.step, message=step.step
                )
            )

        build = DebianHullBuild(self.lxc.lxcpath, name, self.setup_log(name), mirror=self.mirror)
        try:
            await build.run(progress)
        except OSError as err:
            raise ContainerError(f"hull {name}: {err}") from err
