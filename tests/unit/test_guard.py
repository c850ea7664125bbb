"""The guard after a swap and the old ship's drain, on the in-memory fakes: when traffic goes
back, what the pusher and `hd status` are told, and when the old ship stops (SIGTERM first)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hyperdrive.config import Guard
from hyperdrive.pipeline.commands import Rollback
from hyperdrive.pipeline.guard import Tally
from hyperdrive.pipeline.model import FAILED, LIVE, STOPPED
from tests.unit.deploy_world import Squadron, World

GUARD = Guard(seconds=30, max_percent=20, min_requests=10)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = World(tmp_path)
    yield world
    world.close()


async def eventually(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Wait (bounded) for something the daemon does in the background."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)
    assert check(), what


async def two_versions(hd: Squadron) -> tuple[str, str, str]:
    """v1 live, then v2 swapped in and finished: (v1 ship, v2 ship, v2's deploy id)."""
    await hd.deploy("web", {"index.html": "v1\n"})
    old = hd.app("web").live
    deploy = await hd.deploy("web", {"index.html": "v2\n"})
    assert hd.outcome(deploy)["event"] == "DeployFinished", hd.events(deploy)
    new = hd.app("web").live
    assert old is not None
    assert new is not None
    assert old != new
    return old, new, deploy


def state(hd: Squadron, ship: str) -> str:
    found = hd.app("web").ship(ship)
    assert found is not None
    return found.state


# ─── the decision ────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("ok", "bad", "tripped"),
    [
        (16, 4, False),  # exactly 20 %: not past the line
        (15, 5, True),
        (0, 9, False),  # all 5xx, but fewer than min-requests
        (0, 10, True),
        (1000, 0, False),
    ],
)
def test_the_guard_trips_past_its_percentage_of_at_least_min_requests(
    ok: int, bad: int, tripped: bool
) -> None:
    tally = Tally(Guard(seconds=60, max_percent=20, min_requests=10))
    for status in [200] * ok + [503] * bad:
        tally.count(status)
    assert tally.tripped is tripped
    assert Tally(Guard(seconds=0)).tripped is False


# ─── after the deploy finished ───────────────────────────────────────────────


async def test_5xx_after_the_swap_send_traffic_back_to_the_old_ship_with_the_numbers(
    world: World,
) -> None:
    hd = world.daemon(guard=GUARD)
    old, new, deploy = await two_versions(hd)
    assert state(hd, old) == LIVE, "the old ship runs through the guard"
    assert old in world.runtime.running_apps()
    world.requests.respond("web", *[200] * 5, *[500] * 5)  # 50 % of 10
    await eventually(lambda: bool(hd.events(deploy, name="RolledBack")), "RolledBack")
    back = hd.events(deploy, name="RolledBack")[0]
    assert (back["requests"], back["errors"], back["percent"]) == (10, 5, 50.0)
    assert back["ship"] == old
    assert back["failed_ship"] == new
    assert "5 of 10 responses were 5xx" in back["message"]
    assert world.serving("web") == hd.live_ship_address("web")
    assert hd.app("web").live == old
    await eventually(lambda: state(hd, new) == FAILED, "the new ship kept as failed")
    assert new not in world.runtime.running_apps()
    row = next(r for r in hd.daemon.api.status()["apps"] if r["app"] == "web")
    assert row["ship"] == old
    assert "rolled back by the guard" in row["last_deploy"]


async def test_answers_within_the_guard_leave_the_new_ship_live_and_the_old_one_stops_after(
    world: World,
) -> None:
    hd = world.daemon(guard=Guard(seconds=0.3, max_percent=20, min_requests=10))
    old, new, deploy = await two_versions(hd)
    world.requests.respond("web", *[200] * 18, *[500] * 2)  # 10 %
    await eventually(lambda: state(hd, old) == STOPPED, "the old ship stopped after the guard")
    assert hd.app("web").live == new
    assert not hd.events(deploy, name="RolledBack")
    assert hd.names(deploy)[-1] == "ShipDrained", "after the outcome, once the guard is over"
    assert f"kill -TERM -1 {old}" in world.runtime.calls, "SIGTERM before the stop"
    world.requests.respond("web", *[500] * 50)  # the guard is over: nobody listens
    assert hd.app("web").live == new


