"""One view of the fleet's events: subjects and tags, `[sq] …` lines, and the pusher seeing
the other squadrons' deploys of a push (post-receive on a fake admin client)."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from hyperdrive.api import Api, TokenStore
from hyperdrive.errors import FleetError
from hyperdrive.eventlog import Filter, JsonlEventLog
from hyperdrive.fleet import feed
from hyperdrive.hooks import post_receive as hook
from hyperdrive.spool import FileSpool
from hyperdrive.triggers import RefUpdate, Trigger

A, B = "a" * 40, "b" * 40


def test_each_event_goes_to_its_squadrons_and_apps_subject() -> None:
    assert feed.subject("bravo", {"event": "DeployStarted", "app": "site"}) == "hd.event.bravo.site"
    assert feed.subject("bravo", {"event": "DaemonStarted"}) == "hd.event.bravo._"
    assert feed.app_subject("site") == "hd.event.*.site"
    assert feed.app_subject(None) == "hd.event.>"


def test_an_event_is_tagged_with_its_squadron_and_read_back() -> None:
    event = {"ts": "2026-12-01T10:00:00.000Z", "seq": 7, "event": "DeployStarted", "app": "site"}
    data = feed.encode("bravo", event)
    assert feed.decode(data) == {**event, "squadron": "bravo"}
    assert feed.decode(b"not json") is None
    assert feed.decode(json.dumps({"event": "X"}).encode()) is None  # untagged: not ours


def test_every_line_of_an_event_is_prefixed_with_its_squadron() -> None:
    event = {"squadron": "bravo"}
    assert feed.prefixed(event, "one\ntwo") == "[bravo] one\n[bravo] two"


class FleetClient:
    """The admin client of a squadron `alpha` in a fleet with `bravo` (up) and `gone`."""

    def __init__(self, fleet_events: list[dict[str, Any]]) -> None:
        self.fleet_events = fleet_events
        self.asked: list[dict[str, Any]] = []

    def get(self, path: str) -> Any:
        assert path == "/fleet"
        return {
            "squadron": "alpha",
            "squadrons": [
                {"name": "alpha", "state": "up"},
                {"name": "bravo", "state": "up"},
                {"name": "gone", "state": "gone"},
            ],
        }

    def events(self, **query: Any) -> Iterator[dict[str, Any]]:
        self.asked.append(query)
        if query.get("fleet"):
            yield from self.fleet_events
            return
        yield {"event": "DeployStarted", "app": "site", "deploy": query["deploy"]}
        yield {"event": "DeployFinished", "app": "site", "deploy": query["deploy"]}


def trigger() -> Trigger:
    return replace(Trigger.push("site", RefUpdate("refs/heads/main", A, B), "alice"), id="p1")


def test_a_pusher_sees_the_other_squadrons_deploys_of_the_push() -> None:
    client = FleetClient(
        [
            {"event": "DeployStarted", "app": "site", "deploy": "p1", "squadron": "alpha"},
            {"event": "DeployStarted", "app": "site", "deploy": "p0", "squadron": "bravo"},
            {"event": "DeployStarted", "app": "site", "deploy": "p1", "squadron": "bravo"},
            {"event": "DeployFinished", "app": "site", "deploy": "p1", "squadron": "bravo",
             "message": "site is live"},
            {"event": "BuildOutput", "message": "after the outcome", "deploy": "p1",
             "squadron": "bravo"},
        ]
    )  # fmt: skip
    out = io.StringIO()
    assert hook.follow([trigger()], client, out, 5) is True  # type: ignore[arg-type]
    lines = out.getvalue().splitlines()
    theirs = [line for line in lines if line.startswith("[")]
    assert theirs == ["[bravo] -----> Deploying site at ?", "[bravo] -----> site is live"]
    assert "after the outcome" not in out.getvalue()
    assert not any(line.startswith("[alpha]") for line in lines)  # ours: as alone, no prefix
    (fleet_query,) = [q for q in client.asked if q.get("fleet")]
    assert fleet_query["app"] == "site"
    assert fleet_query["follow"] is True


def test_a_held_squadron_has_an_outcome_too() -> None:
    held = {"event": "RolloutHeld", "app": "site", "deploy": "p1", "squadron": "bravo"}
    held["message"] = "held by rollout: the rollout stopped before wave 2 (alpha failed)"
    out = io.StringIO()
    assert hook.follow([trigger()], FleetClient([held]), out, 5) is True  # type: ignore[arg-type]
    assert "[bravo] -----> held by rollout" in out.getvalue()
    assert "other squadrons still deploying" not in out.getvalue()


# -- GET /events?fleet=1 on the admin and the public API (a fake fleet's events) --
async def fleet_events_of(events: list[dict[str, Any]]) -> Any:
    async def fleet_events(where: Filter, *, history: int | None, follow: bool) -> Any:
        async def stream() -> AsyncIterator[dict[str, Any]]:
            for event in events:
                if where(event):
                    yield event

        return stream()

    return fleet_events


@contextlib.contextmanager
def api(tmp_path: Path, fleet_events: Any) -> Iterator[Api]:
    log = JsonlEventLog(tmp_path / "events.jsonl")
    log.open()
    log.append({"event": "DaemonStarted", "message": "local only"})
    tokens = TokenStore(tmp_path / "tokens.json")
    spool = FileSpool(tmp_path / "spool")
    try:
        yield Api(log, spool, dict, tokens, dict, fleet_events=fleet_events)
    finally:
        log.close()


THEIRS = [
    {"seq": 1, "event": "DeployStarted", "app": "site", "squadron": "alpha"},
    {"seq": 1, "event": "DeployStarted", "app": "site", "squadron": "bravo"},
    {"seq": 2, "event": "DeployStarted", "app": "other", "squadron": "bravo"},
]


async def test_fleet_events_stream_with_their_squadron(tmp_path: Path) -> None:
    with api(tmp_path, await fleet_events_of(THEIRS)) as site:
        await fleet_events_are_tagged(site)


async def fleet_events_are_tagged(site: Api) -> None:
    async with TestClient(TestServer(site.admin())) as client:
        answer = await client.get("/events?fleet=1&app=site")
        lines = [json.loads(line) for line in (await answer.text()).splitlines() if line]
        assert [e["squadron"] for e in lines] == ["alpha", "bravo"]
        local = await client.get("/events")
        assert "local only" in await local.text()  # without fleet=1: this squadron's log
    token = site.tokens.create("ann")
    async with TestClient(TestServer(site.public())) as client:
        answer = await client.get(f"/events?fleet=1&follow=0&token={token}")
        sent = [line for line in (await answer.text()).splitlines() if line.startswith("data: ")]
        assert [json.loads(line[6:])["squadron"] for line in sent] == ["alpha", "bravo", "bravo"]


async def test_fleet_events_of_a_squadron_alone_are_a_409(tmp_path: Path) -> None:
    async def not_in_a_fleet(where: Filter, *, history: int | None, follow: bool) -> Any:
        raise FleetError("this squadron is not in a fleet (see `hd fleet init`)")

    for fleet_events in (None, not_in_a_fleet):
        with api(tmp_path, fleet_events) as site:
            async with TestClient(TestServer(site.admin())) as client:
                answer = await client.get("/events?fleet=1")
                assert answer.status == 409
                assert "not in a fleet" in await answer.text()
