"""What the squadron knows about its apps and ships, kept in `records/apps/<app>.json`.

The filesystem is the state store, readable by a person; each write is atomic (fsync and
rename), so a crash leaves the old record or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hyperdrive.files import write_atomically
from hyperdrive.names import sanitize_app_name

BUILDING, HEALTHY, LIVE, STOPPED, FAILED = "building", "healthy", "live", "stopped", "failed"


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
