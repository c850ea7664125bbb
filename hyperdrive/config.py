"""One frozen Config, read once from main.conf and the environment, validated by key."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyperdrive.errors import ConfigError

DEFAULT_CONFIG = Path("/etc/hyperdrive/main.conf")
KNOWN_HULLS = ("debian", "debian-13", "busybox")
NAME = re.compile(r"[a-z][a-z0-9]{0,11}")
LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"


@dataclass(frozen=True)
class Listen:
    """A `host:port` to listen on; port 0 asks the kernel for a free one (tests)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# Sizes as people write them (`256M`, `1G`, `1.5G`, bytes), for ships' memory limits.
MIN_MEMORY = 4 * 1024**2
MAX_MEMORY = 1024**5
UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
MEMORY = re.compile(r"([0-9]+(?:\.[0-9]+)?)([kmgt]?)(?:i?b)?", re.IGNORECASE)


MAX_GUARD_S = 3600.0  # an hour: longer keeps an idle old ship running for nothing
DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?")


@dataclass(frozen=True)
class Guard:
    """`guard <seconds> <max-5xx-percent> [min-requests]`: for `seconds` after a swap, more
    than `max_percent` 5xx among at least `min_requests` responses swaps back (0 s: off)."""

    seconds: float = 60.0
    max_percent: float = 20.0
    min_requests: int = 20

    @property
    def on(self) -> bool:
        return self.seconds > 0

    def __str__(self) -> str:
        """As orders and main.conf spell it: `60 20 20` or `off`."""
        return f"{self.seconds:g} {self.max_percent:g} {self.min_requests}" if self.on else "off"


