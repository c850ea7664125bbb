"""Moves an app's traffic to a ship without touching nginx: an nftables map in Hyperdrive's table.

nginx proxies each app to a stable `bridge-ip:stable-port`; the table DNATs that port to the
live ship. A swap is one `nft -f -` transaction, so nginx workers (and their keep-alive
connections) never restart. DESIGN.md has the measurements that led here.

The same table is the ships' firewall: it masquerades what they send out of the host, lets
each ship out as its app's orders say (a verdict map keyed by the ship's address), and keeps
them off the host's own services except DNS, ICMP and the ports nginx offers them.
"""

import asyncio
import ipaddress
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hyperdrive.errors import CommandFailed, ProxyError
from hyperdrive.files import write_atomically
from hyperdrive.names import sanitize_app_name
from hyperdrive.procs import check_output, run_until_said

log = logging.getLogger(__name__)
Allowed = Sequence[tuple[str, int]]  # (IPv4 address, port) pairs
Script = Callable[[bool], str]  # an nft script, given whether its key is in the map already
Present = Callable[[], Awaitable[bool]]  # whether that key is in the map, read from nft
MAP = "app_backends"
EGRESS = "ship_egress"  # ship address -> verdict: accept, or a jump to its app's chain
OFFERED = "offered_ports"  # TCP ports on the bridge address ships may reach: nginx's
CLOSED = "egress_closed"
# Linux reports admin-prohibited as "No route to host" at once (a drop would hang pip)
REJECT = "reject with icmp type admin-prohibited"
TIMEOUT = 10.0


async def run(argv: list[str], stdin: str = "", seconds: float = TIMEOUT) -> str:
    """Run a program with `stdin`; return its stdout, or raise CommandFailed with its output."""
    return await check_output(argv, timeout=seconds, stdin=stdin.encode())


