"""The seams of the pipeline: the programs it drives, as small Protocols, and in-memory fakes.

Real adapters: `lxc_async.Lxc` (ContainerRuntime), `hull_builder.LxcHullBuilder` (HullBuilder),
`repos.GitRepos` (Git), `proxy.NginxProxy` (Proxy: nginx routes + the nftables map + stable
ports), `network.ShipNetwork` (Network), `health.HttpProbe` (Probe), `SystemClock` (Clock),
`accesslog.RequestStream` (Requests).
`bootstrap.build` wires them. `pipeline/fakes.py`, beside this module, keeps the same promises
in memory for the unit tests; the daemon never loads it.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from hyperdrive.headquarters.orders import Egress
from hyperdrive.pipeline import events as ev
from hyperdrive.pipeline.model import ContainerInfo, Route, ShipSpec, Sockets

Emit = Callable[[ev.Event], None]
Giveup = Callable[[], str | None]


class ContainerRuntime(Protocol):
    """Hulls and ships: LXC in production."""

    async def snapshot(self, hull: str, ship: str) -> None: ...

    async def write_config(self, ship: str, spec: ShipSpec) -> None: ...

    async def hand_over(self, path: Path) -> None:
        """Give a host file or tree written for a ship to the ship's (unprivileged) root."""
        ...

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

    async def set_cpu_weight(self, ship: str, weight: int) -> None:
        """A running ship's CPU weight, now (cgroup v2 units: 100 normal); its config keeps
        the one it was written with (a build's), for the next start."""

    async def destroy(self, ship: str) -> None: ...

    async def exists(self, ship: str) -> bool: ...

    async def info(self, ship: str) -> ContainerInfo | None: ...

    async def list(self) -> list[ContainerInfo]: ...

    def names(self) -> builtins.list[str]: ...

    def snapshot_source(self, ship: str) -> str | None: ...

    def has_snapshots(self, name: str) -> bool: ...


class HullBuilder(Protocol):
    """Makes one hull container of a kind; says how (`from busybox`, `from the kept tree`…)."""

    def setup_log(self, hull: str) -> Path: ...

    def fits(self, hull: str) -> bool:
        """Was this hull made for ships as they run now (unprivileged, this host's id map)?"""
        ...

    async def build(self, kind: str, hull: str, why: str, fresh: bool, emit: Emit) -> str: ...

    async def runtimes(self, kind: str, hull: str) -> dict[str, str]:
        """The runtime versions a built hull carries: `{"python": "3.11.2", "node": "18.19.0"}`."""
        ...


class Git(Protocol):
    """Repos hosted here (`remote=False`) and mirrors of remote ones (`remote=True`)."""

    async def resolve(self, app: str, ref: str, remote: bool = False) -> str | None: ...

    async def default_branch(self, app: str, remote: bool = False) -> str: ...

    async def export(self, app: str, sha: str, target: Path, remote: bool = False) -> None: ...

    async def fetch(self, app: str, url: str, ref: str) -> str: ...

    async def remote_default_branch(self, app: str, url: str) -> str: ...


class Proxy(Protocol):
    """How clients reach apps: nginx routes to a stable address per app, which points at a ship."""

    async def prepare(self) -> None:
        """Make the traffic map exist (idempotent)."""

    def stable_url(self, app: str, path: str) -> str:
        """`http://<stable address of app><path>`: what nginx sends the app's requests to."""

    async def point(self, app: str, ip: str, port: int) -> None: ...

    async def unpoint(self, app: str) -> None: ...

    async def apply_routes(self, routes: Sequence[Route], fresh: Collection[str]) -> None:
        """Make exactly `routes` live or raise ProxyError/InvalidName, the old ones still live;
        the admirals' overrides are read afresh only for the apps in `fresh`."""


class Network(Protocol):
    """The ships' bridge and their addresses on it."""

    @property
    def gateway(self) -> str: ...

    @property
    def prefixlen(self) -> int: ...

    @property
    def bridge(self) -> str: ...

    async def ensure(self) -> None:
        """The bridge is up and forwarding is on (idempotent)."""

    def allocate(self, ship: str) -> str: ...

    def release(self, ship: str) -> None: ...

    async def admit(self, ship_ip: str, app: str, egress: Egress) -> None:
        """What the ship at `ship_ip` may reach outside the host, from before its build on."""

    async def dismiss(self, ship_ip: str) -> None:
        """The ship at `ship_ip` is gone: its address carries no egress rule any more."""


class Probe(Protocol):
    """Is an app answering over HTTP?"""

    async def wait_healthy(
        self, url: str, seconds: float, give_up: Giveup | None = None
    ) -> str | None:
        """None once `url` answers 2xx/3xx within `seconds`, else what went wrong last."""

    async def watch_healthy(self, url: str, seconds: float) -> str | None:
        """None if `url` keeps answering for `seconds`, else how it failed."""

    def sockets(self, pid: int | None, port: int) -> Sockets | None:
        """The ship's (init `pid`) client connections to `port` and its listener; None: unknown."""


Listener = Callable[[int], None]


class Requests(Protocol):
    """The request stream: each response status of an app, as nginx finishes it."""

    def subscribe(self, app: str, listener: Listener) -> Callable[[], None]:
        """Tell `listener` each status of `app` from now on; returns the unsubscribe."""


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time(self) -> float: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()