@dataclass(frozen=True)
class Config:
    """Everything a squadron is told at start; see the config table in README.md."""

    name: str = "hyperdrive"
    data: Path = Path("/data/hyperdrive")
    var: Path = Path("/var/hyperdrive")
    headquarters: str = ""
    remote: str = ""
    ssh_listen: Listen = Listen("0.0.0.0", 2222)
    api_listen: Listen = Listen("0.0.0.0", 8421)
    http_port: int = 80
    https_port: int = 443
    domain: str = ""
    acme_directory: str = LETS_ENCRYPT  # "": no ACME (only admirals' own certificates)
    acme_email: str = ""
    acme_ca: Path | None = None  # a CA bundle to trust for the ACME directory itself
    acme_retry_seconds: float = 60.0  # the first retry after a failure; doubles to 6 h
    api_tls: str = ""  # the name the API port serves HTTPS as; "": plain HTTP
    webhook_secret: str = ""
    admiral_keys: Path = Path("/etc/hyperdrive/admirals.pub")
    admiral_user: str = ""
    hull: str = "debian"
    subnet: ipaddress.IPv4Network = field(
        default_factory=lambda: ipaddress.IPv4Network("10.213.0.0/24")
    )
    keep_ships: int = 3
    parallel_deploys: int = 4
    eventlog_max_bytes: int = 64 * 1024 * 1024
    event_loop: str = "asyncio"  # the daemon's loop: the standard library's, or uvloop
    guard: Guard = field(default_factory=Guard)  # unless orders say `guard`
    drain_seconds: float = 30.0  # a ship's connections after a swap, unless orders say `drain`
    apt_mirror: str = ""  # "": the Debian mirror the host's own apt sources name
    ship_egress: bool = True
    ship_dns: tuple[str, ...] = ()  # (): the resolvers /etc/resolv.conf names
    ship_memory_bytes: int = 1024**3  # a ship's limit unless its orders say `memory`
    ship_pids: int = 1024  # processes and threads a ship may have at once
    fleet: tuple[str, ...] = ()  # NATS URLs; (): alone, or the managed node `hd fleet` made
    fleet_creds: Path | None = None  # None: $VAR/fleet.creds
    fleet_listen: Listen = Listen("0.0.0.0", 4222)
    fleet_cluster_listen: Listen = Listen("0.0.0.0", 6222)
    source: Path | None = None

    # -- derived paths (the contract's names) --
    @property
    def api_name(self) -> str:
        """The name the API port serves HTTPS as ("" for plain HTTP)."""
        return self.domain if self.api_tls == "on" else self.api_tls

    @property
    def spool_dir(self) -> Path:
        return self.data / "spool"

    @property
    def events_file(self) -> Path:
        return self.data / "events.jsonl"

    @property
    def records_dir(self) -> Path:
        return self.data / "records"

    @property
    def git_dir(self) -> Path:
        return self.data / "git"

    @property
    def containers_dir(self) -> Path:
        return self.var / "containers"

    @property
    def certs_dir(self) -> Path:
        """`$VAR/certs`: admirals' own certificates, and Hyperdrive's in `.hyperdrive/`."""
        return self.var / "certs"

    @property
    def nginx_dir(self) -> Path:
        return self.var / "nginx"

    @property
    def requests_socket(self) -> Path:
        """Where nginx reports each request (nginx.conf.j2 names the same path)."""
        return self.nginx_dir / "run" / "requests.sock"

    @property
    def socket_path(self) -> Path:
        return self.var / "hd.sock"

    @property
    def ships_dir(self) -> Path:
        """`$DATA/lxc`: each ship's app tree, run scripts and setup.log, and the hull logs."""
        return self.data / "lxc"

    def ship_dir(self, ship: str) -> Path:
        return self.ships_dir / ship

    @property
    def lxc_logs_dir(self) -> Path:
        return self.ships_dir / "logs"

    @property
    def includes_dir(self) -> Path:
        return self.data / "includes"

    @property
    def headquarters_dir(self) -> Path:
        """The checkout of HQ the squadron reads its orders from."""
        return self.data / "headquarters"

    @property
    def apps_records_dir(self) -> Path:
        return self.records_dir / "apps"

    @property
    def headquarters_record(self) -> Path:
        return self.records_dir / "headquarters.json"

    @property
    def hulls_record(self) -> Path:
        return self.records_dir / "hulls.json"

    @property
    def ports_record(self) -> Path:
        return self.records_dir / "ports.json"

    @property
    def ips_record(self) -> Path:
        return self.records_dir / "ips.json"

    @property
    def lock_file(self) -> Path:
        return self.records_dir / "hd.lock"

    @property
    def private_keys_dir(self) -> Path:
        return self.var / "private_keys"

    @property
    def public_keys_dir(self) -> Path:
        """Admirals' keys as HQ last gave them (`authorized_keys/*.pub`)."""
        return self.var / "public_keys"

    @property
    def captain_keys_dir(self) -> Path:
        """Captains' keys as HQ last gave them (`<app>/captains/*.pub` → `<app>/<name>.pub`)."""
        return self.var / "captains"

    @property
    def known_hosts_file(self) -> Path:
        return self.var / "known_hosts"

    @property
    def host_key_file(self) -> Path:
        return self.var / "ssh_host_ed25519_key"

    @property
    def tokens_file(self) -> Path:
        return self.var / "tokens.json"

    @property
    def caches_dir(self) -> Path:
        return self.var / "cache"

    def cache_dir(self, app: str) -> Path:
        """The app's build cache (pip, npm), mounted in each of its ships."""
        return self.caches_dir / app

    @property
    def nats_dir(self) -> Path:
        """`$DATA/nats`: the managed nats-server's config, pid file, log and JetStream store."""
        return self.data / "nats"

    @property
    def fleet_creds_file(self) -> Path:
        """The fleet's user and password (0600): HYPERDRIVE_FLEET_CREDS or `$VAR/fleet.creds`."""
        return self.fleet_creds or self.var / "fleet.creds"

    @property
    def bridge(self) -> str:
        return f"{self.name}br0"

    def redacted(self) -> dict[str, str]:
        """Every key as the environment spells it, secrets masked: safe to print or log."""
        shown = {}
        for key, attr in KEYS.items():
            value = getattr(self, attr)
            secret = attr == "webhook_secret" and value
            shown[key] = "********" if secret else _shown(value)
        shown["HYPERDRIVE_FLEET"] = ",".join(without_password(u) for u in self.fleet)
        return shown


