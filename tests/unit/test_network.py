"""Ship addresses: stable MACs and the persistent, rotating IpAllocator."""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hyperdrive.errors import NetworkError
from hyperdrive.headquarters.orders import Egress
from hyperdrive.network import IpAllocator, ShipNetwork, bridge_address, mac_for_ip


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_mac_is_stable_unicast_locally_administered_and_unique(value: int) -> None:
    mac = mac_for_ip(IPv4Address(value))
    first = int(mac.split(":")[0], 16)
    assert first & 0b10  # locally administered
    assert not first & 0b01  # unicast
    assert mac == mac_for_ip(str(IPv4Address(value)))
    assert mac != mac_for_ip(IPv4Address(value ^ 1))


def test_allocator_hands_out_only_ship_addresses_until_full(tmp_path: Path) -> None:
    allocator = IpAllocator(tmp_path / "ips.json", "10.9.0.0/29")
    got = [allocator.allocate(f"ship{i}") for i in range(5)]
    assert got == [IPv4Address(f"10.9.0.{n}") for n in range(2, 7)]
    assert bridge_address("10.9.0.0/29") == IPv4Address("10.9.0.1")
    with pytest.raises(NetworkError, match=r"no free ship address left in 10\.9\.0\.0/29"):
        allocator.allocate("one-too-many")
    assert allocator.owner("10.9.0.4") == "ship2"
    assert allocator.owner("10.9.0.1") is None


def test_allocate_is_idempotent_and_persistent(tmp_path: Path) -> None:
    records = tmp_path / "records" / "ips.json"
    first = IpAllocator(records, "10.9.0.0/24")
    a, b = first.allocate("a"), first.allocate("b")
    assert first.allocate("a") == a
    first.release("a")
    again = IpAllocator(records, "10.9.0.0/24")
    assert again.allocations() == {"b": b}
    assert again.allocate("c") == IPv4Address("10.9.0.4")  # a fresh one, not a's
    assert not list(records.parent.glob(".*tmp"))  # written atomically, nothing left over


def test_released_addresses_come_back_last_and_oldest_first(tmp_path: Path) -> None:
    allocator = IpAllocator(tmp_path / "ips.json", "10.9.0.0/29")  # ships .2 – .6
    for name in "abcde":
        allocator.allocate(name)
    allocator.release("d")
    allocator.release("b")
    assert allocator.allocate("f") == IPv4Address("10.9.0.5")  # d was released first
    allocator.release("f")
    assert allocator.allocate("g") == IPv4Address("10.9.0.3")  # b, before f again
    assert allocator.allocate("h") == IPv4Address("10.9.0.5")
    # The rotation survives a restart.
    allocator.release("a")
    allocator.release("c")
    reloaded = IpAllocator(tmp_path / "ips.json", "10.9.0.0/29")
    assert reloaded.allocate("i") == IPv4Address("10.9.0.2")


def test_a_whole_subnet_cycle_never_repeats_early(tmp_path: Path) -> None:
    allocator = IpAllocator(tmp_path / "ips.json", "10.9.0.0/24")
    seen = []
    for n in range(600):  # each ship lives briefly; 253 ship addresses
        seen.append(allocator.allocate(f"s{n}"))
        allocator.release(f"s{n}")
    for i, address in enumerate(seen):
        assert address not in seen[i + 1 : i + 253]
    assert IPv4Address("10.9.0.1") not in seen
    assert IPv4Address("10.9.0.255") not in seen


def test_records_for_another_subnet_or_damaged_are_clear_errors(tmp_path: Path) -> None:
    records = tmp_path / "ips.json"
    IpAllocator(records, "10.9.0.0/24").allocate("a")
    with pytest.raises(NetworkError, match=r"are for subnet 10\.9\.0\.0/24, not 10\.8\.0\.0/24"):
        IpAllocator(records, IPv4Network("10.8.0.0/24"))
    records.write_text('{"subnet": "10.9.0.0/24", "ships": {"a": "10.9.0.255"}}')
    with pytest.raises(NetworkError, match="damaged"):
        IpAllocator(records, "10.9.0.0/24")
    records.write_text("{not json")
    with pytest.raises(NetworkError, match="cannot read"):
        IpAllocator(records, "10.9.0.0/24")
    assert records.read_text() == "{not json"  # left for a person to inspect, not replaced


def test_bad_ship_names_are_refused(tmp_path: Path) -> None:
    allocator = IpAllocator(tmp_path / "ips.json", "10.9.0.0/24")
    with pytest.raises(NetworkError, match="invalid ship name"):
        allocator.allocate("-rf")


class RecordingFirewall:
    """What ShipNetwork hands the nft table, kept."""

    def __init__(self) -> None:
        self.rules: dict[str, tuple[str, list[tuple[str, int]] | None]] = {}

    async def ensure_table(self) -> None:
        pass

    async def admit(self, ship_ip: str, app: str, allow: Sequence[tuple[str, int]] | None) -> None:
        self.rules[ship_ip] = (app, None if allow is None else list(allow))

    async def dismiss(self, ship_ip: str) -> None:
        self.rules.pop(ship_ip, None)


async def test_egress_names_resolve_when_the_rule_is_made_and_addresses_pass_as_they_are(
    tmp_path: Path,
) -> None:
    names = {"db.example": ["10.9.0.7", "10.9.0.8"], "empty.example": []}

    async def resolve(host: str) -> list[str]:
        return names[host]

    firewall = RecordingFirewall()
    ips = IpAllocator(tmp_path / "ips.json", "10.213.0.0/24")
    network = ShipNetwork("hd", "10.213.0.0/24", ips, firewall=firewall, resolve=resolve)
    await network.admit("10.213.0.2", "web", Egress())
    await network.admit("10.213.0.3", "api", Egress(open=False, allow=(("db.example", 5432),)))
    await network.admit("10.213.0.4", "off", Egress(open=False))
    await network.admit("10.213.0.5", "ip", Egress(open=False, allow=(("192.0.2.9", 443),)))
    assert firewall.rules == {
        "10.213.0.2": ("web", None),
        "10.213.0.3": ("api", [("10.9.0.7", 5432), ("10.9.0.8", 5432)]),
        "10.213.0.4": ("off", []),
        "10.213.0.5": ("ip", [("192.0.2.9", 443)]),
    }
    with pytest.raises(NetworkError, match=r"empty\.example does not resolve"):
        await network.admit("10.213.0.6", "x", Egress(open=False, allow=(("empty.example", 1),)))
    await network.dismiss("10.213.0.3")
    assert "10.213.0.3" not in firewall.rules
