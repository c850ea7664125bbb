"""The fleet's trigger stream on real nats-server nodes (a three-node JetStream cluster)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import nats
import pytest

from hyperdrive.errors import FleetError
from hyperdrive.fleet.link import CONNECTED, REFUSED, STREAM, FleetLink, Identity, probe
from hyperdrive.fleet.outbox import Outbox
from hyperdrive.fleet.state import Creds
from hyperdrive.names import ZERO_SHA
from hyperdrive.spool import FileSpool
from hyperdrive.triggers import RefUpdate, Trigger
from tests.integration.nats_fixtures import CREDS, Node, start_nodes, until


def webhook(delivery: str, sha: str = "a" * 40) -> Trigger:
    update = RefUpdate("refs/heads/main", ZERO_SHA, sha)
    return Trigger.webhook(
        delivery,
        provider="github",
        repository="acme/shop",
        targets={"shop": update},
        fingerprint=f"body-{delivery}",
        received=time.time(),
    )


class Squadron:
    """One squadron's spool and fleet link, as the daemon wires them (no deploys run)."""

    def __init__(
        self, root: Path, name: str, urls: list[str], creds: Creds = CREDS, instance: str = ""
    ) -> None:
        self.root, self.name, self.urls, self.creds = root, name, urls, creds
        self.instance = instance or f"id-{name}"
        self.spool = FileSpool(root / "spool")
        self.link: FleetLink | None = None

    async def start(self) -> FleetLink:
        if self.link is None:
            await self.spool.open()
        identity = Identity(self.name, self.instance, "test")
        outbox = Outbox(self.root / "spool" / "fleet-outbox.jsonl")
        self.link = FleetLink(identity, tuple(self.urls), self.creds, self.spool, outbox)
        await self.link.start()
        return self.link

    async def stop_link(self) -> None:
        assert self.link is not None
        await self.link.stop()

    async def close(self) -> None:
        if self.link is not None:
            await self.link.stop()
        await self.spool.close()


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[list[Node]]:
    nodes = await start_nodes(tmp_path, 3)
    yield nodes
    for node in nodes:
        await node.node.stop()


@pytest.fixture
async def lone_node(tmp_path: Path) -> AsyncIterator[Node]:
    nodes = await start_nodes(tmp_path, 1)
    yield nodes[0]
    await nodes[0].node.stop()


@pytest.fixture
async def squadrons(tmp_path: Path) -> AsyncIterator[Callable[..., Squadron]]:
    made: list[Squadron] = []

    def make(name: str, urls: list[str], **kwargs: object) -> Squadron:
        squadron = Squadron(tmp_path / f"sq-{name}-{len(made)}", name, urls, **kwargs)  # type: ignore[arg-type]
        made.append(squadron)
        return squadron

    yield make
    for squadron in made:
        await squadron.close()


async def stream_messages(url: str) -> int:
    nc = await nats.connect(url, user=CREDS.user, password=CREDS.password)
    try:
        return (await nc.jetstream().stream_info(STREAM)).state.messages
    finally:
        await nc.close()


async def ack_pending(url: str, durable: str) -> int:
    nc = await nats.connect(url, user=CREDS.user, password=CREDS.password)
    try:
        return (await nc.jetstream().consumer_info(STREAM, durable)).num_ack_pending
    finally:
        await nc.close()


async def connected(*links: FleetLink) -> None:
    await until(lambda: all(link.state == CONNECTED for link in links), "links connected")


async def test_a_delivery_taken_by_two_squadrons_is_stored_once(cluster: list[Node], squadrons):
    a = squadrons("alpha", [cluster[0].url])
    b = squadrons("bravo", [cluster[1].url])
    await connected(await a.start(), await b.start())
    await b.stop_link()  # bravo's fleet link is not up yet (it takes its copy first)
    trigger = webhook("delivery-1")
    assert await a.spool.put(trigger)  # the forge sent the same delivery to both
    # taken while connected: durable on the fleet by the time the webhook is answered
    assert not a.link.outbox
    assert await b.spool.put(trigger)
    await b.start()  # the link finds the shared trigger pending in the spool and publishes it
    await until(lambda: b.link.published == 1, "bravo published its copy")
    assert await stream_messages(cluster[2].url) == 1  # the same Nats-Msg-Id: stored once
    # each squadron has it once, pending its own deploy
    assert a.spool.waiting(trigger.id)
    assert b.spool.waiting(trigger.id)
    assert [t.id for t in b.spool.pending()] == [trigger.id]


async def test_a_trigger_taken_by_one_squadron_reaches_the_other(cluster: list[Node], squadrons):
    a = squadrons("alpha", [cluster[0].url])
    b = squadrons("bravo", [cluster[2].url])
    await connected(await a.start(), await b.start())
    trigger = webhook("delivery-2")
    await a.spool.put(trigger)
    await until(lambda: b.spool.waiting(trigger.id), "the trigger in bravo's spool")
    assert b.spool.pending()[0] == trigger


async def test_losing_one_nats_node_loses_no_trigger(cluster: list[Node], squadrons):
    a = squadrons("alpha", [cluster[0].url])
    b = squadrons("bravo", [cluster[1].url])
    await connected(await a.start(), await b.start())
    await cluster[1].node.stop()  # bravo's node: the client moves to a node it learned of
    trigger = webhook("after-the-loss")
    assert await a.spool.put(trigger)
    await until(lambda: b.spool.waiting(trigger.id), "the trigger in bravo's spool", timeout=60)