def _shown(value: object) -> str:
    """A value as main.conf would spell it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def _name(value: str) -> str:
    if not NAME.fullmatch(value):
        raise ValueError("use 1-12 lower-case letters and digits, starting with a letter")
    return value


def _abs_path(value: str) -> Path:
    path = Path(value)
    if not path.is_absolute():
        raise ValueError("must be an absolute path")
    return path


def _listen(value: str) -> Listen:
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError("use HOST:PORT, e.g. 0.0.0.0:2222")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9.-]+", host):
            raise ValueError(f"bad host {host!r}") from None
    return Listen(host, _port(port, allow_zero=True))


def _port(value: str, allow_zero: bool = False) -> int:
    if not value.isdigit():
        raise ValueError("port must be a number")
    port = int(value)
    if not (0 if allow_zero else 1) <= port <= 65535:
        raise ValueError("port out of range 1-65535")
    return port


def _domain(value: str) -> str:
    if value and not re.fullmatch(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.?)+", value):
        raise ValueError("not a DNS name")
    return value.rstrip(".")


def _https_url(value: str) -> str:
    if value and (not value.startswith("https://") or any(c.isspace() for c in value)):
        raise ValueError("must be an https:// URL (or empty: no ACME)")
    return value


def _email(value: str) -> str:
    if value and not re.fullmatch(r"[^@\s:]+@[a-z0-9.-]+\.[a-z]{2,}", value, re.IGNORECASE):
        raise ValueError("not an e-mail address")
    return value


def _api_tls(value: str) -> str:
    """`off`, `on` (the API answers as HYPERDRIVE_DOMAIN) or the host name it answers as."""
    if value.lower() in ("", "off"):
        return ""
    return "on" if value.lower() == "on" else _domain(value.lower())


def _hull(value: str) -> str:
    if value not in KNOWN_HULLS:
        raise ValueError(f"unknown hull, use one of: {', '.join(KNOWN_HULLS)}")
    return value


def _subnet(value: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(value, strict=True)
    except ValueError as err:
        raise ValueError(f"not an IPv4 subnet ({err})") from None
    if net.prefixlen > 28 or net.prefixlen < 16:
        raise ValueError("prefix must be between /16 and /28")
    return net


def _count(low: int, high: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        if not value.isdigit() or not low <= int(value) <= high:
            raise ValueError(f"must be a whole number from {low} to {high}")
        return int(value)

    return parse


def _seconds(low: float, high: float) -> Callable[[str], float]:
    def parse(value: str) -> float:
        try:
            seconds = float(value)
        except ValueError:
            raise ValueError("must be a number of seconds") from None
        if not low <= seconds <= high:
            raise ValueError(f"must be from {low:g} to {high:g} seconds")
        return seconds

    return parse


def parse_guard(words: list[str]) -> Guard:
    """`off`, or `<seconds> <max-5xx-percent> [min-requests]` (orders and HYPERDRIVE_GUARD);
    ValueError saying what is wrong."""
    if words == ["off"]:
        return Guard(seconds=0)
    usage = "guard takes <seconds> <max-5xx-percent> [min-requests] (e.g. guard 60 20 20), or off"
    if len(words) not in (2, 3):
        raise ValueError(usage)
    seconds = _decimal(words[0], "guard seconds", MAX_GUARD_S)
    if seconds == 0:
        raise ValueError("guard seconds '0': write `guard off` to turn the guard off")
    percent = _decimal(words[1].removesuffix("%"), "guard max-5xx-percent", 100)
    if percent == 100:
        raise ValueError("guard max-5xx-percent 100 can never be passed: write `guard off`")
    least = Guard.min_requests
    if len(words) == 3:
        text = words[2]
        if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 1_000_000):
            raise ValueError(
                f"guard min-requests {text[:40]!r} must be a whole number from 1 to 1000000"
            )
        least = int(text)
    return Guard(seconds, percent, least)


def _decimal(text: str, what: str, most: float) -> float:
    """A plain decimal number from 0 to `most` (no signs, exponents, inf or nan)."""
    if not DECIMAL.fullmatch(text) or float(text) > most:
        raise ValueError(f"{what} {text[:40]!r} must be a number from 0 to {most:g}")
    return float(text)


def _guard(value: str) -> Guard:
    return parse_guard(value.split())


def _mirror(value: str) -> str:
    if not value:
        return ""  # the host's own apt sources
    if not re.fullmatch(r"https?://[A-Za-z0-9.:/_~+-]+", value):
        raise ValueError("must be an http(s) URL of a Debian mirror")
    return value.rstrip("/")


def _user(value: str) -> str:
    if value and not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", value):
        raise ValueError("not a valid user name")
    return value


EVENT_LOOPS = ("uvloop", "asyncio")


def _event_loop(value: str) -> str:
    if value not in EVENT_LOOPS:
        raise ValueError(f"use {' or '.join(EVENT_LOOPS)}")
    return value


def _on_off(value: str) -> bool:
    if value.lower() not in ("on", "off"):
        raise ValueError("use on or off")
    return value.lower() == "on"


def _resolvers(value: str) -> tuple[str, ...]:
    """`ip[,ip…]` of DNS servers (port 53); empty: the host's /etc/resolv.conf."""
    found = []
    for part in filter(None, (p.strip() for p in value.split(","))):
        try:
            found.append(str(ipaddress.ip_address(part)))
        except ValueError:
            raise ValueError(f"{part!r} is not an IP address") from None
    return tuple(found)


