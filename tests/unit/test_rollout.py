"""Rollout in waves: the orders' `rollout` line, the waves over a fleet, whose turn it is,
the Deploy gate on a fake board, and what `hd fleet status` shows."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hyperdrive.errors import FleetError, OrdersRejected
from hyperdrive.fleet import rollout
from hyperdrive.fleet.rollout import Plan, Turn, cell, turn, waves
from hyperdrive.fleet.view import render, view
from hyperdrive.headquarters.orders import Orders, parse_orders
from hyperdrive.pipeline import events as ev
from hyperdrive.pipeline.bus import FAILED, FINISHED
from hyperdrive.pipeline.commands import Deploy
from hyperdrive.pipeline.rollout import HELD, Rollouts


def parse(text: str) -> Orders:
    return parse_orders(text, "site/orders", default_hull="debian")


@pytest.mark.parametrize(
    ("line", "spec"),
    [
        ("rollout 1 50% 100%", ("1", "50%", "100%")),
        ("rollout 100%", ("100%",)),
        ("rollout 1 2 100%", ("1", "2", "100%")),
        ("rollout 10% 100%  # a canary", ("10%", "100%")),
    ],
)
def test_rollout_lines_that_are_good(line: str, spec: tuple[str, ...]) -> None:
    assert parse(line + "\n").rollout == spec


def test_no_rollout_line_is_all_at_once() -> None:
    assert parse("export PORT=8080\n").rollout == ()


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("rollout", "rollout takes waves"),
        ("rollout 1 2", "the last rollout wave must be 100%"),
        ("rollout 50% 1 100%", "after a percentage"),
        ("rollout 2 1 100%", "must grow"),
        ("rollout 50% 50% 100%", "must grow"),
        ("rollout 0 100%", "'0' is not a count or a percentage"),
        ("rollout 1 101%", "'101%' is not a count"),
        ("rollout half 100%", "'half' is not a count"),
        ("rollout -1 100%", "'-1' is not a count"),
        ("rollout " + " ".join(f"{n}%" for n in range(5, 101, 5)), "1 to 10 waves"),
    ],
)
def test_rollout_lines_that_are_refused_say_why(line: str, says: str) -> None:
    with pytest.raises(OrdersRejected) as caught:
        parse(line + "\n")
    assert says in str(caught.value)
    assert "site/orders:1" in str(caught.value)


def test_a_second_rollout_line_is_refused() -> None:
    with pytest.raises(OrdersRejected, match="duplicate rollout"):
        parse("rollout 100%\nrollout 1 100%\n")


def test_waves_are_cumulative_over_sorted_names() -> None:
    names = ["echo", "alpha", "delta", "bravo", "charlie"]
    assert waves(("1", "50%", "100%"), names) == (
        ("alpha",),
        ("bravo", "charlie"),  # 50% of five, rounded up: three in all
        ("delta", "echo"),
    )
    assert waves(("1", "50%", "100%"), ["a", "b"]) == (("a",), ("b",))  # 50% of 2 is 1: empty
    assert waves((), ["b", "a"]) == (("a", "b"),)  # no rollout: one wave
    assert waves(("5", "100%"), ["a"]) == (("a",),)


@given(
    st.lists(st.from_regex(r"[a-z][a-z0-9]{0,5}", fullmatch=True), unique=True, max_size=12),
    st.lists(st.integers(1, 99), unique=True, max_size=4),
    st.lists(st.integers(1, 20), unique=True, max_size=3),
)
def test_waves_always_cover_every_squadron_once_in_order(
    names: list[str], percents: list[int], counts: list[int]
) -> None:
    spec = (*(str(c) for c in sorted(counts)), *(f"{p}%" for p in sorted(percents)), "100%")
    found = waves(spec, names)
    assert [n for wave in found for n in wave] == sorted(names)
    assert all(found)  # no empty wave
    assert len(found) <= len(spec)


def plan(*found: tuple[str, ...]) -> Plan:
    return Plan("site", "push-1", found, 1.0)


def test_a_wave_opens_when_every_earlier_squadron_is_healthy() -> None:
    three = plan(("a",), ("b",), ("c",))
    assert turn(three, {}, "a").state == rollout.GO
    assert turn(three, {}, "b") == Turn(rollout.WAIT, 2, 3, "waiting for a to be healthy")
    assert turn(three, {"a": rollout.HEALTHY}, "b").state == rollout.GO
    assert turn(three, {"a": rollout.HEALTHY}, "c").state == rollout.WAIT
    assert turn(three, {"a": rollout.IGNORED, "b": rollout.HEALTHY}, "c").state == rollout.GO


def test_a_failure_holds_every_later_wave() -> None:
    three = plan(("a",), ("b",), ("c", "d"))
    stopped = turn(three, {"a": rollout.HEALTHY, "b": rollout.FAILED}, "d")
    assert stopped.state == rollout.HELD
    assert stopped.why == "the rollout stopped before wave 3 (b failed)"
    assert rollout.state(three, {"a": rollout.HEALTHY, "b": rollout.FAILED}) == "stopped"


def test_a_squadron_that_came_up_after_the_freeze_goes_last() -> None:
    two = plan(("a",), ("b",))
    assert turn(two, {"a": rollout.HEALTHY}, "late").state == rollout.WAIT
    assert turn(two, {"a": rollout.HEALTHY, "b": rollout.HEALTHY}, "late").state == rollout.GO


def test_each_squadrons_part_as_status_shows_it() -> None:
    three = plan(("a",), ("b",), ("c",))
    results = {"a": rollout.HEALTHY}
    assert [cell(three, results, n) for n in "abc"] == [
        "live",
        "deploying wave 2",
        "waiting wave 3",
    ]
    results = {"a": rollout.HEALTHY, "b": rollout.FAILED, "c": rollout.HELD}
    assert [cell(three, results, n) for n in "abc"] == ["live", "failed", "held"]
    assert rollout.shown(three, dict.fromkeys("abc", rollout.HEALTHY))["state"] == "done"


def test_a_plan_round_trips_through_json() -> None:
    three = plan(("a",), ("b", "c"))
    assert Plan.from_json(three.to_json()) == three


def test_fleet_status_has_a_rollout_column() -> None:
    squadrons = {n: {"version": "1", "seen": 100.0} for n in ("alpha", "bravo")}
    state = {"sha": "abc1234", "ship": "site-1", "health": "healthy"}
    two = Plan("site", "push-1", (("alpha",), ("bravo",)), 1.0)
    shown = view(
        squadrons,
        [("alpha", "site", state)],
        100.0,
        {"site": rollout.shown(two, {"alpha": rollout.HEALTHY, "bravo": rollout.HELD})},
    )
    (site,) = shown["apps"]
    assert site["squadrons"]["alpha"]["rollout"] == "live"
    assert site["squadrons"]["bravo"] == {"health": "none", "rollout": "held"}  # never deployed
    assert site["rollout"]["state"] == "stopped"
    assert render(shown).splitlines()[-1].split() == [
        "site",
        "abc1234",
        "site-1",
        "healthy",
        "(live)",
        "-",
        "-",
        "none",
        "(held)",
    ]


# -- the Deploy gate, on a fake board --
class Board:
    def __init__(self, answer: Turn | None, first: Turn | None = None) -> None:
        self.answer, self.first = answer, first
        self.reported: list[tuple[str, str, str]] = []

    async def turn(
        self, app: str, deploy: str, spec: tuple[str, ...], waiting: Callable[[Turn], None]
    ) -> Turn:
        if self.answer is None:
            raise FleetError("NATS is unreachable")
        if self.first is not None:
            waiting(self.first)
        return self.answer

    async def report(self, app: str, deploy: str, result: str) -> None:
        self.reported.append((app, deploy, result))


class Ctx:
    def __init__(self) -> None:
        self.events: list[ev.Event] = []

    def emit(self, event: ev.Event) -> None:
        self.events.append(event)


def gate(
    board: Board | None, outcome: str, spec: str = "rollout 1 100%"
) -> tuple[Rollouts, list[str]]:
    ran: list[str] = []

    async def deploy(cmd: Deploy, ctx: Any) -> str:
        ran.append(cmd.deploy)
        return outcome

    orders = parse(spec + "\n")
    return Rollouts(deploy, lambda app: orders, board=lambda: board), ran


PUSH = Deploy(deploy="push-1", app="site", sha="a" * 40, source="push")


def test_a_held_squadron_does_not_deploy_and_says_so() -> None:
    board = Board(Turn(rollout.HELD, 3, 3, "the rollout stopped before wave 3 (b failed)"))
    rollouts, ran = gate(board, FINISHED)
    ctx = Ctx()
    assert asyncio.run(rollouts.handle(PUSH, ctx)) == HELD  # type: ignore[arg-type]
    assert ran == []
    (held,) = ctx.events
    assert isinstance(held, ev.RolloutHeld)
    assert "b failed" in (held.message or "")
    assert board.reported == [("site", "push-1", rollout.HELD)]


def test_an_open_wave_deploys_and_reports_its_health() -> None:
    board = Board(Turn(rollout.GO, 2, 2, "wave 2 of 2 open"), first=Turn(rollout.WAIT, 2, 2, "…"))
    rollouts, ran = gate(board, FINISHED)
    ctx = Ctx()
    assert asyncio.run(rollouts.handle(PUSH, ctx)) == FINISHED  # type: ignore[arg-type]
    assert ran == ["push-1"]
    assert [e.name for e in ctx.events] == ["RolloutWaiting", "RolloutWaveOpened"]
    assert board.reported == [("site", "push-1", rollout.HEALTHY)]


def test_a_failed_deploy_stops_the_rollout() -> None:
    board = Board(Turn(rollout.GO, 1, 2, "wave 1 of 2 open"))
    rollouts, _ = gate(board, FAILED)
    ctx = Ctx()
    assert asyncio.run(rollouts.handle(PUSH, ctx)) == FAILED  # type: ignore[arg-type]
    assert ctx.events[-1].name == "RolloutStopped"
    assert board.reported == [("site", "push-1", rollout.FAILED)]


@pytest.mark.parametrize(
    ("board", "spec", "cmd"),
    [
        (None, "rollout 1 100%", PUSH),  # alone
        (Board(None), "rollout 1 100%", PUSH),  # NATS out of reach: deploys as alone
        (Board(Turn(rollout.HELD, 2, 2)), "export A=1", PUSH),  # no rollout line
        (Board(Turn(rollout.HELD, 2, 2)), "rollout 1 100%", Deploy(deploy="d", app="site")),
    ],
)
def test_deploys_outside_a_rollout_run_at_once(board: Board | None, spec: str, cmd: Deploy) -> None:
    rollouts, ran = gate(board, FINISHED, spec)
    ctx = Ctx()
    assert asyncio.run(rollouts.handle(cmd, ctx)) == FINISHED  # type: ignore[arg-type]
    assert ran == [cmd.deploy]
    assert ctx.events == []


def test_a_deploy_superseded_while_in_its_wave_reports_superseded() -> None:
    board = Board(Turn(rollout.GO, 1, 2, "wave 1 of 2 open"))

    async def deploy(cmd: Deploy, ctx: Any) -> str:
        raise asyncio.CancelledError  # the bus cancels it for a newer deploy of the app

    orders = parse("rollout 1 100%\n")
    rollouts = Rollouts(deploy, lambda app: orders, board=lambda: board)

    async def run() -> None:
        with pytest.raises(asyncio.CancelledError):
            await rollouts.handle(PUSH, Ctx())  # type: ignore[arg-type]
        await asyncio.gather(*rollouts._reports)

    asyncio.run(run())
    assert board.reported == [("site", "push-1", rollout.SUPERSEDED)]


def test_a_preview_is_not_rolled_out() -> None:
    board = Board(Turn(rollout.HELD, 2, 2))
    rollouts, ran = gate(board, FINISHED)
    preview = Deploy(deploy="p", app="site--fix", source="push", preview_of="site")
    assert asyncio.run(rollouts.handle(preview, Ctx())) == FINISHED  # type: ignore[arg-type]
    assert ran == ["p"]
