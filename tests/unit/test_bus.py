"""The bus: one handler per command, one command per app at a time, newer deploys win."""

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import pytest

from hyperdrive.eventlog import Filter, Subscription
from hyperdrive.pipeline import events as ev
from hyperdrive.pipeline.bus import FAILED, FINISHED, SUPERSEDED, Context, MessageBus
from hyperdrive.pipeline.commands import Command, Deploy, Retire, Rollback


class MemorySink:
    """The EventSink seam in memory: a list of records and live subscribers."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self._subs: list[Subscription] = []

    def append(self, event: Mapping[str, Any]) -> dict[str, Any]:
        record = dict(event)
        self.records.append(record)
        for sub in self._subs:
            sub.offer(record)
        return record

    def subscribe(self, where: Filter | None = None) -> Subscription:
        sub = Subscription(where or Filter(), 100, self._subs.remove)
        self._subs.append(sub)
        return sub

    def named(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["event"] == name]


class Gates:
    """Handlers that announce they started and wait until the test lets them go."""

    def __init__(self) -> None:
        self.started: dict[str, asyncio.Event] = {}
        self.release: dict[str, asyncio.Event] = {}
        self.cancelled: list[str] = []
        self.ran: list[str] = []
        self.running: set[str] = set()
        self.most = 0

    def _gate(self, table: dict[str, asyncio.Event], deploy: str) -> asyncio.Event:
        return table.setdefault(deploy, asyncio.Event())

    async def wait_started(self, deploy: str, timeout: float = 2) -> None:
        await asyncio.wait_for(self._gate(self.started, deploy).wait(), timeout)

    def has_started(self, deploy: str) -> bool:
        return self._gate(self.started, deploy).is_set()

    def open(self, deploy: str) -> None:
        self._gate(self.release, deploy).set()

    async def handler(self, command: Command, ctx: Context, *, final: bool = False) -> None:
        self.ran.append(command.deploy)
        self.running.add(command.deploy)
        self.most = max(self.most, len(self.running))
        if final:
            ctx.point_of_no_return()
        self._gate(self.started, command.deploy).set()
        try:
            await self._gate(self.release, command.deploy).wait()
        except asyncio.CancelledError:
            self.cancelled.append(command.deploy)
            raise
        finally:
            self.running.discard(command.deploy)

    async def swapping(self, command: Command, ctx: Context) -> None:
        """A deploy that has reached its traffic swap: it may no longer be cancelled."""
        await self.handler(command, ctx, final=True)


async def settle(rounds: int = 20) -> None:
    """Let every ready task run; used to show something did NOT happen."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def deploy(deploy_id: str, app: str = "web") -> Deploy:
    return Deploy(deploy=deploy_id, app=app, sha="a" * 40)


def make_bus(
    gates: Gates, parallel: int = 4, *, swap: bool = False
) -> tuple[MessageBus, MemorySink]:
    sink = MemorySink()
    handlers = {
        Deploy: gates.swapping if swap else gates.handler,
        Rollback: gates.handler,
        Retire: gates.handler,
    }
    return MessageBus(handlers, {}, sink, parallel=parallel), sink


def start(bus: MessageBus, command: Command) -> asyncio.Task[str]:
    return asyncio.create_task(bus.handle(command))


async def test_each_command_goes_to_its_own_handler() -> None:
    calls: list[tuple[str, str, Context]] = []

    async def on_deploy(command: Deploy, ctx: Context) -> str:
        calls.append(("deploy", command.deploy, ctx))
        return "deployed"

    async def on_rollback(command: Rollback, ctx: Context) -> None:
        calls.append(("rollback", command.deploy, ctx))

    bus = MessageBus({Deploy: on_deploy, Rollback: on_rollback}, {}, MemorySink())
    assert await bus.handle(deploy("d1")) == "deployed", "a handler's own outcome word is kept"
    assert await bus.handle(Rollback(deploy="r1", app="web")) == FINISHED
    assert [(kind, d) for kind, d, _ in calls] == [("deploy", "d1"), ("rollback", "r1")]
    assert all(ctx.bus is bus for _, _, ctx in calls)
    with pytest.raises(LookupError, match="Retire"):
        await bus.handle(Retire(deploy="x1", app="web"))
    assert bus.inflight == 0


