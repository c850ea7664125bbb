"""`hd logs` lines read like the seed's log: time, app, stage, message, duration; the pusher
reads the same words."""

import pytest

from hyperdrive.render import describe, headline, pushed


def test_a_stage_with_its_duration() -> None:
    event = {
        "ts": "2026-11-25T14:02:11.123Z",
        "event": "ShipAssembled",
        "app": "web",
        "message": "ship 'hd-web-1a2b3c4' assembled",
        "ms": 812,
    }
    assert describe(event) == "14:02:11 web ship-build: ship 'hd-web-1a2b3c4' assembled (812 ms)"


def test_stage_finished_names_its_stage() -> None:
    event = {
        "ts": "2026-11-25T14:02:11Z",
        "event": "StageFinished",
        "app": "web",
        "stage": "fetch",
        "message": "fetched master",
        "ms": 37,
    }
    assert describe(event) == "14:02:11 web fetch: fetched master (37 ms)"


def test_build_output_is_indented_under_its_app() -> None:
    event = {
        "ts": "2026-11-25T14:02:12Z",
        "event": "BuildOutput",
        "app": "api",
        "message": "Collecting flask",
    }
    assert describe(event) == "14:02:12 api        Collecting flask"


def test_an_event_without_message_or_app_still_reads() -> None:
    event = {"ts": "2026-11-25T14:02:13Z", "event": "SomethingNew", "sha": "a" * 40}
    assert describe(event) == "14:02:13 - SomethingNew: Something new at aaaaaaa"


FINISHED = {
    "ts": "2026-11-25T14:02:15Z",
    "event": "DeployFinished",
    "app": "web",
    "ms": 3200,
    "url": "http://h/web/",
    "message": "web 1a2b3c4 is live at http://h/web/",
}
FAILED = {
    "ts": "2026-11-25T14:02:15Z",
    "event": "DeployFailed",
    "app": "web",
    "stage": "drain",
    "message": "rolled back; hd-web-aaaaaaa keeps serving",
}


@pytest.mark.parametrize("event", [FINISHED, FAILED])
def test_the_log_and_the_pusher_say_the_same_words(event: dict[str, object]) -> None:
    words = headline(event)
    assert describe(event) == f"14:02:15 web deploy: {words}"
    shown = pushed(event)
    assert shown is not None
    assert shown.endswith(words)


def test_outcomes_read_as_outcomes() -> None:
    assert headline(FINISHED) == "web deployed (3.2 s): web 1a2b3c4 is live at http://h/web/"
    ready = {"event": "DeployFinished", "app": "web", "message": "ship 'x' ready: hd launch x"}
    assert headline(ready) == "ship 'x' ready: hd launch x"
    assert headline(FAILED) == ("deploy failed at drain: rolled back; hd-web-aaaaaaa keeps serving")
    assert pushed(FAILED) == f" !     web: {headline(FAILED)}"
    superseded = {"event": "DeploySuperseded", "app": "web", "by": "push-2"}
    assert headline(superseded) == "superseded by a newer deploy (push-2)"


def test_no_escape_sequence_reaches_a_terminal() -> None:
    event = {"ts": "2026-11-25T14:02:12Z", "event": "BuildOutput", "app": "web",
             "message": "red\x1b[31m\nbell\x07"}  # fmt: skip
    assert describe(event) == "14:02:12 web        red[31m\n14:02:12 web        bell"
    odd = {"ts": "2026-11-25T14:02:12Z", "event": "ShipStarted", "message": "a\x1b]0;x\x07b"}
    assert describe(odd) == "14:02:12 - ship-launch: a]0;xb"
