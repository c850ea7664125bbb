"""One view of the fleet and rollouts in waves, on a real three-node nats-server cluster."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from hyperdrive.eventlog import Filter, JsonlEventLog
from hyperdrive.fleet import link as link_module
from hyperdrive.fleet import rollout
from hyperdrive.fleet.link import CONNECTED, FleetLink, Identity
from hyperdrive.fleet.outbox import Outbox
from hyperdrive.fleet.rollout import Turn
from tests.integration.nats_fixtures import Node, start_nodes, until
from tests.integration.test_fleet_nats import Squadron, connected

SPEC = ("1", "2", "100%")  # alpha, then bravo, then charlie (sorted names, cumulative)


class Logged(Squadron):
    """A squadron with its own event log shared with the fleet, as the daemon wires it."""

    def __init__(self, root: Path, name: str, node: Node) -> None:
        super().__init__(root, name, [node.url])
        self.node = node  # the NATS node it connects to first
        self.log = JsonlEventLog(root / "events.jsonl")

    async def start(self) -> FleetLink:
        self.log.open()
        await self.spool.open()
        identity = Identity(self.name, self.instance, "test")
        outbox = Outbox(self.root / "spool" / "fleet-outbox.jsonl")
        self.link = FleetLink(
            identity, tuple(self.urls), self.creds, self.spool, outbox, events=self.log
        )
        await self.link.start()
        return self.link

    async def close(self) -> None:
        await super().close()
        self.log.close()


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[list[Logged]]:
    nodes: list[Node] = await start_nodes(tmp_path, 3)
    names = ("alpha", "bravo", "charlie")
    made = [Logged(tmp_path / n, n, node) for n, node in zip(names, nodes, strict=True)]
    try:
        await connected(*[await s.start() for s in made])
        yield made
    finally:
        for squadron in made:
            await squadron.close()
        for node in nodes:
            await node.node.stop()


def link(squadron: Squadron) -> FleetLink:
    assert squadron.link is not None
    return squadron.link


async def fleet_history(squadron: Squadron, where: Filter) -> list[dict[str, Any]]:
    stream = await link(squadron).fleet_events(where, history=100, follow=False)
    return [event async for event in stream]


async def test_two_squadrons_events_are_in_one_stream_each_tagged(fleet: list[Logged]) -> None:
    alpha, bravo, _ = fleet
    reader = await link(alpha).fleet_events(Filter(app="site"), history=0, follow=True)
    alpha.log.append({"event": "DeployStarted", "app": "site", "message": "on alpha"})
    bravo.log.append({"event": "DeployStarted", "app": "site", "message": "on bravo"})
    bravo.log.append({"event": "DeployStarted", "app": "other", "message": "not this app"})
    live = [await asyncio.wait_for(anext(reader), 10) for _ in range(2)]
    assert sorted((e["squadron"], e["message"]) for e in live) == [
        ("alpha", "on alpha"),
        ("bravo", "on bravo"),
    ]
    await reader.aclose()

    found: list[dict[str, Any]] = []

    async def stored() -> bool:
        found[:] = await fleet_history(bravo, Filter())
        return len(found) >= 3

    await until_async(stored, "three events stored in HD_EVENTS")
    assert {(e["squadron"], e["app"]) for e in found} == {
        ("alpha", "site"),
        ("bravo", "site"),
        ("bravo", "other"),
    }
    assert all(isinstance(e["seq"], int) for e in found)  # each squadron's own record


async def until_async(check: Any, what: str, tries: int = 100) -> None:
    for _ in range(tries):
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_wave_two_opens_only_after_wave_one_is_healthy_and_a_failure_holds_wave_three(
    fleet: list[Logged],
) -> None:
    alpha, bravo, charlie = (link(s) for s in fleet)
    said: dict[str, Turn] = {}

    def waiting(name: str) -> Any:
        return lambda now: said.__setitem__(name, now)

    first = await alpha.board.turn("site", "push-1", SPEC, waiting("alpha"))
    assert (first.state, first.wave, first.waves) == (rollout.GO, 1, 3)
    second = asyncio.create_task(bravo.board.turn("site", "push-1", SPEC, waiting("bravo")))
    third = asyncio.create_task(charlie.board.turn("site", "push-1", SPEC, waiting("charlie")))
    await until(lambda: {"bravo", "charlie"} <= said.keys(), "bravo and charlie waiting")
    assert not second.done()
    assert not third.done()
    assert said["bravo"].wave == 2
    assert "alpha" in said["bravo"].why

    await alpha.board.report("site", "push-1", rollout.HEALTHY)
    opened = await asyncio.wait_for(second, 10)
    assert (opened.state, opened.wave) == (rollout.GO, 2)
    assert not third.done()  # wave 3 waits for bravo

    await bravo.board.report("site", "push-1", rollout.FAILED)
    held = await asyncio.wait_for(third, 10)
    assert held.state == rollout.HELD
    assert "bravo failed" in held.why
    await charlie.board.report("site", "push-1", rollout.HELD)

    shown = await alpha.fleet_view()
    (site,) = [a for a in shown["apps"] if a["app"] == "site"]
    assert site["rollout"]["state"] == "stopped"
    assert site["rollout"]["waves"] == [["alpha"], ["bravo"], ["charlie"]]
    parts = {name: cell["rollout"] for name, cell in site["squadrons"].items()}
    assert parts == {"alpha": "live", "bravo": "failed", "charlie": "held"}


async def test_the_plan_is_frozen_once_for_the_fleet(fleet: list[Logged]) -> None:
    alpha, bravo, _ = (link(s) for s in fleet)
    first = await alpha.board.turn("site", "push-2", ("50%", "100%"), lambda now: None)
    assert (first.state, first.waves) == (rollout.GO, 2)
    # bravo's orders (read later, say) differ: the plan alpha froze holds for the fleet
    second = await bravo.board.turn("site", "push-2", ("1", "100%"), lambda now: None)
    assert (second.state, second.wave, second.waves) == (rollout.GO, 1, 2)
    shown = await alpha.fleet_view()
    (site,) = [a for a in shown["apps"] if a["app"] == "site"]
    assert site["rollout"]["waves"] == [["alpha", "bravo"], ["charlie"]]  # 50% of 3: 2
    assert site["rollout"]["squadrons"]["charlie"] == "waiting wave 2"


async def test_a_squadron_waiting_for_its_wave_survives_losing_its_nats_node(
    fleet: list[Logged], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(link_module, "WATCH_ALIVE_S", 1.0)
    alpha, bravo, _ = fleet
    said: list[Turn] = []
    assert (await link(alpha).board.turn("site", "push-3", SPEC, said.append)).state == "go"
    second = asyncio.create_task(link(bravo).board.turn("site", "push-3", SPEC, said.append))
    await until(lambda: said, "bravo waiting for wave 2")
    gone = urlparse(bravo.node.url).port
    await bravo.node.node.stop()  # bravo's NATS node is gone: it goes on through another

    def elsewhere() -> bool:  # (a loaded machine may have moved it to another node before)
        nc = link(bravo)._nc
        at = nc.connected_url if nc is not None and nc.is_connected else None
        return link(bravo).state == CONNECTED and at is not None and at.port != gone

    await until(elsewhere, "bravo connected through another node", 60)
    await link(alpha).board.report("site", "push-3", rollout.HEALTHY)
    opened = await asyncio.wait_for(second, 60)
    assert (opened.state, opened.wave) == (rollout.GO, 2)


def connected_port(squadron: Squadron) -> int | None:
    """The port of the node the squadron's link is connected through (None: not connected)."""
    nc = link(squadron)._nc
    if link(squadron).state != CONNECTED or nc is None or not nc.is_connected:
        return None
    return nc.connected_url.port if nc.connected_url is not None else None


async def test_a_squadron_whose_own_node_is_gone_follows_the_fleet_through_later_failovers(
    fleet: list[Logged],
) -> None:
    # bravo was given only its own node: the others it knows from the cluster, and it must
    # keep knowing them in every session after the first one that learned them
    _, bravo, _ = fleet
    ports = {urlparse(s.node.url).port: s.node for s in fleet}
    own = urlparse(bravo.node.url).port
    await bravo.node.node.stop()
    await until(lambda: connected_port(bravo) not in (None, own), "bravo on another node", 60)
    before, through = link(bravo).connections, ports[connected_port(bravo)]
    await through.node.stop()  # and the node it went on through restarts
    await through.node.start()

    def again() -> bool:
        return link(bravo).connections > before and connected_port(bravo) not in (None, own)

    await until(again, "bravo connected again, not through its own node", 90)