async def test_a_squadron_that_was_down_catches_up(cluster: list[Node], squadrons):
    a = squadrons("alpha", [cluster[0].url])
    b = squadrons("bravo", [cluster[1].url])
    await connected(await a.start(), await b.start())
    await b.stop_link()  # bravo is down
    missed = [webhook(f"missed-{n}", sha=f"{n:x}" * 40) for n in range(1, 6)]
    for trigger in missed:
        await a.spool.put(trigger)
    await until(lambda: not a.link.outbox, "alpha published")
    assert not any(b.spool.knows(t.id) for t in missed)
    await b.start()  # back: its durable consumer still has everything it missed
    await until(lambda: all(b.spool.waiting(t.id) for t in missed), "bravo caught up")
    assert [t.id for t in b.spool.pending()] == [t.id for t in missed]  # in order


async def test_a_delivery_is_acknowledged_only_once_the_deploy_has_an_outcome(
    cluster: list[Node], squadrons
):
    a = squadrons("alpha", [cluster[0].url])
    b = squadrons("bravo", [cluster[1].url])
    await connected(await a.start(), await b.start())
    trigger = webhook("delivery-3")
    await a.spool.put(trigger)
    await until(lambda: b.spool.waiting(trigger.id), "bravo took it")
    assert await ack_pending(cluster[1].url, "bravo") == 1  # deploying: not acknowledged
    await b.spool.done(trigger.id, "finished")
    for _ in range(200):
        if await ack_pending(cluster[1].url, "bravo") == 0:
            break
    assert await ack_pending(cluster[1].url, "bravo") == 0


async def test_wrong_credentials_are_refused(lone_node: Node, squadrons):
    wrong = Creds(CREDS.user, "not-the-fleet-secret")
    with pytest.raises(FleetError, match="credentials"):
        await probe((lone_node.url,), wrong, Identity("mallory", "id-m", "test"))
    m = squadrons("mallory", [lone_node.url], creds=wrong)
    link = await m.start()
    await until(lambda: link.state == REFUSED, "refused")
    assert "credentials" in link.detail


async def test_an_error_the_connection_outlives_leaves_the_link_connected(
    lone_node: Node, squadrons
):
    """NATS reports a subscription callback's exception through the same callback as a lost
    server: the link must not say "unreachable" while it is connected (nothing would correct it)."""
    link = await squadrons("alpha", [lone_node.url]).start()
    await connected(link)
    said: list[bytes] = []

    async def broken(msg: nats.aio.msg.Msg) -> None:
        said.append(msg.data)
        raise RuntimeError("a handler's own bug")

    assert link._nc is not None
    await link._nc.subscribe("hd.test.broken", cb=broken)
    await link._nc.publish("hd.test.broken", b"x")
    await link._nc.flush()
    await until(lambda: said, "the broken handler called")
    await asyncio.sleep(0.2)  # its error has been reported by then
    assert link.state == CONNECTED, link.detail
    assert await link.others() == []


async def test_a_squadron_name_is_unique_in_the_fleet(cluster: list[Node], squadrons):
    first = squadrons("alpha", [cluster[0].url], instance="machine-1")
    await connected(await first.start())
    with pytest.raises(FleetError, match="'alpha' is already taken"):
        await probe((cluster[1].url,), CREDS, Identity("alpha", "machine-2", "test"))
    clash = squadrons("alpha", [cluster[1].url], instance="machine-2")
    link = await clash.start()
    await until(lambda: link.state == REFUSED, "the clash refused")
    assert "already taken" in link.detail
    # the same squadron coming back (same data folder) is not a clash
    again = squadrons("alpha", [cluster[2].url], instance="machine-1")
    await first.stop_link()
    await connected(await again.start())


async def test_triggers_taken_while_nats_is_down_are_published_when_it_is_back(
    tmp_path: Path, squadrons
):
    nodes = await start_nodes(tmp_path / "n", 1)
    try:
        a = squadrons("alpha", [nodes[0].url])
        await connected(await a.start())
        await nodes[0].node.stop()
        await until(lambda: a.link.state != CONNECTED, "alpha sees NATS gone")
        waiting = [webhook(f"offline-{n}") for n in range(3)]
        for trigger in waiting:
            assert await a.spool.put(trigger)  # the squadron keeps taking triggers
        assert len(a.link.outbox) == 3
        await nodes[0].node.start()
        await until(lambda: not a.link.outbox, "published after NATS came back", timeout=40)
        assert await stream_messages(nodes[0].url) == 3
    finally:
        await nodes[0].node.stop()


async def test_a_trigger_whose_publish_was_retrying_at_the_reconnection_is_published(
    tmp_path: Path, squadrons
):
    """NATS away long enough for the publish to back off for seconds: the reconnection starts
    a new session in the middle of that wait, and the new session publishes what is unsent."""
    nodes = await start_nodes(tmp_path / "n", 1)
    try:
        a = squadrons("alpha", [nodes[0].url])
        await connected(await a.start())
        await nodes[0].node.stop()
        await until(lambda: a.link.state != CONNECTED, "alpha sees NATS gone")
        assert await a.spool.put(webhook("retried"))
        await asyncio.sleep(6)  # the publish backs off 0.2, 0.4 … 3.2 s meanwhile
        await nodes[0].node.start()
        await until(lambda: not a.link.outbox, "published after NATS came back", timeout=40)
        assert await stream_messages(nodes[0].url) == 1
    finally:
        await nodes[0].node.stop()
