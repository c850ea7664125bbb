"""The inbox: durable triggers (a real FileSpool in tmp_path) become commands on the bus over
the fakes, and leave the spool only at an outcome."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hyperdrive.names import ZERO_SHA
from hyperdrive.triggers import RefUpdate, Trigger
from tests.unit.deploy_world import STATIC, Squadron, World


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    world = World(tmp_path)
    yield world
    world.close()


@pytest.fixture
async def hd(world: World) -> AsyncIterator[Squadron]:
    squadron = world.daemon()
    await squadron.daemon.spool.open()
    inbox = asyncio.create_task(squadron.daemon.inbox.run())
    yield squadron
    inbox.cancel()
    await asyncio.gather(inbox, return_exceptions=True)
    await squadron.daemon.spool.close()


async def handled(hd: Squadron, trigger: Trigger, timeout: float = 5) -> None:
    """Put `trigger` in the spool and wait until the inbox is done with it."""
    spool = hd.daemon.spool
    assert await spool.put(trigger)
    deadline = time.monotonic() + timeout
    while any(t.id == trigger.id for t in spool.pending()):
        assert time.monotonic() < deadline, f"{trigger.id} is still pending"
        await asyncio.sleep(0.005)
    await asyncio.wait_for(_idle(hd), timeout)


async def _idle(hd: Squadron) -> None:
    while hd.daemon.inbox.tasks:
        await asyncio.sleep(0.005)


def push(world: World, app: str, files: dict[str, str] | None = None) -> Trigger:
    sha = world.commit(app, files or STATIC)
    return Trigger.push(app, RefUpdate("refs/heads/main", ZERO_SHA, sha), "ada")


async def test_a_push_trigger_is_received_queued_deployed_and_done(
    world: World, hd: Squadron
) -> None:
    trigger = push(world, "web")
    await handled(hd, trigger)
    names = hd.names(trigger.id)
    assert names[:3] == ["PushReceived", "DeployQueued", "DeployStarted"], names
    assert names[-1] == "DeployFinished"
    assert "ada pushed" in hd.events(trigger.id, name="PushReceived")[0]["message"]
    assert hd.daemon.spool.pending() == []
    assert hd.daemon.inbox.handed_over == 1


async def test_a_trigger_that_asks_for_nothing_is_ignored_and_leaves_the_spool(
    hd: Squadron,
) -> None:
    nothing = Trigger.webhook(
        "t-none",
        provider="github",
        repository="https://git.example/unknown.git",
        targets={},
        fingerprint="f",
        received=time.time(),
    )
    await handled(hd, nothing)
    (said,) = hd.events("t-none")
    assert said["event"] == "TriggerIgnored"
    assert "nothing to do for a 'webhook' trigger" in said["message"]
    assert hd.daemon.spool.pending() == []


async def test_a_launch_trigger_runs_in_the_lane_of_the_ships_app(
    world: World, hd: Squadron
) -> None:
    await handled(hd, push(world, "web"))
    world.commit("web", {"index.html": "two\n"})
    await handled(hd, Trigger.assemble("web"))
    ship = hd.app("web").ships[-1].name
    world.holds.hold("drain")
    deploying = asyncio.create_task(handled(hd, push(world, "web", {"index.html": "3\n"})))
    await world.holds.arrived("drain")
    launch = Trigger.launch(ship)
    launching = asyncio.create_task(handled(hd, launch))
    await asyncio.sleep(0.02)
    assert hd.names(launch.id) == [], "it waits for the deploy of web in web's lane"
    world.holds.release("drain")
    await asyncio.wait_for(asyncio.gather(deploying, launching), 5)
    assert hd.outcome(launch.id)["event"] == "DeployFinished"
    assert hd.app("web").live == ship


async def test_a_webhook_for_two_apps_deploys_both_and_one_failure_does_not_stop_the_other(
    world: World, hd: Squadron
) -> None:
    good = world.commit("good", STATIC)
    hook = Trigger.webhook(
        "t-hook",
        provider="github",
        repository="https://git.example/both.git",
        targets={
            "good": RefUpdate("refs/heads/main", ZERO_SHA, good),
            "bad": RefUpdate("refs/heads/main", ZERO_SHA, "b" * 40),
        },
        fingerprint="f",
        received=time.time(),
    )
    await handled(hd, hook)
    deploys = hook.data["deploys"]
    assert hd.outcome(deploys["good"])["event"] == "DeployFinished"
    assert hd.outcome(deploys["bad"])["event"] == "DeployFailed"
    assert hd.daemon.spool.pending() == []


async def test_a_trigger_cut_short_by_the_drain_stays_pending_and_runs_at_the_next_start(
    world: World, hd: Squadron
) -> None:
    world.holds.hold("build")
    cut = push(world, "web", {"requirements.txt": "", "app.py": ""})
    await hd.daemon.spool.put(cut)
    await world.holds.arrived("build")
    assert await hd.daemon.inbox.drain(0.01) is False
    assert [t.id for t in hd.daemon.spool.pending()] == [cut.id]
    await hd.daemon.spool.close()
    world.holds.release("build")
    after = world.daemon()
    await after.daemon.spool.open()
    assert [t.id for t in after.daemon.spool.pending()] == [cut.id]
    inbox = asyncio.create_task(after.daemon.inbox.run())
    try:
        deadline = time.monotonic() + 5
        while after.daemon.spool.pending():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
    finally:
        inbox.cancel()
        await asyncio.gather(inbox, return_exceptions=True)
        await after.daemon.spool.close()
    assert after.outcome(cut.id)["event"] == "DeployFinished"
    await hd.daemon.spool.open()  # the fixture closes it again


async def test_a_fleet_push_whose_commits_did_not_come_fails_here_saying_why(
    world: World, hd: Squadron
) -> None:
    pushed = push(world, "web")
    why = "the pushed commits did not reach this squadron: not in the fleet's bundle store"
    trigger = Trigger.from_json({**pushed.to_json(), "data": {**pushed.data, "unfetched": why}})
    await handled(hd, trigger)
    assert hd.names(trigger.id) == ["PushReceived", "DeployFailed"]
    assert hd.events(trigger.id, name="DeployFailed")[0]["message"] == why
    assert hd.daemon.spool.pending() == []
