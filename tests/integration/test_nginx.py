"""Routes against a real nginx master and real namespace ships behind a real nftables table."""

import asyncio
import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyperdrive.errors import ProxyError
from hyperdrive.nginx_reload import AppRoute, Nginx, Routes
from hyperdrive.traffic import Traffic
from tests.integration.net_fixtures import (
    Counts,
    ShipNet,
    children,
    free_port,
    http_get,
    new_connection_client,
    ship_of,
)

pytestmark = [pytest.mark.nginx, pytest.mark.root]

A_PORT, B_PORT, NOBODY_PORT = 20000, 20001, 20009


@pytest.fixture(scope="module")
def net() -> Iterator[ShipNet]:
    """A bridge, ship "one" behind stable port A_PORT and ship "two" behind B_PORT."""
    test_net = ShipNet().open()
    traffic = Traffic(test_net.tag, test_net.bridge_cidr)
    try:
        one, two = test_net.ship("one"), test_net.ship("two")
        asyncio.run(traffic.ensure_table())
        asyncio.run(traffic.point(A_PORT, one.ip, one.port))
        asyncio.run(traffic.point(B_PORT, two.ip, two.port))
        yield test_net
    finally:
        asyncio.run(traffic.drop_table())
        test_net.close()


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Nginx]:
    """An Nginx under a fresh prefix; its master is killed afterwards whatever happened."""
    server = Nginx(tmp_path / "nginx")
    yield server
    asyncio.run(server.stop())
    assert server.master_pid() is None


@pytest.fixture
def routes(nginx: Nginx) -> Routes:
    return Routes(nginx, http_port=free_port(), domain="hd.test", verify_timeout=1.0)


def route_a(net: ShipNet, **kwargs: object) -> AppRoute:
    return AppRoute("a", net.bridge_ip, A_PORT, **kwargs)  # type: ignore[arg-type]


def route_b(net: ShipNet, **kwargs: object) -> AppRoute:
    return AppRoute("b", net.bridge_ip, B_PORT, **kwargs)  # type: ignore[arg-type]


