"""The ships' firewall and DNS for real: nft, network-namespace ships on a bridge, a world
namespace routed through the host, the daemon's DNS forwarder on the bridge address."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyperdrive.shipdns import ShipDns
from hyperdrive.traffic import Traffic
from tests.e2e.world import World, make_wheel
from tests.integration.net_fixtures import ShipNet, sh

pytestmark = [pytest.mark.root]

FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
FETCH = """
import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode().strip())
except Exception as err:
    print(f"FAILED {err}")
"""
RESOLVE = """
import sys, dns.message, dns.query
answer = dns.query.udp(dns.message.make_query(sys.argv[1], "A"), sys.argv[2], timeout=3)
print(sorted(str(r) for rrset in answer.answer for r in rrset) or answer.rcode())
"""


@pytest.fixture(scope="module")
def net() -> Iterator[ShipNet]:
    test_net = ShipNet().open()
    try:
        test_net.ship("one")
        yield test_net
    finally:
        test_net.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("world")
    make_wheel(root / "wheels", "hdtdemo")
    place = World(root / "ns", root / "wheels").open()
    before = FORWARD.read_text()
    FORWARD.write_text("1\n")
    try:
        yield place
    finally:
        FORWARD.write_text(before)
        place.close()


def table(net: ShipNet, egress: bool = True) -> Iterator[Traffic]:
    traffic = Traffic(net.tag, net.bridge_cidr, device=net.bridge, egress=egress)
    asyncio.run(traffic.ensure_table())
    try:
        yield traffic
    finally:
        asyncio.run(traffic.drop_table())


@pytest.fixture
def traffic(net: ShipNet) -> Iterator[Traffic]:
    yield from table(net)


def in_ship(net: ShipNet, program: str, *args: str) -> str:
    """Run a Python snippet inside ship one's namespace; its output."""
    argv = ["ip", "netns", "exec", net.ships[0].netns, sys.executable, "-c", program, *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    return (done.stdout + done.stderr).strip()


def fetch(net: ShipNet, url: str) -> str:
    return in_ship(net, FETCH, url)


async def test_a_ship_reaches_the_world_with_the_hosts_address(
    net: ShipNet, world: World, traffic: Traffic
) -> None:
    await traffic.admit(net.ships[0].ip, "one", None)
    assert fetch(net, f"http://{world.ip}/from-a-ship") == "hello from the world"
    seen = {r["client"] for r in world.requests() if r["path"] == "/from-a-ship"}
    assert seen == {world.host_ip}, "the world sees the host, never the ship's own address"


async def test_egress_off_and_allow_lists(net: ShipNet, world: World, traffic: Traffic) -> None:
    ship = net.ships[0].ip
    await traffic.admit(ship, "one", [])
    assert fetch(net, f"http://{world.ip}/cut").startswith("FAILED")
    await traffic.admit(ship, "one", [(world.ip, 80)])
    assert fetch(net, f"http://{world.ip}/allowed") == "hello from the world"
    assert "Timeout" in in_ship(net, RESOLVE, world.index_host, world.ip)  # :53 not allowed
    await traffic.admit(ship, "one", [(world.ip, 53)])
    assert in_ship(net, RESOLVE, world.index_host, world.ip) == str([world.ip])
    assert fetch(net, f"http://{world.ip}/not-allowed").startswith("FAILED")
    assert await traffic.admitted() == {ship: "jump egress_one"}
    await traffic.dismiss(ship)
    await traffic.dismiss(ship)  # gone already: fine
    assert await traffic.admitted() == {}
    paths = {r["path"] for r in world.requests()}
    assert "/allowed" in paths
    assert not {"/cut", "/not-allowed"} & paths


def test_egress_off_for_every_ship_wins_over_the_orders(net: ShipNet, world: World) -> None:
    for traffic in table(net, egress=False):
        asyncio.run(traffic.admit(net.ships[0].ip, "one", None))
        assert fetch(net, f"http://{world.ip}/globally-cut").startswith("FAILED")
        assert asyncio.run(traffic.admitted()) == {net.ships[0].ip: "jump egress_closed"}


@pytest.fixture
def host_services() -> Iterator[list[int]]:
    """Two TCP services of the host on every address: neither offered to ships."""
    servers = [socket.create_server(("0.0.0.0", 0)) for _ in range(2)]
    stop = threading.Event()

    def answer(server: socket.socket) -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhost\n")

    threads = [threading.Thread(target=answer, args=(s,), daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    yield [s.getsockname()[1] for s in servers]
    stop.set()
    for thread in threads:
        thread.join(5)
    for server in servers:
        server.close()


async def test_ships_reach_only_the_host_ports_hyperdrive_offers(
    net: ShipNet, world: World, traffic: Traffic, host_services: list[int]
) -> None:
    offered, private = host_services
    await traffic.offer({offered})
    assert fetch(net, f"http://{traffic.bridge_ip}:{offered}/") == "host"
    assert fetch(net, f"http://{traffic.bridge_ip}:{private}/").startswith("FAILED")
    # the host's other addresses are the host too
    assert fetch(net, f"http://{world.host_ip}:{offered}/").startswith("FAILED")
    assert fetch(net, f"http://{world.host_ip}:{private}/").startswith("FAILED")
    await traffic.offer(set())
    assert fetch(net, f"http://{traffic.bridge_ip}:{offered}/").startswith("FAILED")
    ping = [
        "ip",
        "netns",
        "exec",
        net.ships[0].netns,
        "busybox",
        "ping",
        "-c1",
        "-W2",
        traffic.bridge_ip,
    ]
    assert subprocess.run(ping, capture_output=True, timeout=10, check=False).returncode == 0


async def test_the_ships_dns_answers_app_names_and_relays_the_rest(
    net: ShipNet, world: World, traffic: Traffic
) -> None:
    dns = ShipDns(traffic.bridge_ip, lambda: {"web.example.com"}, [world.ip])
    await dns.start()
    await dns.bind()
    try:
        await traffic.admit(net.ships[0].ip, "one", [])  # egress off: DNS is the host's, still
        got = await asyncio.to_thread(in_ship, net, RESOLVE, world.index_host, traffic.bridge_ip)
        assert got == str([world.ip])
        got = await asyncio.to_thread(in_ship, net, RESOLVE, "WEB.example.com", traffic.bridge_ip)
        assert got == str([traffic.bridge_ip])
        got = await asyncio.to_thread(in_ship, net, RESOLVE, "nx.invalid", traffic.bridge_ip)
        assert got == "5", "the world's own answer (dnsmasq without upstreams: REFUSED)"
    finally:
        await dns.close()


async def test_the_ships_dns_says_servfail_when_no_upstream_answers(net: ShipNet) -> None:
    dns = ShipDns(net.bridge_ip, set, ["127.0.0.9"])  # nothing listens there
    await dns.start()
    await dns.bind()
    try:
        got = await asyncio.to_thread(in_ship, net, RESOLVE, "example.invalid", net.bridge_ip)
        assert got == "2"  # SERVFAIL
    finally:
        await dns.close()


async def test_a_dropping_forward_chain_elsewhere_is_found_and_the_fix_works(
    net: ShipNet, world: World, traffic: Traffic
) -> None:
    """Docker-style hosts: our accept cannot overrule another table's drop; the fix can."""
    other = f"{net.tag}fw"
    sh("nft", "add", "table", "ip", other)
    try:
        sh(
            "nft",
            "add",
            "chain",
            "ip",
            other,
            "FORWARD",
            "{ type filter hook forward priority 0; policy drop; }",
        )
        await traffic.admit(net.ships[0].ip, "one", None)
        assert fetch(net, f"http://{world.ip}/dropped").startswith("FAILED")
        assert await traffic.forward_drops() == [f"ip {other} FORWARD"]
        fix = traffic.forward_fix(f"ip {other} FORWARD")
        for command in re.findall(r"`(nft insert rule [^`]+)`", fix):
            sh(*command.split())
        assert fetch(net, f"http://{world.ip}/let-through") == "hello from the world"
    finally:
        sh("nft", "delete", "table", "ip", other, check=False)
