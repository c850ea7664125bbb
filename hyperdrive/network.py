"""The ships' network: the bridge `<name>br0`, and persistent ship addresses on its subnet.

Ships get static addresses (DHCP costs ~3 s) and a MAC derived from the address: reusing
an address with a new MAC left it unreachable for 30–50 s (stale neighbour entries), so
the MAC follows the address, and released addresses are handed out again last.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, Protocol

from hyperdrive.errors import CommandFailed, NetworkError
from hyperdrive.files import write_atomically
from hyperdrive.headquarters.orders import Egress
from hyperdrive.names import mac_for_ip

__all__ = ["mac_for_ip"]  # derived from the address alone: names.py, used here for the bridge
from hyperdrive.procs import run

IP_TIMEOUT_S = 10.0
RESOLVE_TIMEOUT_S = 5.0
IFNAMSIZ = 15  # the kernel's limit on interface names
OWNER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def bridge_name(name: str) -> str:
    """`<name>br0`, checked against the kernel's 15-character limit on interface names."""
    bridge = f"{name}br0"
    if len(bridge) > IFNAMSIZ or not re.fullmatch(r"[a-z0-9][a-z0-9-]*", name):
        raise NetworkError(f"bridge name {bridge!r} is not a valid interface name (≤ 15 chars)")
    return bridge


def ship_subnet(subnet: IPv4Network | str) -> IPv4Network:
    """Parse HYPERDRIVE_SUBNET; it must leave room for the bridge and at least one ship."""
    try:
        network = IPv4Network(subnet)
    except ValueError as err:
        raise NetworkError(f"invalid subnet {subnet!r}: {err}") from err
    if network.prefixlen > 30:
        raise NetworkError(f"subnet {network} is too small: use /30 or larger")
    return network


def bridge_address(subnet: IPv4Network | str) -> IPv4Address:
    """The bridge (the ships' gateway) takes the subnet's first host address."""
    return ship_subnet(subnet).network_address + 1


async def _ip(*args: str, check: bool = True) -> tuple[int, str]:
    """Run `ip ARGS` with a timeout; return (exit code, output) or raise CommandFailed."""
    result = await run(["ip", *args], timeout=IP_TIMEOUT_S, merge=True)
    if result.returncode is None or (check and result.returncode != 0):
        raise CommandFailed(result.argv, result.returncode, result.stdout)
    return result.returncode, result.stdout


async def _link_kind(name: str) -> str | None:
    """The link's kind ('bridge', 'veth', '' for plain devices), or None if it does not exist."""
    rc, out = await _ip("-j", "-d", "link", "show", "dev", name, check=False)
    if rc != 0:
        return None
    links: list[dict[str, Any]] = json.loads(out)
    return str(links[0].get("linkinfo", {}).get("info_kind", "")) if links else None


async def ensure_bridge(name: str, subnet: IPv4Network | str) -> IPv4Address:
    """Create or repair `<name>br0`: fixed MAC, the subnet's first host address, up.

    Idempotent. The fixed MAC matters: a bridge otherwise takes its lowest port's MAC, and
    when that veth leaves, neighbours' ARP entries go stale. Returns the bridge address.
    """
    bridge, network = bridge_name(name), ship_subnet(subnet)
    address = bridge_address(network)
    kind = await _link_kind(bridge)
    if kind is None:
        await _ip("link", "add", bridge, "address", mac_for_ip(address), "type", "bridge")
    elif kind != "bridge":
        raise NetworkError(f"{bridge} exists but is a {kind or 'plain'} link, not a bridge")
    await _ip("link", "set", "dev", bridge, "address", mac_for_ip(address))
    await _ip("addr", "replace", f"{address}/{network.prefixlen}", "dev", bridge)
    await _ip("link", "set", "dev", bridge, "up")
    return address