async def test_5xx_during_the_drain_fail_the_deploy_at_the_guard(world: World) -> None:
    hd = world.daemon(guard=GUARD)
    await hd.deploy("web", {"index.html": "v1\n"})
    old = hd.app("web").live
    world.holds.hold("drain")
    deploy = asyncio.create_task(hd.deploy("web", {"index.html": "v2\n"}, deploy="t-bad"))
    await world.holds.arrived("drain")
    world.requests.respond("web", *[502] * 10)
    world.holds.release("drain")
    await deploy
    names = hd.names("t-bad")
    assert names[-2:] == ["RolledBack", "DeployFailed"], names
    assert hd.outcome("t-bad")["stage"] == "guard"
    assert "10 of 10 responses were 5xx" in hd.outcome("t-bad")["message"]
    assert hd.app("web").live == old
    assert world.serving("web") == hd.live_ship_address("web")


async def test_a_newer_deploy_ends_the_guard_of_the_last_one(world: World) -> None:
    hd = world.daemon(guard=GUARD)
    first, second, _ = await two_versions(hd)
    third = await hd.deploy("web", {"index.html": "v3\n"})
    assert hd.outcome(third)["event"] == "DeployFinished"
    await eventually(lambda: state(hd, first) == STOPPED, "v1 stopped: nobody guards v2 now")
    world.requests.respond("web", *[500] * 10)  # v3's guard: back to v2, never to v1
    await eventually(lambda: bool(hd.events(third, name="RolledBack")), "v3 rolled back")
    assert hd.app("web").live == second


async def test_a_rollback_in_the_guard_goes_to_the_ship_it_holds(world: World) -> None:
    hd = world.daemon(guard=GUARD)
    old, new, _ = await two_versions(hd)
    deploy = hd.next_id()
    await hd.run(Rollback(deploy=deploy, app="web"))
    assert hd.outcome(deploy)["event"] == "DeployFinished", hd.events(deploy)
    assert hd.app("web").live == old
    assert state(hd, new) == STOPPED, "no guard after a rollback: the ship left stops"
    assert world.serving("web") == hd.live_ship_address("web")


# ─── the drain ───────────────────────────────────────────────────────────────


async def test_the_old_ship_runs_until_its_connections_close(world: World) -> None:
    hd = world.daemon(drain_seconds=30.0)
    await hd.deploy("web", {"index.html": "v1\n"})
    old = hd.app("web").live
    assert old is not None
    world.probe.open_clients[old] = 2  # a WebSocket and an SSE stream
    deploy = await hd.deploy("web", {"index.html": "v2\n"})
    assert hd.outcome(deploy)["event"] == "DeployFinished"
    assert old in world.runtime.running_apps(), "still serving its open connections"
    assert state(hd, old) == LIVE
    world.probe.open_clients[old] = 0  # they closed
    await eventually(lambda: state(hd, old) == STOPPED, "stopped once its clients left")
    assert f"kill -TERM -1 {old}" in world.runtime.calls
    assert hd.names(deploy)[-1] == "ShipDrained"


async def test_an_app_that_ignores_sigterm_is_stopped_after_the_drain_limit(
    world: World,
) -> None:
    hd = world.daemon(drain_seconds=0.3)
    await hd.deploy("web", {"index.html": "v1\n"})
    old = hd.app("web").live
    assert old is not None
    world.probe.open_clients[old] = 1  # never closes
    world.runtime.ignores_term.add(old)
    deploy = await hd.deploy("web", {"index.html": "v2\n"})
    assert hd.outcome(deploy)["event"] == "DeployFinished"
    await eventually(lambda: state(hd, old) == STOPPED, "stopped at the drain limit", 10)
    calls = world.runtime.calls
    assert calls.index(f"kill -TERM -1 {old}") < len(calls) - calls[::-1].index(f"stop {old}")
    assert old not in world.runtime.running_apps()
