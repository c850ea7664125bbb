"""The seams of the pipeline: the programs it drives, as small Protocols.

The real adapters are `lxc_async.Lxc`, `nginx_reload.Routes` + `traffic.Traffic`, and
`pipeline.gitrepo.GitRepos`; unit tests wire the in-memory fakes in `pipeline.fakes`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from hyperdrive.lxc_async import ContainerInfo, ShipSpec
from hyperdrive.nginx_reload import AppRoute


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


class Proxy(Protocol):
    """What clients reach: nginx routes (reloaded only when they change) and the traffic map."""

    async def apply(self, routes: Sequence[AppRoute]) -> None: ...

    async def point(self, stable_port: int, ship_ip: str, ship_port: int) -> None: ...

    async def remove(self, stable_port: int) -> None: ...


class Git(Protocol):
    """Repos hosted here and mirrors of remote ones."""

    async def resolve(self, app: str, ref: str) -> str | None: ...

    async def export(self, app: str, sha: str, target: Path) -> None: ...

    async def fetch(self, app: str, url: str, ref: str) -> str: ...


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time(self) -> float: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()
