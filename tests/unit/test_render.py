"""`hd logs` lines read like the seed's log: time, app, stage, message, duration."""

from hyperdrive.render import describe


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
    assert describe(event) == "14:02:13 - SomethingNew: SomethingNew, sha aaaaaaa"