NATS_URL = re.compile(r"(nats|tls)://([^@/\s]+@)?[A-Za-z0-9.:\[\]-]+:\d{1,5}")


def _nats_urls(value: str) -> tuple[str, ...]:
    """`nats://HOST:PORT[,…]` (tls:// for TLS); empty: alone (or the managed node)."""
    urls = tuple(filter(None, (part.strip() for part in value.split(","))))
    for url in urls:
        if not NATS_URL.fullmatch(url):
            shown = without_password(url)
            raise ValueError(
                f"{shown!r} is not a NATS URL: use nats://HOST:PORT or tls://HOST:PORT"
            )
    return urls


def without_password(url: str) -> str:
    """A URL safe to show: `nats://user:***@host:port`."""
    return re.sub(r"(://[^:@/]*:)[^@/]*@", r"\1***@", url)


def _optional_path(value: str) -> Path | None:
    return _abs_path(value) if value else None


def _text(value: str) -> str:
    return value


def _memory(value: str) -> int:
    match = MEMORY.fullmatch(value.strip())
    if match is None:
        raise ValueError("must be a size such as 512M or 2G (or bytes)")
    size = int(float(match[1]) * UNITS[match[2].lower()])
    if not MIN_MEMORY <= size <= MAX_MEMORY:
        raise ValueError("must be at least 4M (a number without a unit is bytes)")
    return size


KEYS: dict[str, str] = {
    "HYPERDRIVE_NAME": "name",
    "HYPERDRIVE_DATA": "data",
    "HYPERDRIVE_VAR": "var",
    "HYPERDRIVE_HEADQUARTERS": "headquarters",
    "HYPERDRIVE_REMOTE": "remote",
    "HYPERDRIVE_SSH_LISTEN": "ssh_listen",
    "HYPERDRIVE_API_LISTEN": "api_listen",
    "HYPERDRIVE_HTTP_PORT": "http_port",
    "HYPERDRIVE_HTTPS_PORT": "https_port",
    "HYPERDRIVE_DOMAIN": "domain",
    "HYPERDRIVE_ACME_DIRECTORY": "acme_directory",
    "HYPERDRIVE_ACME_EMAIL": "acme_email",
    "HYPERDRIVE_ACME_CA": "acme_ca",
    "HYPERDRIVE_ACME_RETRY": "acme_retry_seconds",
    "HYPERDRIVE_API_TLS": "api_tls",
    "HYPERDRIVE_WEBHOOK_SECRET": "webhook_secret",
    "HYPERDRIVE_ADMIRAL_KEYS": "admiral_keys",
    "HYPERDRIVE_ADMIRAL_USER": "admiral_user",
    "HYPERDRIVE_HULL": "hull",
    "HYPERDRIVE_SUBNET": "subnet",
    "HYPERDRIVE_KEEP_SHIPS": "keep_ships",
    "HYPERDRIVE_PARALLEL_DEPLOYS": "parallel_deploys",
    "HYPERDRIVE_EVENTLOG_MAX_BYTES": "eventlog_max_bytes",
    "HYPERDRIVE_EVENT_LOOP": "event_loop",
    "HYPERDRIVE_DRAIN_SECONDS": "drain_seconds",
    "HYPERDRIVE_GUARD": "guard",
    "HYPERDRIVE_APT_MIRROR": "apt_mirror",
    "HYPERDRIVE_SHIP_EGRESS": "ship_egress",
    "HYPERDRIVE_SHIP_DNS": "ship_dns",
    "HYPERDRIVE_SHIP_MEMORY": "ship_memory_bytes",
    "HYPERDRIVE_SHIP_PIDS": "ship_pids",
    "HYPERDRIVE_FLEET": "fleet",
    "HYPERDRIVE_FLEET_CREDS": "fleet_creds",
    "HYPERDRIVE_FLEET_LISTEN": "fleet_listen",
    "HYPERDRIVE_FLEET_CLUSTER_LISTEN": "fleet_cluster_listen",
}

