"""Traffic: the nftables map that moves an app between ships; real nft, nginx, namespaces."""

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyperdrive.accesslog import RequestStream
from hyperdrive.errors import ProxyError
from hyperdrive.nginx_reload import AppRoute, Nginx, Routes
from hyperdrive.traffic import StablePorts, Traffic
from tests.integration.net_fixtures import Ship, ShipNet, children, free_port, sh, ship_of

pytestmark = [pytest.mark.root]

STABLE = 20000
FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


@pytest.fixture(scope="module")
def net() -> Iterator[ShipNet]:
    """A bridge with ships "one" and "two"; the table is made per test."""
    test_net = ShipNet().open()
    try:
        test_net.ship("one")
        test_net.ship("two")
        yield test_net
    finally:
        test_net.close()


@pytest.fixture
def traffic(net: ShipNet) -> Iterator[Traffic]:
    """Our table, created fresh and dropped afterwards whatever happened."""
    table = Traffic(net.tag, net.bridge_cidr)
    asyncio.run(table.ensure_table())
    yield table
    asyncio.run(table.drop_table())


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Nginx]:
    server = Nginx(tmp_path / "nginx")
    yield server
    asyncio.run(server.stop())


@pytest.fixture
def forwarding() -> Iterator[None]:
    """Ships reaching the host's stable addresses are routed: ip_forward on, restored after."""
    before = FORWARD.read_text()
    FORWARD.write_text("1\n")
    yield
    FORWARD.write_text(before)


def await_ship(port: int, path: str, want: str, seconds: float = 4.0) -> float:
    """Ask on new connections until `want` answers; the seconds it took (bounded)."""
    start = time.monotonic()
    while ship_of(port, path) != want:
        assert time.monotonic() - start < seconds, f"{want} never answered"
        time.sleep(0.02)
    return time.monotonic() - start


async def test_point_switches_ships_without_nginx_reload(
    net: ShipNet, traffic: Traffic, nginx: Nginx
) -> None:
    one, two = net.ships
    routes = Routes(nginx, http_port=free_port())
    stream = RequestStream(nginx.prefix / "run" / "requests.sock")  # as the daemon listens
    await stream.open()
    try:
        await _switch(routes, traffic, nginx, one, two)
    finally:
        await stream.close()
    assert stream.apps["a"].classes["2xx"] >= 20, "nginx told the daemon of each request"


async def _switch(routes: Routes, traffic: Traffic, nginx: Nginx, one: Ship, two: Ship) -> None:
    await traffic.point(STABLE, one.ip, one.port)  # a new app: traffic first, then its route
    await routes.apply([AppRoute("a", traffic.bridge_ip, STABLE)])
    assert ship_of(routes.http_port, "/a/") == "one"
    master = nginx.master_pid()
    assert master is not None
    before = (children(master), await nginx.generation(), nginx.log_offset())
    await traffic.point(STABLE, two.ip, two.port)
    await_ship(routes.http_port, "/a/", "two")
    await asyncio.sleep(1.2)  # keep-alive connections to the old ship live at most 1 s
    assert {ship_of(routes.http_port, "/a/") for _ in range(20)} == {"two"}
    assert nginx.master_pid() == master
    assert (children(master), await nginx.generation(), nginx.log_offset()) == before


async def test_current_and_remove(net: ShipNet, traffic: Traffic) -> None:
    one, two = net.ships
    assert await traffic.current() == {}
    await traffic.point(STABLE, one.ip, 8000)
    await traffic.point(STABLE + 1, two.ip, 8001)
    await traffic.point(STABLE, two.ip, 8000)
    assert await traffic.current() == {STABLE: (two.ip, 8000), STABLE + 1: (two.ip, 8001)}
    await traffic.remove(STABLE)
    await traffic.remove(STABLE)  # already gone: fine
    assert await traffic.current() == {STABLE + 1: (two.ip, 8001)}