async def test_a_context_emits_into_the_event_sink() -> None:
    async def on_deploy(command: Deploy, ctx: Context) -> None:
        ctx.emit(ev.ShipHealthy(app=command.app, deploy=command.deploy, ship="hd-web-aaaaaaa"))

    sink = MemorySink()
    await MessageBus({Deploy: on_deploy}, {}, sink).handle(deploy("d1"))
    assert sink.records == [
        {"event": "ShipHealthy", "app": "web", "deploy": "d1", "ship": "hd-web-aaaaaaa"}
    ]


async def test_one_app_runs_one_command_at_a_time_and_apps_run_in_parallel() -> None:
    gates = Gates()
    bus, _ = make_bus(gates)
    first = start(bus, Rollback(deploy="a1", app="alpha"))
    second = start(bus, Retire(deploy="a2", app="alpha"))
    other = start(bus, Rollback(deploy="b1", app="beta"))
    await gates.wait_started("a1")
    await gates.wait_started("b1")
    assert gates.running == {"a1", "b1"}, "two apps at once"
    await settle()
    assert not gates.has_started("a2"), "the same app waits for its turn"

    gates.open("a1")
    assert await first == FINISHED
    await gates.wait_started("a2")
    assert gates.running == {"a2", "b1"}
    for name in ("a2", "b1"):
        gates.open(name)
    assert await asyncio.gather(second, other) == [FINISHED, FINISHED]
    assert gates.ran == ["a1", "b1", "a2"]


async def test_no_more_than_parallel_commands_run_at_once() -> None:
    gates = Gates()
    bus, _ = make_bus(gates, parallel=2)
    apps = [f"app{n}" for n in range(6)]
    tasks = dict(zip(apps, (start(bus, Rollback(deploy=a, app=a)) for a in apps), strict=True))
    for left in range(len(apps), 0, -1):
        await settle()
        assert len(gates.running) == min(2, left), gates.running
        oldest = min(gates.running)
        gates.open(oldest)
        assert await asyncio.wait_for(tasks[oldest], 2) == FINISHED
    assert gates.most == 2
    assert sorted(gates.ran) == apps


async def test_a_waiting_deploy_is_superseded_by_a_newer_one() -> None:
    gates = Gates()
    bus, sink = make_bus(gates, swap=True)
    running = start(bus, deploy("d1"))
    await gates.wait_started("d1")
    waiting = start(bus, deploy("d2"))
    await settle()
    newest = start(bus, deploy("d3"))
    await settle()

    gates.open("d1")
    assert await running == FINISHED, "past its swap: finished, not cancelled"
    assert await asyncio.wait_for(waiting, 2) == SUPERSEDED
    await gates.wait_started("d3")
    gates.open("d3")
    assert await newest == FINISHED
    assert gates.ran == ["d1", "d3"], "the superseded deploy never ran"
    assert gates.cancelled == []
    superseded = sink.named("DeploySuperseded")
    assert [(e["app"], e["deploy"], e["by"]) for e in superseded] == [("web", "d2", "d3")]
    assert "d3" in superseded[0]["message"]


async def test_a_running_deploy_before_its_swap_is_cancelled_by_a_newer_one() -> None:
    gates = Gates()
    bus, sink = make_bus(gates)
    older = start(bus, deploy("d1"))
    await gates.wait_started("d1")
    newer = start(bus, deploy("d2"))
    assert await asyncio.wait_for(older, 2) == SUPERSEDED
    assert gates.cancelled == ["d1"], "the handler saw CancelledError"
    await gates.wait_started("d2")
    gates.open("d2")
    assert await newer == FINISHED
    assert [(e["deploy"], e["by"]) for e in sink.named("DeploySuperseded")] == [("d1", "d2")]