async def teardown_bridge(name: str) -> None:
    """Delete `<name>br0` if it exists (tests and uninstall); ships on it lose their network."""
    bridge = bridge_name(name)
    if await _link_kind(bridge) is not None:
        await _ip("link", "del", "dev", bridge)


class IpAllocator:
    """Ship addresses, kept in a JSON records file so they survive restarts.

    Never-used addresses go first, in order; then released ones, longest-released first,
    so an address comes back as late as possible (its old neighbour entries have expired).
    Call from one thread (the event loop); the daemon's lock keeps other processes out.
    """

    def __init__(self, records_file: Path, subnet: IPv4Network | str) -> None:
        self.path = records_file
        self.subnet = ship_subnet(subnet)
        self._first = int(bridge_address(self.subnet)) + 1
        self._last = int(self.subnet.broadcast_address) - 1
        self._ships: dict[str, int] = {}
        self._released: dict[int, int] = {}  # address -> release sequence number
        self._fresh = self._first  # every address below this was handed out at least once
        self._seq = 0
        self._load()

    def allocate(self, ship: str) -> IPv4Address:
        """The ship's address: its existing one, else the best free one (persisted first)."""
        _check_owner(ship)
        if ship in self._ships:
            return IPv4Address(self._ships[ship])
        address = self._next_free()
        self._ships[ship] = address
        self._released.pop(address, None)
        self._save()
        return IPv4Address(address)

    def release(self, ship: str) -> None:
        """Give the ship's address back; it is reused only after every other one."""
        address = self._ships.pop(ship, None)
        if address is None:
            return
        self._seq += 1
        self._released[address] = self._seq
        self._save()

    def owner(self, ip: IPv4Address | str) -> str | None:
        """The ship holding `ip`, or None."""
        wanted = int(IPv4Address(ip))
        return next((ship for ship, addr in self._ships.items() if addr == wanted), None)

    def allocations(self) -> dict[str, IPv4Address]:
        """Every ship with its address (for restart recovery and `hd status`)."""
        return {ship: IPv4Address(addr) for ship, addr in self._ships.items()}

    def _next_free(self) -> int:
        if self._fresh <= self._last:
            self._fresh += 1
            return self._fresh - 1
        if not self._released:
            raise NetworkError(
                f"no free ship address left in {self.subnet} ({len(self._ships)} ships hold "
                "one): destroy old ships or widen HYPERDRIVE_SUBNET"
            )
        return min(self._released, key=self._released.__getitem__)

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as err:
            raise NetworkError(f"cannot read address records {self.path}: {err}") from err
        try:
            self._restore(data)
        except (KeyError, TypeError, ValueError) as err:
            raise NetworkError(f"address records {self.path} are damaged: {err!r}") from err

    def _restore(self, data: dict[str, Any]) -> None:
        if IPv4Network(data["subnet"]) != self.subnet:
            raise NetworkError(
                f"address records {self.path} are for subnet {data['subnet']}, "
                f"not {self.subnet}: destroy the ships first or move the file away"
            )
        self._ships = {_check_owner(s): self._inside(a) for s, a in data["ships"].items()}
        self._released = {self._inside(a): int(n) for a, n in data["released"].items()}
        self._fresh = max(self._first, int(IPv4Address(data["fresh"])))
        self._seq = int(data["seq"])

    def _inside(self, address: str) -> int:
        value = int(IPv4Address(address))
        if not self._first <= value <= self._last:
            raise ValueError(f"{address} is not a ship address in {self.subnet}")
        return value

    def _save(self) -> None:
        data = {
            "subnet": str(self.subnet),
            "ships": {s: str(IPv4Address(a)) for s, a in sorted(self._ships.items())},
            "released": {str(IPv4Address(a)): n for a, n in sorted(self._released.items())},
            "fresh": str(IPv4Address(self._fresh)),
            "seq": self._seq,
        }
        write_atomically(self.path, json.dumps(data, indent=1) + "\n")


def _check_owner(ship: str) -> str:
    if not isinstance(ship, str) or not OWNER.fullmatch(ship):
        raise NetworkError(f"invalid ship name {ship!r}")
    return ship


