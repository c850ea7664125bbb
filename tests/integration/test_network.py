"""The ships' bridge with the real `ip`: created, repaired, keeps its MAC, torn down."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest

from hyperdrive.errors import NetworkError
from hyperdrive.network import bridge_name, ensure_bridge, mac_for_ip, teardown_bridge
from tests.integration.lxc_fixtures import SUBNET, require_lxc, subnet_in_use
from tests.integration.lxc_fixtures import tag as tag  # noqa: PLC0414 - the fixture

pytestmark = pytest.mark.root


def ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)
    assert done.returncode == 0, f"ip {' '.join(args)}: {done.stderr}"
    return done.stdout


def link(name: str) -> dict:
    return json.loads(ip("-j", "addr", "show", "dev", name))[0]


def exists(name: str) -> bool:
    return (
        subprocess.run(
            ["ip", "link", "show", "dev", name], capture_output=True, timeout=10, check=False
        ).returncode
        == 0
    )


@pytest.fixture
def free_subnet(tag: str) -> Iterator[str]:
    """The test subnet, checked free before; `<tag>br0` and its test peers removed after."""
    require_lxc()
    assert not subnet_in_use(SUBNET), f"{SUBNET} is already in use on this host"
    yield tag
    for name in (f"{tag}br0", f"{tag}p0", f"{tag}p1"):
        if exists(name):
            ip("link", "del", "dev", name)


async def test_ensure_bridge_creates_a_bridge_with_fixed_mac_and_first_address(
    free_subnet: str,
) -> None:
    address = await ensure_bridge(free_subnet, SUBNET)
    assert address == IPv4Address("10.213.200.1")
    state = link(bridge_name(free_subnet))
    assert state["address"] == mac_for_ip(address)
    assert "UP" in state["flags"]
    inet = [(a["local"], a["prefixlen"]) for a in state["addr_info"] if a["family"] == "inet"]
    assert inet == [("10.213.200.1", 24)]
    await teardown_bridge(free_subnet)
    assert not exists(bridge_name(free_subnet))
    await teardown_bridge(free_subnet)  # gone already: nothing to do


async def test_ensure_bridge_is_idempotent_and_repairs(free_subnet: str) -> None:
    bridge = bridge_name(free_subnet)
    await ensure_bridge(free_subnet, SUBNET)
    ip("addr", "flush", "dev", bridge)
    ip("link", "set", "dev", bridge, "down")
    assert await ensure_bridge(free_subnet, SUBNET) == IPv4Address("10.213.200.1")
    assert await ensure_bridge(free_subnet, SUBNET) == IPv4Address("10.213.200.1")
    state = link(bridge)
    assert "UP" in state["flags"]
    assert [a["local"] for a in state["addr_info"] if a["family"] == "inet"] == ["10.213.200.1"]


async def test_bridge_keeps_its_mac_when_a_port_leaves(free_subnet: str) -> None:
    bridge = bridge_name(free_subnet)
    await ensure_bridge(free_subnet, SUBNET)
    # A port with a lower MAC than the bridge's: an unfixed bridge would take it, then lose it.
    ip(
        "link",
        "add",
        f"{free_subnet}p0",
        "address",
        "02:00:00:00:00:01",
        "type",
        "veth",
        "peer",
        "name",
        f"{free_subnet}p1",
    )
    ip("link", "set", f"{free_subnet}p0", "master", bridge, "up")
    assert link(bridge)["address"] == mac_for_ip("10.213.200.1")
    ip("link", "del", "dev", f"{free_subnet}p0")
    assert link(bridge)["address"] == mac_for_ip("10.213.200.1")


async def test_a_non_bridge_link_with_the_name_is_refused(free_subnet: str) -> None:
    ip("link", "add", f"{free_subnet}br0", "type", "veth", "peer", "name", f"{free_subnet}p1")
    with pytest.raises(NetworkError, match="not a bridge"):
        await ensure_bridge(free_subnet, SUBNET)


async def test_bad_names_and_subnets_are_refused_before_running_ip() -> None:
    with pytest.raises(NetworkError, match="15"):
        await ensure_bridge("a-name-far-too-long", SUBNET)
    with pytest.raises(NetworkError, match="too small"):
        await ensure_bridge("hdtx", "10.213.200.0/31")
    with pytest.raises(NetworkError, match="invalid subnet"):
        await ensure_bridge("hdtx", "10.213.200.1/24")
