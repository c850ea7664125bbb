"""What the squadron knows about its apps and ships, kept in `records/apps/<app>.json`.

The filesystem is the state store, readable by a person; each write is atomic (fsync and
rename), so a crash leaves the old record or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, NamedTuple

from hyperdrive.errors import ContainerError
from hyperdrive.files import write_atomically
from hyperdrive.names import mac_for_ip, sanitize_app_name

BUILDING, HEALTHY, LIVE, STOPPED, FAILED = "building", "healthy", "live", "stopped", "failed"
HOSTNAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
SAFE_PATH = re.compile(r"(/[A-Za-z0-9_.@+-]+)+|/")  # lxc.mount.entry splits on blanks
# CPU weights in cgroup v2 units: a build gets a tenth of a running ship's share of a busy CPU
RUNNING_CPU_WEIGHT = 100  # the cgroup default (v1: cpu.shares 1024)
BUILD_CPU_WEIGHT = 10


@dataclass(frozen=True)
class Route:
    """How clients reach an app: the names and port nginx serves it on, the path its verify
    step asks for. Kept in the app's record as the route nginx last accepted."""

    app: str
    servernames: tuple[str, ...] = ()
    publish_port: int | None = None
    check_path: str = "/"
    https: str = "on"  # orders' `https on|off|only`

    def to_json(self) -> dict[str, Any]:
        return {
            "servernames": list(self.servernames),
            "publish_port": self.publish_port,
            "check_path": self.check_path,
            "https": self.https,
        }

    @classmethod
    def from_json(cls, app: str, data: dict[str, Any]) -> Route:
        return cls(
            app,
            tuple(data.get("servernames", ())),
            data.get("publish_port"),
            data.get("check_path", "/"),
            data.get("https", "on"),
        )


@dataclass
class Ship:
    """One container for one app at one commit."""

    name: str
    sha: str
    ip: str
    port: int
    state: str = BUILDING
    created: float = 0.0
    healthy: bool = False
    deploy: str = ""


@dataclass
class App:
    """An app's live ship, its kept ships (newest last) and how its last deploy went."""

    name: str
    live: str | None = None
    since: float | None = None
    ships: list[Ship] = field(default_factory=list)
    last_deploy: dict[str, Any] = field(default_factory=dict)
    routed: bool = False
    # the route nginx last accepted (servernames, publish_port, check_path): other apps'
    # deploys re-render it as it is, so new orders are only tried by the app's own deploy
    route: dict[str, Any] = field(default_factory=dict)
    # a preview (pipeline/previews.py): the app and branch it previews, and since when
    preview_of: str | None = None
    branch: str | None = None
    created: float | None = None

    def ship(self, name: str | None) -> Ship | None:
        return next((s for s in self.ships if s.name == name), None) if name else None

    @property
    def live_ship(self) -> Ship | None:
        return self.ship(self.live)

    def upsert(self, ship: Ship) -> None:
        self.ships = [s for s in self.ships if s.name != ship.name] + [ship]

    def forget(self, name: str) -> None:
        self.ships = [s for s in self.ships if s.name != name]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> App:
        ships = [Ship(**s) for s in data.get("ships", [])]
        return cls(
            name=sanitize_app_name(data["name"]),
            live=data.get("live"),
            since=data.get("since"),
            ships=ships,
            last_deploy=dict(data.get("last_deploy", {})),
            routed=bool(data.get("routed", False)),
            route=dict(data.get("route", {})),
            preview_of=data.get("preview_of"),
            branch=data.get("branch"),
            created=data.get("created"),
        )