PARSERS: dict[str, Callable[[str], Any]] = {
    "name": _name,
    "data": _abs_path,
    "var": _abs_path,
    "headquarters": _text,
    "remote": _text,
    "ssh_listen": _listen,
    "api_listen": _listen,
    "http_port": _port,
    "https_port": _port,
    "domain": _domain,
    "acme_directory": _https_url,
    "acme_email": _email,
    "acme_ca": _optional_path,
    "acme_retry_seconds": _seconds(1, 86400),
    "api_tls": _api_tls,
    "webhook_secret": _text,
    "admiral_keys": _abs_path,
    "admiral_user": _user,
    "hull": _hull,
    "subnet": _subnet,
    "keep_ships": _count(0, 100),
    "parallel_deploys": _count(1, 64),
    "eventlog_max_bytes": _count(64 * 1024, 1 << 40),
    "event_loop": _event_loop,
    "drain_seconds": _seconds(0, 3600),
    "guard": _guard,
    "apt_mirror": _mirror,
    "ship_egress": _on_off,
    "ship_dns": _resolvers,
    "ship_memory_bytes": _memory,
    "ship_pids": _count(16, 4_194_304),
    "fleet": _nats_urls,
    "fleet_creds": _optional_path,
    "fleet_listen": _listen,
    "fleet_cluster_listen": _listen,
}


def parse_conf(text: str, source: str) -> dict[str, str]:
    """`KEY=VALUE` lines with `#` comments; optional matching quotes around a value."""
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if key.startswith("export "):
            key = key[len("export ") :].strip()
        if not sep or not re.fullmatch(r"[A-Z][A-Z0-9_]*", key):
            raise ConfigError(f"{source}:{number}: expected KEY=VALUE, got {raw.strip()!r}")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


def load(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read `path` (default /etc/hyperdrive/main.conf, if present) then let the environment win."""
    environ = {} if environ is None else environ
    path = path or Path(environ.get("HYPERDRIVE_CONFIG") or DEFAULT_CONFIG)
    values: dict[str, str] = {}
    if path.exists():
        values = parse_conf(_read(path), str(path))
    elif path != DEFAULT_CONFIG:
        raise ConfigError(f"config file {path} does not exist")
    unknown = sorted(k for k in values if k not in KEYS)
    if unknown:
        import logging  # noqa: PLC0415 - ~6 ms that `hd status` does not need

        logging.getLogger(__name__).warning(
            "%s: unknown keys ignored: %s", path, ", ".join(unknown)
        )
    values.update({k: v for k, v in environ.items() if k in KEYS})
    return build(values, source=path if path.exists() else None)


def _read(path: Path) -> str:
    """The file's text; a directory or an unreadable file is the user's error, not a crash."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror or err}") from err


def build(values: Mapping[str, str], source: Path | None = None) -> Config:
    """Validate each known key; the first bad one stops start-up with a line naming it."""
    kwargs: dict[str, Any] = {}
    for key, attr in KEYS.items():
        if key not in values:
            continue
        try:
            kwargs[attr] = PARSERS[attr](values[key])
        except ValueError as err:
            raise ConfigError(f"{key}={values[key]!r}: {err}") from None
    config = Config(**kwargs, source=source)
    _check_together(config)
    return config


def _check_together(config: Config) -> None:
    if config.api_tls == "on" and not config.domain:
        raise ConfigError("HYPERDRIVE_API_TLS=on needs HYPERDRIVE_DOMAIN (or give the name)")
    if config.https_port == config.http_port:
        raise ConfigError("HYPERDRIVE_HTTPS_PORT and HYPERDRIVE_HTTP_PORT must differ")
    if config.data == config.var:
        raise ConfigError(f"HYPERDRIVE_DATA and HYPERDRIVE_VAR must differ (both {config.data})")
    if config.fleet_listen.port and config.fleet_listen == config.fleet_cluster_listen:
        raise ConfigError(
            "HYPERDRIVE_FLEET_LISTEN and HYPERDRIVE_FLEET_CLUSTER_LISTEN must differ "
            f"(both {config.fleet_listen})"
        )
