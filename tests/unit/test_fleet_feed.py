"""One view of the fleet's events: subjects and tags, `[sq] …` lines, and the pusher seeing
the other squadrons' deploys of a push (post-receive on a fake admin client)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from hyperdrive.fleet import feed
from hyperdrive.hooks import post_receive as hook
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