class Records:
    """The apps' records on disk, cached in memory; the daemon is their only writer."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._apps: dict[str, App] = {}

    def load(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.folder.glob("*.json")):
            with contextlib.suppress(ValueError, KeyError, TypeError):
                app = App.from_json(json.loads(path.read_text()))
                self._apps[app.name] = app

    def get(self, name: str) -> App:
        return self._apps.setdefault(name, App(sanitize_app_name(name)))

    def known(self, name: str) -> bool:
        return name in self._apps

    def all(self) -> list[App]:
        return [self._apps[name] for name in sorted(self._apps)]

    def save(self, app: App) -> None:
        self._apps[app.name] = app
        path = self.folder / f"{app.name}.json"
        write_atomically(path, json.dumps(app.to_json(), indent=1, sort_keys=True))

    def drop(self, name: str) -> None:
        self._apps.pop(name, None)
        (self.folder / f"{name}.json").unlink(missing_ok=True)


# -- what the pipeline asks of its container runtime (ports.ContainerRuntime) --
class Mount(NamedTuple):
    """A host folder or file bind-mounted into a ship."""

    host_path: Path
    container_path: str
    readonly: bool = True


@dataclass(frozen=True)
class ShipSpec:
    """Everything Hyperdrive decides about a ship's container: network, limits, mounts."""

    ip: IPv4Address
    gateway: IPv4Address
    prefixlen: int
    bridge: str
    hostname: str
    memory_bytes: int | None = None
    cpus: float | None = None
    mounts: tuple[Mount, ...] = ()
    pids: int | None = None  # most processes and threads the ship may have at once
    cpu_weight: int | None = None  # cgroup v2 units (1-10000, 100 normal); None: the default
    cpu_idle: bool = False  # only CPU time no other ship wants (SCHED_IDLE), where the host can

    def __post_init__(self) -> None:
        network = IPv4Network(f"{self.ip}/{self.prefixlen}", strict=False)
        if self.gateway not in network or self.gateway == self.ip:
            raise ContainerError(f"gateway {self.gateway} is not another address in {network}")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}", self.bridge):
            raise ContainerError(f"invalid bridge name {self.bridge!r}")
        if not HOSTNAME.fullmatch(self.hostname):
            raise ContainerError(f"invalid hostname {self.hostname!r}")
        if self.memory_bytes is not None and self.memory_bytes < 4 * 1024 * 1024:
            raise ContainerError(f"memory limit {self.memory_bytes} is below 4 MiB")
        if self.cpus is not None and not 0.01 <= self.cpus <= 1024:
            raise ContainerError(f"cpus {self.cpus} is out of range")
        if self.pids is not None and not 16 <= self.pids <= 4_194_304:
            raise ContainerError(f"pids limit {self.pids} is out of range (16 to 4194304)")
        if self.cpu_weight is not None:
            check_cpu_weight(self.cpu_weight)
        for mount in self.mounts:
            _check_mount(mount)

    @property
    def mac(self) -> str:
        """Derived from the address, so a reused address never meets a stale neighbour entry."""
        return mac_for_ip(self.ip)

    @property
    def broadcast(self) -> IPv4Address:
        return IPv4Network(f"{self.ip}/{self.prefixlen}", strict=False).broadcast_address


@dataclass(frozen=True)
class ContainerInfo:
    """A container's name and state as lxc-ls or lxc-info report it."""

    name: str
    state: str  # RUNNING, STOPPED, STARTING, STOPPING, FROZEN, …
    pid: int | None = None


def check_cpu_weight(weight: int) -> int:
    """A CPU weight as cgroup v2 counts it (lxc_async turns it into v1 shares where needed)."""
    if not 1 <= weight <= 10_000:
        raise ContainerError(f"cpu weight {weight} is out of range (1 to 10000)")
    return weight


def _check_mount(mount: Mount) -> None:
    for path in (str(mount.host_path), mount.container_path):
        if not SAFE_PATH.fullmatch(path) or ".." in path.split("/"):
            raise ContainerError(f"mount path {path!r} must be absolute, plain and without '..'")
    if mount.container_path == "/":
        raise ContainerError("cannot mount over the ship's root")


class Sockets(NamedTuple):
    """A ship's TCP sockets on its app's port: open client connections, and a listener."""

    clients: int
    listening: bool
