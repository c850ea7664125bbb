"""The HullBuilder port for real: a busybox hull from the host's busybox, a Debian hull
(`debian`: bookworm, `debian-13`: trixie) from the kept tree or the mirror the host's apt uses
(hull_debian.py, loaded at the first Debian hull: a busybox squadron never needs it)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from hyperdrive.errors import ContainerError, HyperdriveError
from hyperdrive.lxc_async import Lxc
from hyperdrive.pipeline import events as ev
from hyperdrive.pipeline.ports import Emit

if TYPE_CHECKING:
    from hyperdrive.hull_debian import Progress

# The Debian release of each Debian hull kind.
RELEASES = {"debian": "bookworm", "debian-13": "trixie"}


class LxcHullBuilder:
    """Makes hull containers on an Lxc's lxcpath; `$DATA/lxc/<hull>/setup.log` keeps the output."""

    def __init__(
        self, lxc: Lxc, logs: Path, *, mirror: str = "", cache_dir: Path | None = None
    ) -> None:
        self.lxc = lxc
        self.logs = logs  # $DATA/lxc
        self.mirror = mirror  # HYPERDRIVE_APT_MIRROR; "" = the host's apt sources
        self.cache_dir = cache_dir  # LXC_CACHE_PATH; None = /var/cache/lxc

    def setup_log(self, hull: str) -> Path:
        return self.logs / hull / "setup.log"

    def fits(self, hull: str) -> bool:
        return self.lxc.unprivileged(hull)

    async def build(self, kind: str, hull: str, why: str, fresh: bool, emit: Emit) -> str:
        """Create the container; a failure leaves nothing of it behind."""
        if kind == "busybox":
            return await self._busybox(hull, why, emit)
        return await self._debian(kind, hull, why, fresh, emit)

    async def runtimes(self, kind: str, hull: str) -> dict[str, str]:
        """Python's and Node's versions in a built Debian hull; busybox has neither."""
        if kind == "busybox":
            return {}
        from hyperdrive.hull_debian import runtime_versions  # noqa: PLC0415 - see the top

        return await runtime_versions(self.lxc.lxcpath / hull / "rootfs")

    async def _busybox(self, hull: str, why: str, emit: Emit) -> str:
        emit(ev.HullBuildStarted(hull=hull, message=f"hull '{hull}' {why}"))
        try:
            await self.lxc.create_busybox_hull(hull)
        except BaseException:
            with contextlib.suppress(HyperdriveError):
                await self.lxc.destroy(hull)
            raise
        return "from busybox"

    async def _debian(self, kind: str, hull: str, why: str, fresh: bool, emit: Emit) -> str:
        def progress(step: Progress) -> None:
            emit(
                ev.HullBuildProgress(
                    hull=hull, percent=step.percent, step=step.step, message=step.step
                )
            )

        from hyperdrive.aptsource import from_host  # noqa: PLC0415 - see the top
        from hyperdrive.hull_debian import DebianHullBuild  # noqa: PLC0415

        apt = await from_host(self.mirror)
        debian = DebianHullBuild(
            self.lxc.lxcpath,
            hull,
            self.setup_log(hull),
            apt=apt,
            cache_dir=self.cache_dir,
            fresh=fresh,
            release=RELEASES[kind],
            ids=self.lxc.ids,
        )
        emit(ev.HullBuildStarted(hull=hull, message=f"hull '{hull}' {why}, {debian.plan()}"))
        try:
            return await debian.run(progress)
        except OSError as err:
            raise ContainerError(f"hull {hull}: {err}") from err