def _port(value: int) -> int:
    """Accept a TCP port number, or raise ProxyError (ports end up inside nft scripts)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ProxyError(f"invalid TCP port {value!r}")
    return value


def _ipv4(value: str) -> str:
    """Accept a dotted IPv4 address, or raise ProxyError."""
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError as err:
        raise ProxyError(f"invalid IPv4 address {value!r}") from err


class Traffic:
    """Hyperdrive's own nftables table: stable port on the bridge address -> live ship address."""

    def __init__(
        self,
        table: str,
        bridge: str,
        *,
        device: str | None = None,
        egress: bool = True,
        nft: str = "nft",
    ) -> None:
        """`bridge` is the bridge's interface address with its prefix, e.g. `10.213.0.1/24`;
        `device` its name (`<table>br0`); `egress` False cuts every ship off the outside."""
        sanitize_app_name(table)  # the same shape keeps the table name safe inside a script
        self.table = table
        self.interface = ipaddress.IPv4Interface(bridge)
        self.device = device or f"{table}br0"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}", self.device):
            raise ProxyError(f"invalid bridge name {self.device!r}")
        self.egress = egress
        self.nft = nft
        self._lock = asyncio.Lock()
        # what this daemon last read or wrote of its maps (None: not known): a change is built
        # from it without listing the map first, and read afresh when nft says it was wrong
        self._ports: set[int] | None = None
        self._ships: set[str] | None = None

    @property
    def bridge_ip(self) -> str:
        """The stable address every app is proxied to."""
        return str(self.interface.ip)

    def _table_script(self) -> str:
        """Declare the table idempotently: `add` keeps the maps' elements; chains are refilled."""
        t, ip, net = f"ip {self.table}", self.bridge_ip, self.interface.network
        dnat, nat = f"ip daddr {ip} dnat ip to tcp dport map @{MAP}", "type nat hook"
        filt, br = "type filter hook", f'"{self.device}"'
        return "\n".join(
            [
                f"add table {t}",
                f"add map {t} {MAP} {{ type inet_service : ipv4_addr . inet_service; }}",
                f"add map {t} {EGRESS} {{ type ipv4_addr : verdict; }}",
                f"add set {t} {OFFERED} {{ type inet_service; }}",
                f"add chain {t} output {{ {nat} output priority -100; policy accept; }}",
                f"add chain {t} prerouting {{ {nat} prerouting priority -100; policy accept; }}",
                f"add chain {t} postrouting {{ {nat} postrouting priority 100; policy accept; }}",
                f"add chain {t} forward {{ {filt} forward priority -10; policy accept; }}",
                f"add chain {t} input {{ {filt} input priority -10; policy accept; }}",
                f"add chain {t} {CLOSED}",
                *(f"flush chain {t} {c}" for c in ("output", "prerouting", "postrouting")),
                *(f"flush chain {t} {c}" for c in ("forward", "input", CLOSED)),
                f"add rule {t} output {dnat}",
                f"add rule {t} prerouting {dnat}",
                # a ship calling another app's stable address: the answer must come back via us
                f"add rule {t} postrouting ip saddr {net} ip daddr {net} ct status dnat masquerade",
                # a ship calling the world: it leaves with the host's address
                f"add rule {t} postrouting ip saddr {net} oifname != {br} masquerade",
                f"add rule {t} {CLOSED} {REJECT}",
                *self._forward_rules(t, br),
                *self._input_rules(t, br),
                "",
            ]
        )

    def _forward_rules(self, t: str, br: str) -> list[str]:
        """Replies pass; ship to ship (stable addresses) passes; out: as the ship's app says."""
        default = "accept" if self.egress else f"jump {CLOSED}"
        return [
            f"add rule {t} forward ct state established,related accept",
            f"add rule {t} forward iifname {br} oifname {br} accept",
            f"add rule {t} forward iifname {br} ip saddr vmap @{EGRESS}",
            f"add rule {t} forward iifname {br} {default}",
        ]

    def _input_rules(self, t: str, br: str) -> list[str]:
        """From the ships to the host: replies, ICMP, DNS and the offered ports; nothing else."""
        ip = self.bridge_ip
        return [
            f"add rule {t} input iifname {br} ct state established,related accept",
            f"add rule {t} input iifname {br} ip protocol icmp accept",
            f"add rule {t} input iifname {br} ip daddr {ip} udp dport 53 accept",
            f"add rule {t} input iifname {br} ip daddr {ip} tcp dport 53 accept",
            f"add rule {t} input iifname {br} ip daddr {ip} tcp dport @{OFFERED} accept",
            f"add rule {t} input iifname {br} drop",
        ]

    async def _apply(self, script: str) -> None:
        """Run one nft transaction; nft's own words in the error. It is done when nft echoes
        it (`--echo`: the kernel sends that once it committed), not when nft exits: a
        transaction that removed something (a swap's old element) makes nft's exit wait
        ~12 ms more for the kernel to free it. One that echoes nothing ends with nft."""
        argv = [self.nft, "--echo", "-f", "-"]
        done = await run_until_said(argv, timeout=TIMEOUT, stdin=script.encode())
        if done is not None and done.returncode != 0:
            raise ProxyError(f"nft refused a change to table {self.table}: {done.output}")

    async def ensure_table(self) -> None:
        """Create or repair the table; live map elements survive (safe at every daemon start)."""
        async with self._lock:
            await self._apply(self._table_script())
        for chain in await self.forward_drops():
            log.warning("%s: %s", chain, self.forward_fix(chain))

    async def forward_drops(self) -> list[str]:
        """Other tables' forward chains whose policy is drop (Docker's, a firewall's): an
        accept in our table does not overrule them, so ships' traffic would die there."""
        listing = json.loads(await run([self.nft, "-j", "list", "chains"]))
        return forward_drops(listing, self.table)

    def forward_fix(self, chain: str) -> str:
        """What an admiral runs so a dropping forward chain lets the ships' traffic pass."""
        family, table, name = chain.split(" ")
        br = self.device
        return (
            f"its drop policy also drops the ships' forwarded traffic; let it pass with "
            f"`nft insert rule {family} {table} {name} iifname {br} accept` and "
            f"`nft insert rule {family} {table} {name} oifname {br} ct state "
            "established,related accept` (on Docker hosts: the DOCKER-USER chain)"
        )

    async def exists(self) -> bool:
        """Whether the table is there at all."""
        listing = json.loads(await run([self.nft, "-j", "list", "tables", "ip"]))
        names = [item["table"]["name"] for item in listing["nftables"] if "table" in item]
        return self.table in names

    async def damage(self) -> str:
        """'' while the table is whole; else what someone took away (deleted, flushed)."""
        try:
            out = await run([self.nft, "-j", "list", "table", "ip", self.table])
        except CommandFailed:
            return f"nft table ip {self.table} is missing"
        return table_damage(json.loads(out), self.table)

    async def drop_table(self) -> None:
        """Remove the table and everything in it (tests, uninstall); never `flush ruleset`."""
        async with self._lock:
            if await self.exists():
                await self._apply(f"delete table ip {self.table}\n")
            self._ports = self._ships = None

    async def current(self) -> dict[int, tuple[str, int]]:
        """The live map: stable port -> (ship address, ship port)."""
        try:
            out = await run([self.nft, "-j", "list", "map", "ip", self.table, MAP])
        except CommandFailed as err:
            raise ProxyError(f"cannot read nft map {self.table} {MAP}: {err.output}") from err
        found = _parse_map(json.loads(out))
        self._ports = set(found)
        return found

    async def _keyed(self, believed: bool | None, present: Present, script: Script) -> None:
        """One transaction on a map key that may be there already, built from what this daemon
        believes (no listing); a wrong belief (someone changed the table) makes nft refuse the
        whole transaction, and it is built again from the map as it is."""
        if believed is None:
            believed = await present()
        try:
            await self._apply(script(believed))
        except ProxyError:
            if (actually := await present()) == believed:
                raise
            await self._apply(script(actually))

    async def point(self, stable_port: int, ship_ip: str, ship_port: int) -> None:
        """Send new connections for `stable_port` to the ship, in one nft transaction."""
        key, value = _port(stable_port), f"{_ipv4(ship_ip)} . {_port(ship_port)}"
        element = f"element ip {self.table} {MAP} {{ {key}"

        def script(there: bool) -> str:
            return f"delete {element} }}\n" * there + f"add {element} : {value} }}\n"

        async def present() -> bool:
            return key in await self.current()

        async with self._lock:
            try:
                await self._keyed(
                    None if self._ports is None else key in self._ports, present, script
                )
            except ProxyError:
                self._ports = None
                raise
            if self._ports is not None:
                self._ports.add(key)

    async def point_all(self, targets: Mapping[int, tuple[str, int]]) -> None:
        """Point stable ports that are not in the map yet, all in one nft transaction."""
        lines = [
            f"add element ip {self.table} {MAP} {{ {_port(key)} : {_ipv4(ip)} . {_port(port)} }}"
            for key, (ip, port) in sorted(targets.items())
        ]
        if lines:
            async with self._lock:
                self._ports = None  # read afresh by the next change
                await self._apply("\n".join([*lines, ""]))

    async def offer(self, ports: set[int]) -> None:
        """The TCP ports on the bridge address ships may reach (nginx's): exactly `ports`."""
        elements = ", ".join(str(_port(p)) for p in sorted(ports))
        lines = [f"flush set ip {self.table} {OFFERED}"]
        if elements:
            lines.append(f"add element ip {self.table} {OFFERED} {{ {elements} }}")
        async with self._lock:
            await self._apply("\n".join([*lines, ""]))

    async def admit(self, ship_ip: str, app: str, allow: Allowed | None) -> None:
        """From now on the ship at `ship_ip` reaches the outside as its app may: everything
        (None), nothing (an empty list) or only the `allow`ed (IPv4, port) pairs."""
        ip, t = _ipv4(ship_ip), f"ip {self.table}"
        lines, verdict = self._egress_rules(app, allow)

        def script(there: bool) -> str:
            drop = [f"delete element {t} {EGRESS} {{ {ip} }}"] * there
            return "\n".join(
                [*drop, *lines, f"add element {t} {EGRESS} {{ {ip} : {verdict} }}", ""]
            )

        async def present() -> bool:
            return ip in await self.admitted()

        async with self._lock:
            try:
                await self._keyed(
                    None if self._ships is None else ip in self._ships, present, script
                )
            except ProxyError:
                self._ships = None
                raise
            if self._ships is not None:
                self._ships.add(ip)

    def _egress_rules(self, app: str, allow: Allowed | None) -> tuple[list[str], str]:
        """The app's own egress chain (only for `egress allow`) and the verdict its ships get."""
        t = f"ip {self.table}"
        if not self.egress or allow is None:
            return [], "accept" if self.egress else f"jump {CLOSED}"
        chain = f"egress_{sanitize_app_name(app)}"
        lines = [f"add chain {t} {chain}", f"flush chain {t} {chain}"]
        for host, port in allow:
            for proto in ("tcp", "udp"):
                match = f"ip daddr {_ipv4(host)} {proto} dport {_port(port)}"
                lines.append(f"add rule {t} {chain} {match} accept")
        lines.append(f"add rule {t} {chain} jump {CLOSED}")
        return lines, f"jump {chain}"

    async def dismiss(self, ship_ip: str) -> None:
        """The ship at `ship_ip` is gone: its address carries no rule (absent is fine)."""
        ip = _ipv4(ship_ip)
        async with self._lock:
            if ip in await self.admitted():
                await self._apply(f"delete element ip {self.table} {EGRESS} {{ {ip} }}\n")
            if self._ships is not None:
                self._ships.discard(ip)

    async def admitted(self) -> dict[str, str]:
        """Ship address -> the verdict its egress gets (`accept`, `jump egress_<app>`, …)."""
        try:
            out = await run([self.nft, "-j", "list", "map", "ip", self.table, EGRESS])
        except CommandFailed as err:
            raise ProxyError(f"cannot read nft map {self.table} {EGRESS}: {err.output}") from err
        found = {}
        for item in json.loads(out).get("nftables", []):
            for key, verdict in item.get("map", {}).get("elem", []):
                kind, arg = next(iter(verdict.items()))
                found[str(key)] = f"{kind} {arg['target']}" if isinstance(arg, dict) else kind
        self._ships = set(found)
        return found

    async def remove(self, stable_port: int) -> None:
        """Stop forwarding `stable_port` (an app removed); absent is fine."""
        key = _port(stable_port)
        async with self._lock:
            if key in await self.current():
                await self._apply(f"delete element ip {self.table} {MAP} {{ {key} }}\n")
            if self._ports is not None:
                self._ports.discard(key)