async def test_rendered_config_passes_nginx_t(net: ShipNet, routes: Routes) -> None:
    publish = free_port()
    await routes.apply([route_a(net, servernames=("www.a.test",), publish_port=publish)])
    prefix = f"{routes.nginx.prefix}/"
    done = subprocess.run(
        ["nginx", "-t", "-p", prefix, "-c", "conf/nginx.conf"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "syntax is ok" in done.stderr
    live = routes.nginx.prefix / "upstream.conf"
    assert "keepalive_time 1s;" in live.read_text()


async def test_app_served_at_its_path_with_prefix_stripped(net: ShipNet, routes: Routes) -> None:
    await routes.apply([route_a(net)])
    status, _, body = http_get(routes.http_port, "/a/hello/world?x=1")
    assert status == 200
    assert json.loads(body) == {
        "ship": "one",
        "path": "/hello/world?x=1",
        "host": "127.0.0.1",
        "prefix": "/a",
    }
    status, headers, _ = http_get(routes.http_port, "/a?x=1")
    assert (status, headers["Location"].split("/", 3)[-1]) == (301, "a/?x=1")
    assert http_get(routes.http_port, "/nobody/")[0] == 404


async def test_servername_and_domain_routes(net: ShipNet, routes: Routes) -> None:
    await routes.apply([route_a(net, servernames=("www.a.test",)), route_b(net)])
    assert json.loads(http_get(routes.http_port, "/x", "www.a.test")[2])["path"] == "/x"
    assert ship_of(routes.http_port, "/", "www.a.test") == "one"
    assert ship_of(routes.http_port, "/", "a.hd.test") == "one"
    assert ship_of(routes.http_port, "/", "b.hd.test") == "two"
    assert json.loads(http_get(routes.http_port, "/", "b.hd.test")[2])["prefix"] is None
    assert http_get(routes.http_port, "/", "c.hd.test")[0] == 404


async def test_publish_port_route(net: ShipNet, routes: Routes) -> None:
    publish = free_port()
    await routes.apply([route_a(net), route_b(net, publish_port=publish)])
    status, _, body = http_get(publish, "/direct")
    assert status == 200
    assert json.loads(body)["ship"] == "two"
    assert json.loads(body)["path"] == "/direct"


async def test_override_is_included_and_tested(net: ShipNet, routes: Routes) -> None:
    overrides = routes.nginx.prefix / "overrides"
    overrides.mkdir(parents=True)
    (overrides / "a.conf").write_text("add_header X-Admiral yes always;\n")
    await routes.apply([route_a(net, servernames=("www.a.test",))])
    assert http_get(routes.http_port, "/a/")[1].get("X-Admiral") == "yes"
    assert http_get(routes.http_port, "/", "www.a.test")[1].get("X-Admiral") == "yes"


async def test_bad_override_rejected_while_other_app_serves(net: ShipNet, routes: Routes) -> None:
    await routes.apply([route_a(net)])
    live, master = routes.nginx.live(), routes.nginx.master_pid()
    overrides = routes.nginx.prefix / "overrides"
    (overrides / "b.conf").write_text("this_is_not_nginx on;\n")
    with pytest.raises(ProxyError) as caught:
        await routes.apply([route_a(net), route_b(net)])
    assert 'unknown directive "this_is_not_nginx"' in str(caught.value)
    assert "overrides/b.conf:1" in str(caught.value)
    assert ship_of(routes.http_port, "/a/") == "one"
    assert http_get(routes.http_port, "/b/")[0] == 404
    assert (routes.nginx.live(), routes.nginx.master_pid()) == (live, master)
    (overrides / "b.conf").write_text("add_header X-Fixed yes;\n")
    await routes.apply([route_a(net), route_b(net)])
    assert http_get(routes.http_port, "/b/")[1].get("X-Fixed") == "yes"


async def test_config_broken_by_hand_is_rerendered(net: ShipNet, routes: Routes) -> None:
    """Hand edits of generated files are not trusted: the next apply renders from the routes."""
    await routes.apply([route_a(net)])
    (routes.nginx.prefix / "proxies.conf").write_text("location { broken\n")
    await routes.apply([route_a(net)])  # same routes: the difference on disk is repaired
    assert "proxy_pass" in (routes.nginx.prefix / "proxies.conf").read_text()
    (routes.nginx.prefix / "upstream.conf").write_text("garbage;\n")
    await routes.apply([route_a(net), route_b(net)])
    assert ship_of(routes.http_port, "/a/") == "one"
    assert ship_of(routes.http_port, "/b/") == "two"


async def test_unchanged_routes_do_not_reload(net: ShipNet, routes: Routes) -> None:
    await routes.apply([route_a(net), route_b(net)])
    master = routes.nginx.master_pid()
    assert master is not None
    before = (await routes.nginx.generation(), children(master))
    await routes.apply([route_b(net), route_a(net)])
    assert (await routes.nginx.generation(), children(master)) == before


def restarted(routes: Routes, **settings: object) -> Routes:
    """The Routes of a daemon started again on the same nginx prefix (settings may change)."""
    given: dict = {"http_port": routes.http_port, "domain": routes.domain, **settings}
    return Routes(Nginx(routes.nginx.prefix), verify_timeout=1.0, **given)


def generations(routes: Routes) -> list[str]:
    return sorted(p.name for p in routes.nginx.generations.iterdir())


async def test_a_start_with_unchanged_inputs_renders_and_reloads_nothing(
    net: ShipNet, routes: Routes
) -> None:
    await routes.apply([route_a(net), route_b(net)])
    master = routes.nginx.master_pid()
    assert master is not None
    before = (generations(routes), await routes.nginx.generation(), children(master))
    again = restarted(routes)
    await again.apply([route_a(net), route_b(net)], fresh=set())  # what Recovery does
    assert (generations(again), await again.nginx.generation(), children(master)) == before
    assert again.nginx.master_pid() == master


async def test_a_start_with_changed_inputs_renders_again(net: ShipNet, routes: Routes) -> None:
    """Edited while the daemon was down: the domain, an override (read afresh for its app)."""
    await routes.apply([route_a(net)])
    first = await routes.nginx.generation()
    again = restarted(routes, domain="elsewhere.test")
    await again.apply([route_a(net)], fresh=set())
    assert await again.nginx.generation() != first
    assert ship_of(again.http_port, "/", "a.elsewhere.test") == "one"
    (again.nginx.prefix / "overrides" / "a.conf").write_text("add_header X-Edited yes always;\n")
    third = restarted(again)
    await third.apply([route_a(net)], fresh={"a"})
    assert http_get(third.http_port, "/a/")[1].get("X-Edited") == "yes"


async def test_a_start_repairs_a_live_config_edited_while_down(
    net: ShipNet, routes: Routes
) -> None:
    await routes.apply([route_a(net)])
    (routes.nginx.prefix / "upstream.conf").write_text("garbage;\n")
    again = restarted(routes)
    await again.apply([route_a(net)], fresh=set())
    assert "garbage" not in (again.nginx.prefix / "upstream.conf").read_text()
    assert ship_of(again.http_port, "/a/") == "one"


async def test_a_generation_without_its_key_is_adopted_when_it_matches(
    net: ShipNet, routes: Routes
) -> None:
    """Written by an older Hyperdrive: rendered once to compare, no reload, then recorded."""
    await routes.apply([route_a(net)])
    live = routes.nginx.live()
    assert live is not None
    (live / "rendered-from").unlink()
    before = (generations(routes), await routes.nginx.generation())
    again = restarted(routes)
    await again.apply([route_a(net)], fresh=set())
    assert (generations(again), await again.nginx.generation()) == before
    assert (live / "rendered-from").is_file()


async def test_app_that_does_not_answer_is_rolled_back(net: ShipNet, routes: Routes) -> None:
    await routes.apply([route_a(net)])
    generation = await routes.nginx.generation()
    dead = AppRoute("c", net.bridge_ip, NOBODY_PORT)
    with pytest.raises(ProxyError, match=r"no answer through nginx from c .*502"):
        await routes.apply([route_a(net), dead])
    assert await routes.nginx.generation() == generation
    assert http_get(routes.http_port, "/c/")[0] == 404
    assert ship_of(routes.http_port, "/a/") == "one"


async def test_reload_refused_by_nginx_keeps_old_config(net: ShipNet, routes: Routes) -> None:
    """`nginx -t` does not bind ports; a taken PUBLISH_PORT only fails at reload."""
    await routes.apply([route_a(net)])
    with socket.socket() as squatter:
        squatter.bind(("0.0.0.0", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        with pytest.raises(ProxyError, match="Address already in use"):
            await routes.apply([route_a(net), route_b(net, publish_port=taken)])
    assert ship_of(routes.http_port, "/a/") == "one"
    assert http_get(routes.http_port, "/b/")[0] == 404


async def test_conflicting_servername_is_refused(net: ShipNet, routes: Routes) -> None:
    with pytest.raises(ProxyError, match=r"b: server name www.x.test is already taken by a"):
        await routes.apply(
            [route_a(net, servernames=("www.x.test",)), route_b(net, servernames=("www.x.test",))]
        )
    with pytest.raises(ProxyError, match=r"b: server name a.hd.test is already taken by a"):
        await routes.apply([route_a(net), route_b(net, servernames=("a.hd.test",))])


async def test_master_adopted_by_a_new_nginx_while_serving(net: ShipNet, routes: Routes) -> None:
    """A daemon restart: a new Nginx object finds the master by its pid file; no request fails."""
    await routes.apply([route_a(net)])
    master = routes.nginx.master_pid()
    stop, counts = asyncio.Event(), Counts()
    load = asyncio.create_task(new_connection_client(routes.http_port, "/a/", stop, counts))
    await asyncio.sleep(0.3)
    reborn = Routes(Nginx(routes.nginx.prefix), http_port=routes.http_port, domain="hd.test")
    assert await reborn.nginx.start() == master
    await reborn.apply([route_a(net)])  # nothing changed: no reload
    await reborn.apply([route_a(net), route_b(net)])
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.wait_for(load, 10)
    assert reborn.nginx.master_pid() == master
    assert ship_of(routes.http_port, "/b/") == "two"
    assert counts.requests > 20
    assert (counts.errors, counts.non_2xx) == (0, 0)


async def test_first_config_that_fails_leaves_no_nginx_behind(net: ShipNet, routes: Routes) -> None:
    with pytest.raises(ProxyError, match="no answer through nginx from c"):
        await routes.apply([AppRoute("c", net.bridge_ip, NOBODY_PORT)])
    assert (routes.nginx.master_pid(), routes.nginx.live()) == (None, None)


async def test_dead_master_is_started_again_on_the_same_config(
    net: ShipNet, routes: Routes
) -> None:
    await routes.apply([route_a(net)])
    generation = await routes.nginx.generation()
    await routes.nginx.stop()  # nginx died (or the machine rebooted) while routes stayed
    await routes.apply([route_a(net)])
    assert routes.nginx.master_pid() is not None
    assert await routes.nginx.generation() == generation
    assert ship_of(routes.http_port, "/a/") == "one"