def enable_forwarding(proc_file: Path = Path("/proc/sys/net/ipv4/ip_forward")) -> None:
    """Ships reach each other's stable addresses through the host: IPv4 forwarding must be on."""
    try:
        if proc_file.read_text().strip() != "1":
            proc_file.write_text("1\n")
    except OSError as err:
        raise NetworkError(f"cannot enable IPv4 forwarding ({proc_file}): {err}") from err


class Firewall(Protocol):
    """The ships' rules in Hyperdrive's nft table (traffic.Traffic)."""

    async def ensure_table(self) -> None: ...

    async def admit(
        self, ship_ip: str, app: str, allow: Sequence[tuple[str, int]] | None
    ) -> None: ...

    async def dismiss(self, ship_ip: str) -> None: ...


Hook = Callable[[], Awaitable[None]]
Resolve = Callable[[str], Awaitable[list[str]]]


class ShipNetwork:
    """The Network port for real: `<name>br0` on HYPERDRIVE_SUBNET, forwarding on, the ships'
    addresses from an IpAllocator, their egress rules in the firewall, and `on_up` hooks (the
    ships' DNS forwarder binds to the bridge address) run once the bridge is there."""

    def __init__(
        self,
        name: str,
        subnet: IPv4Network | str,
        ips: IpAllocator,
        *,
        firewall: Firewall | None = None,
        on_up: Sequence[Hook] = (),
        resolve: Resolve | None = None,
    ) -> None:
        self.name = name
        self.subnet = ship_subnet(subnet)
        self.ips = ips
        self.firewall = firewall
        self.on_up = list(on_up)
        self.resolve = resolve or host_addresses
        self._up = False

    @property
    def gateway(self) -> str:
        return str(bridge_address(self.subnet))

    @property
    def prefixlen(self) -> int:
        return self.subnet.prefixlen

    @property
    def bridge(self) -> str:
        return bridge_name(self.name)

    @property
    def is_up(self) -> bool:
        return self._up

    async def ensure(self) -> None:
        if not self._up:
            await ensure_bridge(self.name, self.subnet)
            enable_forwarding()
            if self.firewall is not None:
                await self.firewall.ensure_table()
            for hook in self.on_up:
                await hook()
            self._up = True

    def allocate(self, ship: str) -> str:
        return str(self.ips.allocate(ship))

    def release(self, ship: str) -> None:
        self.ips.release(ship)

    async def admit(self, ship_ip: str, app: str, egress: Egress) -> None:
        if self.firewall is None:
            return
        allow = None if egress.open else await resolve_allowed(egress.allow, self.resolve)
        await self.firewall.admit(ship_ip, app, allow)

    async def dismiss(self, ship_ip: str) -> None:
        if self.firewall is not None and ship_ip:
            await self.firewall.dismiss(ship_ip)


async def resolve_allowed(
    allow: Sequence[tuple[str, int]], resolve: Resolve
) -> list[tuple[str, int]]:
    """`egress allow` names become the IPv4 addresses they resolve to now (as the ships would
    resolve them); a name that does not resolve fails the deploy rather than open nothing."""
    found: list[tuple[str, int]] = []
    for host, port in allow:
        try:
            IPv4Address(host)
        except ValueError:
            pass
        else:
            found.append((host, port))
            continue
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT_S):
                addresses = await resolve(host)
        except (OSError, TimeoutError) as err:
            addresses, why = [], str(err) or "timed out"
        else:
            why = "no IPv4 address"
        if not addresses:
            raise NetworkError(f"egress allow {host}:{port}: {host} does not resolve ({why})")
        found += [(address, port) for address in addresses]
    return found


async def host_addresses(host: str) -> list[str]:
    """IPv4 addresses of `host` from the host's own resolver."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, family=socket.AF_INET)
    return sorted({str(info[4][0]) for info in infos})