CHAINS = ("output", "prerouting", "postrouting", "forward", "input", CLOSED)


def table_damage(listing: dict[str, Any], table: str) -> str:
    """What `nft -j list table` output lacks of what `_table_script` makes: '' when whole."""
    items = listing.get("nftables", [])
    sets = {i[k]["name"] for i in items for k in ("map", "set") if k in i}
    rules = {i["rule"]["chain"] for i in items if "rule" in i}
    lost = [f"{name} set" for name in (MAP, EGRESS, OFFERED) if name not in sets]
    lost += [f"{name} rules" for name in CHAINS if name not in rules]
    return f"nft table ip {table} lost its {', '.join(lost)}" if lost else ""


def forward_drops(listing: dict[str, Any], own: str) -> list[str]:
    """`family table chain` of every forward base chain with policy drop outside table `own`."""
    found = []
    for item in listing.get("nftables", []):
        chain = item.get("chain", {})
        dropping = chain.get("hook") == "forward" and chain.get("policy") == "drop"
        if dropping and (chain.get("table"), chain.get("family")) != (own, "ip"):
            found.append(f"{chain['family']} {chain['table']} {chain['name']}")
    return found


def _parse_map(listing: dict[str, Any]) -> dict[int, tuple[str, int]]:
    """Read `nft -j list map` output: elem is [[port, {"concat": [ip, port]}], ...]."""
    found: dict[int, tuple[str, int]] = {}
    for item in listing.get("nftables", []):
        for key, value in item.get("map", {}).get("elem", []):
            ship_ip, ship_port = value["concat"]
            found[int(key)] = (str(ship_ip), int(ship_port))
    return found


