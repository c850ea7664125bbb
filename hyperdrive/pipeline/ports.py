"""The seams of the pipeline: the programs it drives, as small Protocols.

The real adapters are `lxc_async.Lxc` (ContainerRuntime) and `repos.GitRepos` (Git); the
proxy side is `nginx_reload.Routes` + `traffic.Traffic`, used as they are.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from hyperdrive.lxc_async import ContainerInfo, ShipSpec


class ContainerRuntime(Protocol):
    """Hulls and ships: LXC in production."""

    async def snapshot(self, hull: str, ship: str) -> None: ...

    async def write_config(self, ship: str, spec: ShipSpec) -> None: ...

    async def start(self, ship: str) -> None: ...

    async def attach(
        self,
        ship: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        timeout: float,  # noqa: ASYNC109 - the command's own limit, enforced in the ship
        on_line: Callable[[str], None] | None = None,
    ) -> int: ...

    async def stop(self, ship: str, kill: bool = False) -> None: ...

    async def destroy(self, ship: str) -> None: ...

    async def exists(self, ship: str) -> bool: ...

    async def info(self, ship: str) -> ContainerInfo | None: ...

    async def list(self) -> list[ContainerInfo]: ...


class Git(Protocol):
    """Repos hosted here (`remote=False`) and mirrors of remote ones (`remote=True`)."""

    async def resolve(self, app: str, ref: str, remote: bool = False) -> str | None: ...

    async def default_branch(self, app: str, remote: bool = False) -> str: ...

    async def export(self, app: str, sha: str, target: Path, remote: bool = False) -> None: ...

    async def fetch(self, app: str, url: str, ref: str) -> str: ...

    async def remote_default_branch(self, app: str, url: str) -> str: ...


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time(self) -> float: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()
