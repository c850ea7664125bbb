"""What makes a squadron a fleet member, on disk: the credentials and the membership record.

`$VAR/fleet.creds` (0600) holds the fleet's NATS user and password; `$DATA/nats/fleet.json`
says whether this squadron runs the managed nats-server and which URLs it connects to.
Pure file handling: no NATS here.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyperdrive.config import Config, Listen, parse_conf
from hyperdrive.errors import ConfigError, FleetError
from hyperdrive.files import write_atomically
from hyperdrive.modes import DATA_MODE, SECRET_MODE

FLEET_USER = "hyperdrive"
SYSTEM_USER = "system"  # the managed nodes' system account: `$JS.API.SERVER.REMOVE` needs it
MEMBERSHIP = "fleet.json"


@dataclass(frozen=True)
class Creds:
    """The one NATS user every squadron of a fleet connects (and routes) as."""

    user: str
    password: str

    @property
    def system_password(self) -> str:
        """The system user's password, derived from the fleet's secret: every node writes
        the same one into its config, and the join line needs to carry only one secret."""
        digest = hmac.new(self.password.encode(), b"hyperdrive system account", hashlib.sha256)
        return digest.hexdigest()

    def system(self) -> Creds:
        """The system account's user (peer removal); it can do nothing in the fleet's account."""
        return Creds(SYSTEM_USER, self.system_password)

    def to_text(self) -> str:
        return (
            f"NATS_USER={self.user}\nNATS_PASSWORD={self.password}\n"
            f"NATS_SYSTEM_PASSWORD={self.system_password}\n"
        )


def new_creds() -> Creds:
    """A fresh fleet secret: 32 url-safe random bytes, no characters NATS config must quote."""
    return Creds(FLEET_USER, secrets.token_urlsafe(32).replace("-", "x").replace("_", "y"))


def read_creds(path: Path) -> Creds:
    """The credentials file; a clear FleetError when it is missing or incomplete."""
    try:
        values = parse_conf(path.read_text(encoding="utf-8"), str(path))
    except FileNotFoundError:
        raise FleetError(f"the fleet credentials file {path} does not exist") from None
    except (OSError, ConfigError) as err:
        raise FleetError(f"cannot read the fleet credentials {path}: {err}") from None
    user, password = values.get("NATS_USER", ""), values.get("NATS_PASSWORD", "")
    if not user or not password:
        raise FleetError(f"{path} must set NATS_USER and NATS_PASSWORD")
    return Creds(user, password)


def write_creds(path: Path, creds: Creds) -> None:
    write_atomically(path, creds.to_text(), mode=SECRET_MODE)


@dataclass(frozen=True)
class Membership:
    """`node`: this squadron runs the managed nats-server; `urls`: where a plain member
    connects (empty for a node: it connects to its own)."""

    node: bool
    urls: tuple[str, ...] = ()
    advertise: str = ""
    routes: tuple[str, ...] = field(default=())  # cluster peers (a later phase; kept on disk)

    def to_json(self) -> dict[str, object]:
        return {
            "node": self.node,
            "urls": list(self.urls),
            "advertise": self.advertise,
            "routes": list(self.routes),
        }


def membership_file(config: Config) -> Path:
    return config.nats_dir / MEMBERSHIP


def read_membership(config: Config) -> Membership | None:
    """The record `hd fleet init/join` wrote, or None (alone, or HYPERDRIVE_FLEET only)."""
    path = membership_file(config)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
        return Membership(
            node=bool(obj["node"]),
            urls=tuple(str(u) for u in obj.get("urls", [])),
            advertise=str(obj.get("advertise", "")),
            routes=tuple(str(r) for r in obj.get("routes", [])),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise FleetError(f"{path} is unreadable ({err}); `hd fleet leave` clears it") from None


def write_membership(config: Config, membership: Membership) -> None:
    body = json.dumps(membership.to_json(), indent=2) + "\n"
    write_atomically(membership_file(config), body, mode=DATA_MODE)


def client_url(listen: Listen, host: str = "") -> str:
    """The URL of a node listening on `listen`, as seen from `host` (default: this machine)."""
    shown = host or ("127.0.0.1" if listen.host in ("0.0.0.0", "::", "") else listen.host)
    return f"nats://{Listen(shown, listen.port)}"


def connect_urls(config: Config, membership: Membership | None) -> tuple[str, ...]:
    """Where this squadron's fleet link connects: HYPERDRIVE_FLEET wins, then what
    `hd fleet init/join` recorded; () means alone."""
    if config.fleet:
        return config.fleet
    if membership is None:
        return ()
    if membership.node:
        return (client_url(config.fleet_listen),)
    return membership.urls


def replicas_for(nodes: int) -> int:
    """R3 once the cluster has three nodes, R1 below (a two-node RAFT group stalls when
    either node is gone, so R2 would be no safer than R1 and slower)."""
    return 3 if nodes >= 3 else 1


def node_routes(squadrons: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Each node's cluster URL, by squadron name, from the presence entries."""
    return {n: str(e["route"]) for n, e in squadrons.items() if e.get("route")}


def peer_routes(routes: dict[str, str], own: str) -> tuple[str, ...]:
    """What a node's config lists: every other node's route, sorted, once."""
    return tuple(sorted({r for n, r in routes.items() if n != own}))


def join_line(url: str, creds: Creds) -> str:
    """What another squadron runs to join: the URL and the fleet's secret."""
    return f"hd fleet join {url} --secret {creds.password}"


def instance_id(config: Config) -> str:
    """This data folder's identity in the fleet (its squadron name may be reused elsewhere)."""
    path = config.records_dir / "squadron.id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        ident = secrets.token_hex(8)
        write_atomically(path, ident + "\n", mode=DATA_MODE)
        return ident