class StablePorts:
    """app -> stable port on the bridge address, persisted as JSON; an app keeps it forever."""

    def __init__(self, records_file: Path, first: int = 20000) -> None:
        self.records_file = records_file
        self.first = _port(first)
        self._known: dict[str, int] = {}  # read once: an app's port never changes

    def load(self) -> dict[str, int]:
        """Every app's port; an empty mapping before the first allocation."""
        try:
            data = json.loads(self.records_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            raise ProxyError(f"cannot read stable ports from {self.records_file}: {err}") from err
        if not isinstance(data, dict) or not all(isinstance(p, int) for p in data.values()):
            raise ProxyError(f"{self.records_file} is not a JSON object of app -> port")
        return data

    def port(self, app: str) -> int:
        """The app's stable port, allocating the next free one (durably) the first time."""
        if (known := self._known.get(app)) is not None:
            return known  # asked for every route at every swap: no file read for each
        ports = self.load()
        if (known := ports.get(sanitize_app_name(app))) is not None:
            self._known = ports
            return known
        taken = set(ports.values())
        port = next((p for p in range(self.first, 65536) if p not in taken), None)
        if port is None:
            raise ProxyError(f"no free stable port left from {self.first}")
        self._save({**ports, app: port})
        self._known = {**ports, app: port}
        return port

    def _save(self, ports: dict[str, int]) -> None:
        """Write, fsync and rename, so a crash leaves the old or the new file, never half."""
        write_atomically(self.records_file, json.dumps(ports, indent=1, sort_keys=True))