async def test_a_deploy_past_its_point_of_no_return_is_not_cancelled() -> None:
    gates = Gates()
    bus, sink = make_bus(gates, swap=True)
    older = start(bus, deploy("d1"))
    await gates.wait_started("d1")
    newer = start(bus, deploy("d2"))
    await settle()
    assert gates.running == {"d1"}
    assert not gates.has_started("d2"), "the newer one waits for the swap to finish"
    gates.open("d1")
    assert await older == FINISHED
    await gates.wait_started("d2")
    gates.open("d2")
    assert await newer == FINISHED
    assert gates.cancelled == []
    assert sink.named("DeploySuperseded") == []


async def test_a_deploy_waiting_for_a_free_slot_is_superseded_too() -> None:
    gates = Gates()
    bus, sink = make_bus(gates, parallel=1)
    busy = start(bus, Rollback(deploy="other", app="other"))
    await gates.wait_started("other")
    queued = start(bus, deploy("d1"))
    await settle()
    newer = start(bus, deploy("d2"))
    await settle()
    gates.open("other")
    assert await busy == FINISHED
    assert await asyncio.wait_for(queued, 2) == SUPERSEDED
    await gates.wait_started("d2")
    gates.open("d2")
    assert await newer == FINISHED
    assert gates.ran == ["other", "d2"]
    assert [(e["deploy"], e["by"]) for e in sink.named("DeploySuperseded")] == [("d1", "d2")]


async def test_other_commands_are_never_superseded() -> None:
    gates = Gates()
    bus, sink = make_bus(gates)
    rollback = start(bus, Rollback(deploy="r1", app="web"))
    await gates.wait_started("r1")
    later = start(bus, deploy("d1"))
    await settle()
    assert gates.cancelled == [], "a newer deploy does not cancel a rollback"
    gates.open("r1")
    assert await rollback == FINISHED
    await gates.wait_started("d1")
    gates.open("d1")
    assert await later == FINISHED
    assert sink.named("DeploySuperseded") == []


async def test_cancelling_the_caller_is_not_taken_for_a_supersede() -> None:
    gates = Gates()
    bus, sink = make_bus(gates)
    caller = start(bus, deploy("d1"))
    await gates.wait_started("d1")
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert gates.cancelled == ["d1"]
    assert sink.named("DeploySuperseded") == []
    again = start(bus, deploy("d2"))
    await gates.wait_started("d2")
    gates.open("d2")
    assert await asyncio.wait_for(again, 2) == FINISHED, "the app's lane is free again"


async def test_a_handler_that_raises_fails_its_deploy_and_the_bus_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(command: Deploy, ctx: Context) -> None:
        if command.deploy == "d1":
            raise OSError("disk full")

    sink = MemorySink()
    bus = MessageBus({Deploy: broken}, {}, sink)
    with caplog.at_level(logging.ERROR, logger="hyperdrive.pipeline.bus"):
        assert await bus.handle(deploy("d1")) == FAILED
    failed = sink.named("DeployFailed")
    assert [(e["app"], e["deploy"]) for e in failed] == [("web", "d1")]
    assert "disk full" in failed[0]["message"]
    assert any("d1" in r.getMessage() for r in caplog.records)
    assert await bus.handle(deploy("d2")) == FINISHED
    assert await bus.handle(deploy("d3", app="api")) == FINISHED


async def test_event_handlers_run_and_a_failing_one_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    heard: list[str | None] = []

    async def remember(event: ev.ShipHealthy) -> None:
        heard.append(event.ship)

    async def explode(event: ev.ShipHealthy) -> None:
        raise RuntimeError("listener broke")

    sink = MemorySink()
    listeners = {ev.ShipHealthy: [explode, remember], ev.ShipRetired: [remember]}
    bus = MessageBus({}, listeners, sink)
    with caplog.at_level(logging.ERROR, logger="hyperdrive.pipeline.bus"):
        bus.emit(ev.ShipHealthy(app="web", ship="s1"))
        bus.emit(ev.TrafficSwapped(app="web", ship="s1"))
        assert await bus.drain(2) is True
    assert heard == ["s1"]
    assert [r["event"] for r in sink.records] == ["ShipHealthy", "TrafficSwapped"]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "explode" in errors[0]
    assert "ShipHealthy" in errors[0]
    bus.emit(ev.ShipRetired(app="web", ship="s0"))
    assert await bus.drain(2) is True
    assert heard == ["s1", "s0"]
