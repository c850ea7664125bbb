"""The inbox: durable triggers (a real FileSpool in tmp_path) become commands on the bus over
the fakes, and leave the spool only at an outcome."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hyperdrive.triggers import Trigger
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


def push(world: World, app: str, tid: str, files: dict[str, str] | None = None) -> Trigger:
    sha = world.commit(app, files or STATIC)
    data = {"ref": "refs/heads/main", "old": "0" * 40, "new": sha, "admiral": "ada"}
    return Trigger(tid, "push", app, data, time.time())


async def test_a_push_trigger_is_received_queued_deployed_and_done(
    world: World, hd: Squadron
) -> None:
    await handled(hd, push(world, "web", "t-push"))
    names = hd.names("t-push")
    assert names[:3] == ["PushReceived", "DeployQueued", "DeployStarted"], names
    assert names[-1] == "DeployFinished"
    assert "ada pushed" in hd.events("t-push", name="PushReceived")[0]["message"]
    assert hd.daemon.spool.pending() == []
    assert hd.daemon.inbox.handed_over == 1


async def test_a_trigger_nothing_handles_is_ignored_and_leaves_the_spool(hd: Squadron) -> None:
    await handled(hd, Trigger("t-odd", "teleport", "web", {}, time.time()))
    (said,) = hd.events("t-odd")
    assert said["event"] == "TriggerIgnored"
    assert "nothing to do for a 'teleport' trigger" in said["message"]
    assert hd.daemon.spool.pending() == []


async def test_a_launch_trigger_runs_in_the_lane_of_the_ships_app(
    world: World, hd: Squadron
) -> None:
    await handled(hd, push(world, "web", "t-1"))
    world.commit("web", {"index.html": "two\n"})
    await handled(hd, Trigger("t-asm", "assemble", "web", {}, time.time()))
    ship = hd.app("web").ships[-1].name
    world.holds.hold("drain")
    deploying = asyncio.create_task(handled(hd, push(world, "web", "t-3", {"index.html": "3\n"})))
    await world.holds.arrived("drain")
    launch = asyncio.create_task(
        handled(hd, Trigger("t-launch", "launch", None, {"ship": ship}, time.time()))
    )
    await asyncio.sleep(0.02)
    assert hd.names("t-launch") == [], "it waits for the deploy of web in web's lane"
    world.holds.release("drain")
    await asyncio.wait_for(asyncio.gather(deploying, launch), 5)
    assert hd.outcome("t-launch")["event"] == "DeployFinished"
    assert hd.app("web").live == ship


async def test_a_webhook_for_two_apps_deploys_both_and_one_failure_does_not_stop_the_other(
    world: World, hd: Squadron
) -> None:
    good = world.commit("good", STATIC)
    data = {
        "provider": "github",
        "apps": ["good", "bad"],
        "deploys": {"good": "t-hook:good", "bad": "t-hook:bad"},
        "targets": {
            "good": {"ref": "refs/heads/main", "new": good, "after": good},
            "bad": {"ref": "refs/heads/main", "new": "b" * 40, "after": "b" * 40},
        },
    }
    await handled(hd, Trigger("t-hook", "webhook", None, data, time.time()))
    assert hd.outcome("t-hook:good")["event"] == "DeployFinished"
    assert hd.outcome("t-hook:bad")["event"] == "DeployFailed"
    assert hd.daemon.spool.pending() == []


async def test_a_trigger_cut_short_by_the_drain_stays_pending_and_runs_at_the_next_start(
    world: World, hd: Squadron
) -> None:
    world.holds.hold("build")
    await hd.daemon.spool.put(push(world, "web", "t-cut", {"requirements.txt": "", "app.py": ""}))
    await world.holds.arrived("build")
    assert await hd.daemon.inbox.drain(0.01) is False
    assert [t.id for t in hd.daemon.spool.pending()] == ["t-cut"]
    await hd.daemon.spool.close()
    world.holds.release("build")
    after = world.daemon()
    await after.daemon.spool.open()
    assert [t.id for t in after.daemon.spool.pending()] == ["t-cut"]
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
    assert after.outcome("t-cut")["event"] == "DeployFinished"
    await hd.daemon.spool.open()  # the fixture closes it again
