"""A live ship's death as LXC tells it: started again, backed off when it keeps dying, rolled
back when it cannot start; the deaths of ships that are not live are none of its business."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from hyperdrive.errors import DeployError
from hyperdrive.pipeline import events as ev
from hyperdrive.pipeline.fakes import FakeContainer, FakeRuntime
from hyperdrive.pipeline.model import LIVE, STOPPED, App, Records, Route, Ship
from hyperdrive.pipeline.revival import Revival, backoff


class Starts:
    """The Starter's part revival uses: the app started in its running ship."""

    def __init__(self) -> None:
        self.started: list[str] = []

        self.answers = True
        self.checked: list[tuple[str, str]] = []

    async def run_start(self, ship: Ship) -> None:
        self.started.append(ship.name)

    async def answering(self, ship: Ship, path: str, seconds: float) -> None:
        self.checked.append((ship.name, path))
        if not self.answers:
            raise DeployError("health", f"http://{ship.ip}:{ship.port}{path} never answered")


class Told(list[ev.Event]):
    """The events, and a cue once a revival is over."""

    def __init__(self) -> None:
        super().__init__()
        self.revived = asyncio.Event()

    def emit(self, event: ev.Event) -> None:
        self.append(event)
        if event.name == "ShipRevived":
            self.revived.set()


def world(tmp_path: Path) -> tuple[Revival, FakeRuntime, Starts, Told, list[str]]:
    records = Records(tmp_path)
    app = App("web", live="s-web-2")
    app.ships = [
        Ship("s-web-1", "a" * 40, "10.0.0.2", 3000, STOPPED),
        Ship("s-web-2", "b" * 40, "10.0.0.3", 3000, LIVE),
    ]
    records.save(app)
    runtime = FakeRuntime()
    runtime.containers = {s.name: FakeContainer(s.name) for s in app.ships}
    starts, told, rolled = Starts(), Told(), []

    async def rollback(name: str) -> None:
        rolled.append(name)

    clock = iter(range(0, 10_000, 1))
    revival = Revival(
        records=records, runtime=runtime, starter=starts, out=told, rollback=rollback,  # type: ignore[arg-type]
        clock=lambda: float(next(clock)),
    )  # fmt: skip
    return revival, runtime, starts, told, rolled


def says(*changes: tuple[str, str], until: asyncio.Event | None = None):
    """What lxc-monitor would say: `changes`, then nothing until `until` (then it ends)."""

    async def states() -> AsyncIterator[tuple[str, str]]:
        for change in changes:
            yield change
        if until is not None:
            await asyncio.wait_for(until.wait(), 10)

    return states


async def test_a_dead_live_ship_is_started_again(tmp_path: Path) -> None:
    revival, runtime, starts, told, rolled = world(tmp_path)
    changes = (("s-web-2", "STOPPING"), ("s-web-2", "STOPPED"))
    await revival.follow(says(*changes, until=told.revived), asyncio.Event())
    assert runtime.containers["s-web-2"].state == "RUNNING"
    assert starts.started == ["s-web-2"]
    assert [e.name for e in told] == ["ShipDied", "ShipRevived"]
    assert rolled == []


async def test_a_ship_that_is_not_live_may_stop(tmp_path: Path) -> None:
    revival, runtime, _, told, _ = world(tmp_path)
    await revival.follow(says(("s-web-1", "STOPPED"), ("other", "STOPPED")), asyncio.Event())
    assert told == []
    assert runtime.calls == []


async def test_a_ship_that_cannot_start_rolls_the_app_back(tmp_path: Path) -> None:
    revival, runtime, _, told, rolled = world(tmp_path)
    runtime.fail.add("start")
    await revival.revive(revival.records.get("web"), "s-web-2", "STOPPED")
    assert rolled == ["web"]
    assert "rolling back" in (told[-1].message or "")


async def test_a_revived_ship_is_said_to_run_once_it_answers_its_check_path(
    tmp_path: Path,
) -> None:
    revival, _, starts, told, rolled = world(tmp_path)
    app = revival.records.get("web")
    app.route = Route("web", check_path="/up").to_json()
    await revival.revive(app, "s-web-2", "STOPPED")
    assert starts.checked == [("s-web-2", "/up")]
    assert [e.name for e in told] == ["ShipDied", "ShipRevived"]
    assert rolled == []


async def test_a_revived_ship_that_does_not_answer_rolls_the_app_back(tmp_path: Path) -> None:
    revival, runtime, starts, told, rolled = world(tmp_path)
    starts.answers = False
    await revival.revive(revival.records.get("web"), "s-web-2", "STOPPED")
    assert rolled == ["web"]
    assert "ShipRevived" not in [e.name for e in told]
    assert "never answered" in (told[-1].message or "")
    assert runtime.containers["s-web-2"].state == "STOPPED"  # not left half alive


def test_backoff_waits_longer_each_death_after_the_calm_ones() -> None:
    assert [backoff(n) for n in range(1, 8)] == [0, 0, 1, 2, 4, 8, 16]
    assert backoff(100) == 60
