"""The fleet's pure parts: config keys, membership and creds files, the node's config, the
relay between the spool and the stream (on fakes), and the status line."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from hyperdrive import config as configuration
from hyperdrive.config import Listen
from hyperdrive.errors import ConfigError, FleetError, SpoolError
from hyperdrive.fleet import state
from hyperdrive.fleet.bundles import TEMP_REF, bundled_ref
from hyperdrive.fleet.node import NodeSpec, render
from hyperdrive.fleet.outbox import Outbox
from hyperdrive.fleet.relay import Relay, encode, shared
from hyperdrive.fleet.service import FleetService
from hyperdrive.fleet.view import check_forgettable
from hyperdrive.names import ZERO_SHA
from hyperdrive.render import fleet_line
from hyperdrive.spool import FileSpool
from hyperdrive.triggers import RefUpdate, Trigger

UPDATE = RefUpdate("refs/heads/main", ZERO_SHA, "b" * 40)


def webhook(delivery: str = "d-1") -> Trigger:
    return Trigger.webhook(
        delivery,
        provider="github",
        repository="acme/shop",
        targets={"shop": UPDATE},
        fingerprint="fp",
        received=time.time(),
    )


# -- config --
def test_a_squadron_is_alone_by_default() -> None:
    config = configuration.build({})
    assert config.fleet == ()
    assert config.fleet_listen == Listen("0.0.0.0", 4222)
    assert config.fleet_cluster_listen == Listen("0.0.0.0", 6222)
    assert config.fleet_creds_file == config.var / "fleet.creds"
    assert state.connect_urls(config, None) == ()


def test_fleet_urls_are_checked_and_shown_without_their_password() -> None:
    config = configuration.build(
        {"HYPERDRIVE_FLEET": "nats://u:pw@10.0.0.1:4222, tls://nats.example:4222"}
    )
    assert config.fleet == ("nats://u:pw@10.0.0.1:4222", "tls://nats.example:4222")
    assert (
        config.redacted()["HYPERDRIVE_FLEET"]
        == "nats://u:***@10.0.0.1:4222,tls://nats.example:4222"
    )
    with pytest.raises(ConfigError, match=r"HYPERDRIVE_FLEET=.*not a NATS URL"):
        configuration.build({"HYPERDRIVE_FLEET": "http://10.0.0.1:4222"})


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("HYPERDRIVE_FLEET_CREDS", "relative/creds", "absolute"),
        ("HYPERDRIVE_FLEET_LISTEN", "4222", "HOST:PORT"),
        ("HYPERDRIVE_FLEET_CLUSTER_LISTEN", "0.0.0.0:99999", "out of range"),
    ],
)
def test_bad_fleet_keys_stop_start_up_naming_the_key(key: str, value: str, why: str) -> None:
    with pytest.raises(ConfigError, match=f"{key}=.*{why}"):
        configuration.build({key: value})


def test_the_client_and_cluster_listen_addresses_must_differ() -> None:
    same = {
        "HYPERDRIVE_FLEET_LISTEN": "0.0.0.0:5000",
        "HYPERDRIVE_FLEET_CLUSTER_LISTEN": "0.0.0.0:5000",
    }
    with pytest.raises(ConfigError, match="must differ"):
        configuration.build(same)


# -- membership and creds --
def test_membership_decides_where_the_link_connects(tmp_path: Path) -> None:
    config = configuration.build(
        {
            "HYPERDRIVE_DATA": str(tmp_path / "d"),
            "HYPERDRIVE_VAR": str(tmp_path / "v"),
            "HYPERDRIVE_FLEET_LISTEN": "0.0.0.0:14222",
        }
    )
    assert state.read_membership(config) is None
    state.write_membership(config, state.Membership(node=True))
    assert state.connect_urls(config, state.read_membership(config)) == ("nats://127.0.0.1:14222",)
    state.write_membership(config, state.Membership(node=False, urls=("nats://10.1.1.1:4222",)))
    assert state.connect_urls(config, state.read_membership(config)) == ("nats://10.1.1.1:4222",)
    explicit = configuration.build(
        {**{"HYPERDRIVE_FLEET": "nats://n:4222"}, "HYPERDRIVE_DATA": str(tmp_path / "d")}
    )
    assert state.connect_urls(explicit, state.read_membership(config)) == ("nats://n:4222",)


def test_an_unreadable_membership_record_is_a_clear_error(tmp_path: Path) -> None:
    config = configuration.build({"HYPERDRIVE_DATA": str(tmp_path / "d")})
    state.membership_file(config).parent.mkdir(parents=True)
    state.membership_file(config).write_text("{not json")
    with pytest.raises(FleetError, match=r"fleet\.json is unreadable.*hd fleet leave"):
        state.read_membership(config)


def test_creds_round_trip_secret_mode_and_clear_errors(tmp_path: Path) -> None:
    creds = state.new_creds()
    assert creds != state.new_creds()
    path = tmp_path / "fleet.creds"
    state.write_creds(path, creds)
    assert path.stat().st_mode & 0o777 == 0o600
    assert state.read_creds(path) == creds
    with pytest.raises(FleetError, match="does not exist"):
        state.read_creds(tmp_path / "missing")
    (tmp_path / "half").write_text("NATS_USER=x\n")
    with pytest.raises(FleetError, match="must set NATS_USER and NATS_PASSWORD"):
        state.read_creds(tmp_path / "half")


def test_the_system_password_comes_from_the_secret_and_is_kept_with_it(tmp_path: Path) -> None:
    creds = state.Creds("hyperdrive", "s3cret")
    system = creds.system()
    assert system.user == "system"
    assert system.password == state.Creds("hyperdrive", "s3cret").system().password
    assert system.password not in (creds.password, state.Creds("hyperdrive", "other").system())
    path = tmp_path / "fleet.creds"
    state.write_creds(path, creds)
    assert f"NATS_SYSTEM_PASSWORD={system.password}\n" in path.read_text()


def test_a_node_lists_every_other_node_of_the_fleet_once() -> None:
    presence = {
        "a": {"id": "1", "route": "nats://10.0.0.1:6222", "client": "nats://10.0.0.1:4222"},
        "b": {"id": "2", "route": "nats://10.0.0.2:6222"},
        "m": {"id": "3"},  # a member: no route
        "c": {"id": "4", "route": "nats://10.0.0.3:6222"},
    }
    routes = state.node_routes(presence)
    assert routes == {
        "a": "nats://10.0.0.1:6222",
        "b": "nats://10.0.0.2:6222",
        "c": "nats://10.0.0.3:6222",
    }
    assert state.peer_routes(routes, "b") == ("nats://10.0.0.1:6222", "nats://10.0.0.3:6222")
    assert state.peer_routes({**routes, "x": "nats://10.0.0.1:6222"}, "c") == (
        "nats://10.0.0.1:6222",
        "nats://10.0.0.2:6222",
    )


def test_replicas_are_three_with_three_nodes_else_one() -> None:
    assert [state.replicas_for(n) for n in (0, 1, 2, 3, 5)] == [1, 1, 1, 3, 3]


def test_forget_is_refused_for_a_squadron_up_or_unknown() -> None:
    now = 10_000.0
    with pytest.raises(FleetError, match="there is no squadron 'ghost' in this fleet"):
        check_forgettable("ghost", None, now, force=True)
    seen = {"id": "1", "seen": now - 20}
    with pytest.raises(FleetError, match=r"b was seen 20 s ago: it is up.*forget b --force"):
        check_forgettable("b", seen, now, force=False)
    check_forgettable("b", seen, now, force=True)
    check_forgettable("b", {"id": "1", "seen": now - 3600}, now, force=False)


async def test_leave_and_forget_are_refused_where_they_make_no_sense(tmp_path: Path) -> None:
    config = configuration.build(
        {"HYPERDRIVE_DATA": str(tmp_path / "d"), "HYPERDRIVE_VAR": str(tmp_path / "v")}
    )
    fleet = FleetService(config, FileSpool(tmp_path / "spool"))
    with pytest.raises(FleetError, match="this squadron is not in a fleet"):
        await fleet.leave()
    with pytest.raises(FleetError, match="`hd fleet leave` instead"):
        await fleet.forget(config.name)
    with pytest.raises(FleetError, match="not in a fleet"):
        await fleet.forget("other")
    explicit = configuration.build(
        {**{"HYPERDRIVE_FLEET": "nats://n:4222"}, "HYPERDRIVE_DATA": str(tmp_path / "d")}
    )
    with pytest.raises(FleetError, match="HYPERDRIVE_FLEET is set"):
        await FleetService(explicit, FileSpool(tmp_path / "spool")).leave()


def test_the_join_line_carries_the_url_and_the_secret() -> None:
    creds = state.Creds("hyperdrive", "s3cret")
    line = state.join_line(state.client_url(Listen("0.0.0.0", 4222), "10.0.0.5"), creds)
    assert line == "hd fleet join nats://10.0.0.5:4222 --secret s3cret"


# -- the managed node's config --
def test_a_lone_node_is_standalone_jetstream_with_auth(tmp_path: Path) -> None:
    spec = NodeSpec(
        "alpha",
        tmp_path,
        Listen("0.0.0.0", 4222),
        Listen("0.0.0.0", 6222),
        state.Creds("hyperdrive", "pw"),
    )
    text = render(spec)
    assert '{ jetstream: enabled, users: [{ user: "hyperdrive", password: "pw" }] }' in text
    system = state.Creds("hyperdrive", "pw").system()
    assert f'users: [{{ user: "system", password: "{system.password}" }}]' in text
    assert "system_account: SYS" in text  # peer removal needs it
    assert f'store_dir: "{tmp_path}/jetstream"' in text
    assert "cluster" not in text  # nats-server 2.9 refuses a JetStream cluster without routes


def test_a_clustered_node_routes_to_its_peers_with_the_fleet_creds(tmp_path: Path) -> None:
    spec = NodeSpec(
        "alpha",
        tmp_path,
        Listen("0.0.0.0", 4222),
        Listen("10.0.0.1", 6222),
        state.Creds("hyperdrive", "pw"),
        ("nats://10.0.0.2:6222",),
    )
    text = render(spec)
    assert 'listen: "10.0.0.1:6222"' in text
    assert 'routes: ["nats-route://hyperdrive:pw@10.0.0.2:6222"]' in text


# -- the relay, on a real spool and a fake delivery --
@dataclass
class FakeDelivery:
    acked: int = 0
    termed: int = 0
    touched: int = 0

    async def ack(self) -> None:
        self.acked += 1

    async def in_progress(self) -> None:
        self.touched += 1

    async def term(self) -> None:
        self.termed += 1


async def relay_on(tmp_path: Path) -> tuple[FileSpool, Relay]:
    spool = FileSpool(tmp_path / "spool")
    await spool.open()
    outbox = Outbox(tmp_path / "spool" / "fleet-outbox.jsonl")
    relay = Relay(spool, outbox)
    spool.listeners.append(relay)
    return spool, relay


def test_only_triggers_another_squadron_can_act_on_are_shared() -> None:
    assert shared(webhook())
    assert shared(
        Trigger.hq_webhook(
            "d-2",
            provider="github",
            repository="acme/hq",
            update=UPDATE,
            fingerprint="f",
            received=0.0,
        )
    )
    assert shared(Trigger.push("shop", UPDATE, "ann"))  # its commits travel as a bundle
    assert shared(Trigger.hq_push(UPDATE, "ann"))
    assert not shared(Trigger.deploy("shop"))
    assert not shared(Trigger.hq_sync("hd headquarters sync"))
    assert shared(Trigger.deploy("shop", fleet=True))  # `hd deploy shop --fleet`
    assert shared(Trigger.rollback("shop", fleet=True))
    assert not shared(Trigger.deploy("shop", source="hq"))  # each squadron reads HQ itself


def test_fleet_in_a_requested_trigger_must_be_a_boolean() -> None:
    with pytest.raises(SpoolError, match="fleet is not true or false"):
        Trigger.requested({"kind": "rollback", "app": "shop", "data": {"fleet": "yes"}})
    asked = Trigger.requested({"kind": "deploy", "app": "shop", "data": {"fleet": True}})
    assert asked.data["fleet"] is True


async def test_a_shared_trigger_taken_here_waits_in_the_outbox(tmp_path: Path) -> None:
    spool, relay = await relay_on(tmp_path)
    trigger = webhook()
    await spool.put(trigger)
    await spool.put(Trigger.deploy("shop"))
    assert [t.id for t in relay.outbox.unsent()] == [trigger.id]
    await relay.outbox.sent(trigger.id)
    again = Outbox(relay.outbox.path)
    again.load()
    assert again.unsent() == []  # sent survives a restart too
    await spool.close()


async def test_the_outbox_survives_a_restart(tmp_path: Path) -> None:
    spool, relay = await relay_on(tmp_path)
    await spool.put(webhook("d-a"))
    await spool.put(webhook("d-b"))
    await spool.close()
    again = Outbox(relay.outbox.path)
    again.load()
    assert [t.id for t in again.unsent()] == ["d-a", "d-b"]
    assert again.changed.is_set()


async def test_a_received_trigger_is_acked_only_at_its_outcome(tmp_path: Path) -> None:
    spool, relay = await relay_on(tmp_path)
    trigger, delivery = webhook(), FakeDelivery()
    await relay.received(encode(trigger), delivery)
    assert spool.waiting(trigger.id)
    assert relay.outbox.unsent() == []  # it came from the fleet: not published again
    await relay.keep_alive()
    assert (delivery.acked, delivery.touched) == (0, 1)
    await spool.done(trigger.id, "finished")
    assert delivery.acked == 1
    await spool.close()


async def test_a_redelivery_of_a_known_trigger_is_not_taken_twice(tmp_path: Path) -> None:
    spool, relay = await relay_on(tmp_path)
    trigger = webhook()
    await spool.put(trigger)  # the forge sent it here too
    first, second = FakeDelivery(), FakeDelivery()
    await relay.received(encode(trigger), first)
    assert len(spool.pending()) == 1
    assert first.acked == 0
    await spool.done(trigger.id, "finished")
    assert first.acked == 1
    await relay.received(encode(trigger), second)  # redelivered after the outcome: ack now
    assert second.acked == 1
    assert spool.pending() == []
    await spool.close()


async def test_a_message_that_is_not_a_trigger_is_dropped(tmp_path: Path) -> None:
    spool, relay = await relay_on(tmp_path)
    delivery = FakeDelivery()
    await relay.received(b'{"id": "x", "kind": "nonsense"}', delivery)
    assert delivery.termed == 1
    assert spool.pending() == []
    await spool.close()


# -- what hd status says --
def test_the_status_line_says_alone_connected_or_unreachable() -> None:
    assert fleet_line({"state": "alone"}) == ""
    assert (
        fleet_line({"state": "connected", "urls": ["nats://n:4222"]}) == "connected (nats://n:4222)"
    )
    line = fleet_line(
        {
            "state": "unreachable",
            "urls": ["nats://n:4222"],
            "detail": "NATS unreachable: refused",
            "unpublished": 2,
        }
    )
    assert line.startswith("UNREACHABLE (nats://n:4222): NATS unreachable")
    assert "2 triggers not published yet" in line


async def test_a_push_from_the_fleet_gets_its_code_before_it_is_spooled(tmp_path: Path) -> None:
    spool, relay = await relay_on(tmp_path)
    prepared: list[str] = []

    async def prepare(trigger: Trigger) -> Trigger:  # the link fetches the bundle here
        prepared.append(trigger.id)
        assert not spool.knows(trigger.id)
        return Trigger.from_json({**trigger.to_json(), "data": {**trigger.data, "unfetched": "x"}})

    relay.prepare = prepare
    push = Trigger.push("shop", UPDATE, "ann")
    await relay.received(encode(push), FakeDelivery())
    assert prepared == [push.id]
    assert spool.pending()[0].data["unfetched"] == "x"  # its deploy here says why it failed
    await relay.received(encode(push), FakeDelivery())  # redelivered: not fetched again
    assert prepared == [push.id]
    await spool.close()


def test_a_bundle_names_the_one_ref_it_carries() -> None:
    sha = "e" * 40
    bundle = f"# v2 git bundle\n-{'b' * 40} a message\n{sha} {TEMP_REF}/{sha}-1a2b\n\nPACK".encode()
    assert bundled_ref(bundle) == f"{TEMP_REF}/{sha}-1a2b"
    with pytest.raises(FleetError, match="not a git bundle"):
        bundled_ref(b"PK\x03\x04 a zip")
    with pytest.raises(FleetError, match="one pushed commit"):
        bundled_ref(f"# v2 git bundle\n{sha} refs/heads/main\n\nPACK".encode())