async def test_point_and_admit_right_when_someone_changed_the_maps(
    net: ShipNet, traffic: Traffic
) -> None:
    """A swap builds its transaction from what the daemon last wrote, without listing the map;
    an element someone else removed, added or changed meanwhile still ends as asked."""
    one, two = net.ships
    table = traffic.table
    await traffic.point(STABLE, one.ip, 8000)
    await traffic.admit(one.ip, "one", None)
    sh("nft", "flush", "map", "ip", table, "app_backends")
    sh("nft", "flush", "map", "ip", table, "ship_egress")
    await traffic.point(STABLE, two.ip, 8000)  # believed there: it is not
    await traffic.admit(one.ip, "one", [])  # believed there: it is not
    sh("nft", "add", "element", "ip", table, "app_backends", f"{{ {STABLE + 1} : {one.ip} . 1 }}")
    sh("nft", "add", "element", "ip", table, "ship_egress", f"{{ {two.ip} : drop }}")
    await traffic.point(STABLE + 1, two.ip, 8001)  # believed absent: it is there, elsewhere
    await traffic.admit(two.ip, "two", None)  # believed absent: it is there, another verdict
    assert await traffic.current() == {STABLE: (two.ip, 8000), STABLE + 1: (two.ip, 8001)}
    assert await traffic.admitted() == {one.ip: "jump egress_one", two.ip: "accept"}


async def test_ensure_table_keeps_elements_and_rules_once(net: ShipNet, traffic: Traffic) -> None:
    one, _ = net.ships
    await traffic.point(STABLE, one.ip, one.port)
    await traffic.ensure_table()
    await traffic.ensure_table()
    assert await traffic.current() == {STABLE: (one.ip, one.port)}
    listing = sh("nft", "list", "table", "ip", traffic.table)
    assert listing.count("dnat ip to tcp dport map @app_backends") == 2  # output + prerouting
    assert listing.count("masquerade") == 2  # ship to stable address; ship to the world


async def test_drop_table_leaves_other_tables_alone(net: ShipNet, traffic: Traffic) -> None:
    other = f"{net.tag}other"
    sh("nft", "add", "table", "ip", other)
    try:
        await traffic.drop_table()
        assert not await traffic.exists()
        assert other in sh("nft", "list", "tables")
    finally:
        sh("nft", "delete", "table", "ip", other, check=False)


@pytest.mark.usefixtures("forwarding")
async def test_ship_reaches_another_apps_stable_address(net: ShipNet, traffic: Traffic) -> None:
    one, two = net.ships
    await traffic.point(STABLE + 1, two.ip, two.port)
    url = f"http://{traffic.bridge_ip}:{STABLE + 1}/from-one"
    fetch = f"import urllib.request as u; print(u.urlopen({url!r}, timeout=5).read().decode())"
    done = subprocess.run(
        ["ip", "netns", "exec", one.netns, "python3", "-c", fetch],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ship"] == "two"


async def test_point_refuses_bad_values(traffic: Traffic) -> None:
    with pytest.raises(ProxyError, match="invalid IPv4"):
        await traffic.point(STABLE, "10.0.0.1; flush ruleset", 80)
    with pytest.raises(ProxyError, match="invalid TCP port"):
        await traffic.point(70000, "10.213.210.2", 80)


def test_stable_ports_are_stable_forever(tmp_path: Path) -> None:
    records = tmp_path / "records" / "stable_ports.json"
    ports = StablePorts(records, first=21000)
    assert [ports.port("a"), ports.port("b"), ports.port("a")] == [21000, 21001, 21000]
    again = StablePorts(records, first=21000)
    assert [again.port("b"), again.port("c")] == [21001, 21002]
    assert json.loads(records.read_text()) == {"a": 21000, "b": 21001, "c": 21002}
    records.write_text("{not json")
    with pytest.raises(ProxyError, match="cannot read stable ports"):
        again.port("d")
