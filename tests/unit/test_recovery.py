"""Recovery after a crash in each stage, on the fakes: a daemon is stopped dead inside a deploy
(its task simply never resumes, as after SIGKILL), a new daemon starts over the same world and
the same files, and the records come true again while the old ship keeps serving."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hyperdrive.headquarters import Headquarters, parse_orders
from hyperdrive.pipeline.model import LIVE, STOPPED
from tests.unit.deploy_world import PYTHON, Squadron, World


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    world = World(tmp_path)
    yield world
    world.close()


async def crash_in(world: World, point: str) -> tuple[Squadron, str, asyncio.Task[str]]:
    """A live app, then a deploy of it held at `point`; the daemon 'dies' there."""
    first = world.daemon()
    deploy = await first.deploy("web")
    assert first.outcome(deploy)["event"] == "DeployFinished"
    old = first.app("web").live
    assert old is not None
    world.holds.hold(point)
    task = asyncio.create_task(first.deploy("web", PYTHON, deploy="t-crash"))
    await world.holds.arrived(point)
    return world.daemon(), old, task


async def recover(hd: Squadron) -> None:
    await asyncio.wait_for(hd.daemon.recovery.run(), 5)


async def forget(task: asyncio.Task[str]) -> None:
    """The dead daemon's deploy: gone with it (cancelled only so the test ends cleanly)."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("point", ["build", "health", "swap"])
async def test_a_crash_before_the_swap_is_complete_destroys_the_half_made_ship(
    world: World, point: str
) -> None:
    hd, old, task = await crash_in(world, point)
    half = hd.app("web").ships[-1].name
    assert half != old
    await recover(hd)
    await forget(task)
    app = hd.app("web")
    assert app.live == old
    assert [s.name for s in app.ships] == [old]
    assert half not in world.runtime.containers
    assert half not in world.network.taken
    assert world.serving("web") == hd.live_ship_address("web")
    destroyed = hd.events(name="ShipDestroyed")
    assert [e["ship"] for e in destroyed] == [half]
    assert "mid-deploy at a restart" in destroyed[0]["message"]


async def test_a_crash_in_the_drain_stops_the_old_ship_and_keeps_the_new_one_live(
    world: World,
) -> None:
    hd, old, task = await crash_in(world, "drain")
    new = hd.app("web").live
    assert new != old
    await recover(hd)
    await forget(task)
    app = hd.app("web")
    assert app.live == new
    assert app.ship(old).state == STOPPED  # type: ignore[union-attr]
    assert app.ship(new).state == LIVE  # type: ignore[union-attr]
    assert old not in world.runtime.running_apps()
    assert world.serving("web") == hd.live_ship_address("web")


async def test_a_crash_in_the_retire_forgets_the_ship_whose_container_is_gone(
    world: World,
) -> None:
    hd = world.daemon(keep_ships=1)
    ships = []
    for body in ("v1\n", "v2\n"):
        await hd.deploy("web", {"index.html": body})
        ships.append(hd.app("web").live)
    world.holds.hold("destroy")
    task = asyncio.create_task(hd.deploy("web", {"index.html": "v3\n"}, deploy="t-crash"))
    await world.holds.arrived("destroy")
    after = world.daemon(keep_ships=1)
    assert after.app("web").ship(ships[0]) is not None, "the record still names it"
    await recover(after)
    await forget(task)
    assert after.app("web").ship(ships[0]) is None
    assert after.app("web").live is not None


async def test_a_reboot_starts_the_live_ship_and_its_app_again(world: World) -> None:
    hd = world.daemon()
    await hd.deploy("web")
    live = hd.app("web").live
    assert live is not None
    await world.runtime.stop(live)  # the host rebooted: nothing runs
    world.proxy.pointed.clear()  # and the nftables map is empty
    after = world.daemon()
    await recover(after)
    assert live in world.runtime.running_apps()
    assert world.serving("web") == after.live_ship_address("web")
    assert world.network.up
    assert world.proxy.prepared
    assert [r.app for r in world.proxy.live_routes] == ["web"]


def ordered(hd: Squadron, text: str) -> None:
    orders = parse_orders(text, "web/orders", default_hull="busybox")
    hd.daemon.core.fleet.hq = Headquarters(apps={"web": orders})


async def test_a_reboot_makes_the_live_ships_egress_rule_true_again(world: World) -> None:
    hd = world.daemon()
    ordered(hd, "egress off")
    await hd.deploy("web")
    address = hd.live_ship_address("web")
    assert address is not None
    world.network.egress.clear()  # the host rebooted: the table is new
    after = world.daemon()
    ordered(after, "egress off")
    await recover(after)
    assert world.network.egress[address[0]].off


async def test_an_allow_list_that_no_longer_resolves_at_restart_cuts_the_ship_off(
    world: World,
) -> None:
    hd = world.daemon()
    ordered(hd, "egress allow db.example:5432")
    await hd.deploy("web")
    address = hd.live_ship_address("web")
    assert address is not None
    world.network.unresolvable.add("db.example")
    after = world.daemon()
    ordered(after, "egress allow db.example:5432")
    await recover(after)  # the daemon starts all the same
    assert world.network.egress[address[0]].off
    assert world.serving("web") == address


async def test_containers_nobody_owns_are_destroyed_and_hulls_kept(world: World) -> None:
    hd = world.daemon()
    await hd.deploy("web")
    await world.runtime.snapshot("hd-hull-busybox-1", "hd-stray-1234567")
    world.network.allocate("hd-stray-1234567")
    after = world.daemon()
    await recover(after)
    assert "hd-stray-1234567" not in world.runtime.containers
    assert "hd-stray-1234567" not in world.network.taken
    assert "hd-hull-busybox-1" in world.runtime.containers
    said = [e["message"] for e in after.events(name="ShipDestroyed")]
    assert said == ["orphan container 'hd-stray-1234567' destroyed"]


async def test_an_empty_squadron_recovers_to_nginx_answering_and_touches_no_bridge(
    world: World,
) -> None:
    hd = world.daemon()
    await recover(hd)
    assert not world.network.up, "no ship, no bridge: a fresh machine is left alone"
    assert world.proxy.live_routes == []


async def test_the_interrupted_deploy_runs_again_from_its_trigger_after_recovery(
    world: World,
) -> None:
    hd, old, task = await crash_in(world, "build")
    await recover(hd)
    await forget(task)
    world.holds.release("build")
    again = await hd.deploy("web", PYTHON, deploy="t-again")
    assert hd.outcome(again)["event"] == "DeployFinished"
    assert hd.app("web").live not in (None, old)
