"""One follower for `hd deploy`, `ssh … deploy` and git's hook: only a finished deploy is a
success, and each says so with the same exit status."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hyperdrive import cli
from hyperdrive.access import Identity
from hyperdrive.admiral import AdmiralCommands
from hyperdrive.enter import SHELL, enter_argv
from hyperdrive.errors import HyperdriveError
from hyperdrive.eventlog import JsonlEventLog
from hyperdrive.follow import Outcome, follow, follow_many, outcome_of
from hyperdrive.render import status_text
from hyperdrive.triggers import Trigger

D = "deploy-1"
STARTED = {"event": "DeployStarted", "app": "web", "deploy": D, "sha": "a" * 40}
SWAPPED = {"event": "TrafficSwapped", "app": "web", "deploy": D, "ship": "hd-web-aaaaaaa"}
FINISHED = {"event": "DeployFinished", "app": "web", "deploy": D, "url": "http://h/web/"}
FELL_BACK = [
    {"event": "RolledBack", "app": "web", "deploy": D, "message": "traffic is back on hd-web-0"},
    {"event": "DeployFailed", "app": "web", "deploy": D, "stage": "drain", "message": "fell back"},
]
SUPERSEDED = {"event": "DeploySuperseded", "app": "web", "deploy": D, "by": "deploy-2"}
IGNORED = {"event": "TriggerIgnored", "app": "web", "deploy": D, "message": "not deployed"}

STORIES = [
    ([STARTED, SWAPPED, FINISHED], "DeployFinished", 0),
    ([STARTED, SWAPPED, *FELL_BACK], "DeployFailed", 1),  # a fall-back during the drain
    ([STARTED, SUPERSEDED], "DeploySuperseded", 1),
    ([IGNORED], "TriggerIgnored", 1),
    ([STARTED, SWAPPED], "", 1),  # the stream ended first (the daemon stopped)
]


@pytest.mark.parametrize(("story", "outcome", "code"), STORIES)
def test_only_a_finished_deploy_is_a_success(
    story: list[dict[str, Any]], outcome: str, code: int
) -> None:
    shown: list[str] = []
    got = follow(iter([*story, {"event": "BuildOutput", "deploy": D}]), D, shown.append)  # type: ignore[arg-type]
    assert (got.event, got.exit_code) == (outcome, code)
    assert got.ok is (code == 0)
    assert shown == (story if outcome else [*story, {"event": "BuildOutput", "deploy": D}])


def test_what_to_do_next_when_the_story_goes_on_elsewhere() -> None:
    superseded = outcome_of(D, SUPERSEDED)
    assert superseded == Outcome(D, "DeploySuperseded", "", "deploy-2")
    assert superseded.hint() == "deploy-2 goes on from here: `hd logs -f --deploy deploy-2`"
    assert Outcome(D).hint("ssh … logs") == f"{D} goes on: `ssh … logs -f --deploy {D}`"
    assert outcome_of(D, FINISHED).hint() is None  # type: ignore[union-attr]
    assert outcome_of(D, {**FINISHED, "deploy": "other"}) is None


def test_follow_many_answers_for_those_that_ended_within_the_bound() -> None:
    release = threading.Event()

    def one(deploy: str) -> Outcome:
        if deploy == "slow":
            release.wait(5)
            return Outcome(deploy)
        return Outcome(deploy, "DeployFinished")

    got = follow_many(one, ["a", "slow", "b"], 0.2)
    release.set()
    assert sorted(got) == ["a", "b"]
    assert all(o.ok for o in got.values())


class FakeAdmin:
    """Stands in for AdminClient in `hd deploy`: answers the trigger, replays a story."""

    def __init__(self, story: list[dict[str, Any]]) -> None:
        self.story = story
        self.posted: list[dict[str, Any]] = []

    def post(self, path: str, body: dict[str, Any]) -> dict[str, str]:
        self.posted.append(body)
        return {"deploy": D}

    def events(self, *, deploy: str, follow: bool, history: int | None) -> Iterator[dict]:
        assert (deploy, follow, history) == (D, True, None)
        yield from self.story


@pytest.mark.parametrize(("story", "outcome", "code"), STORIES)
def test_hd_deploy_exits_0_only_when_the_deploy_finished(
    story: list[dict[str, Any]], outcome: str, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    client = FakeAdmin(story)
    assert cli._follow(client, Trigger.deploy("web")) == code  # type: ignore[arg-type]
    assert client.posted == [{"kind": "deploy", "app": "web", "data": {"source": "cli"}}]
    out = capsys.readouterr().out
    assert out.startswith(f"deploy {D} queued")
    if outcome == "DeploySuperseded":
        assert out.rstrip().endswith("`hd logs -f --deploy deploy-2`")
    if outcome == "DeployFailed":
        assert "web deploy: deploy failed at drain: fell back" in out


class FakeProcess:
    """The SSH channel's side AdmiralCommands writes to."""

    def __init__(self, width: int = 0) -> None:
        self.out, self.err = io.BytesIO(), io.BytesIO()
        self.stdout, self.stderr = _Stream(self.out), _Stream(self.err)
        self.width = width

    def get_terminal_type(self) -> str | None:
        return "xterm" if self.width else None

    def get_terminal_size(self) -> tuple[int, int, int, int]:
        return (self.width, 24, 0, 0)


class _Stream:
    def __init__(self, buffer: io.BytesIO) -> None:
        self.write = buffer.write

    async def drain(self) -> None:
        return None


class StorySpool:
    """A spool whose every trigger plays `story` into the event log once it is durable."""

    def __init__(self, log: JsonlEventLog, story: list[dict[str, Any]]) -> None:
        self.log, self.story = log, story
        self.put_ids: list[str] = []

    async def put(self, trigger: Trigger) -> bool:
        self.put_ids.append(trigger.id)
        loop = asyncio.get_running_loop()
        for event in self.story:
            loop.call_soon(self.log.append, {**event, "deploy": trigger.id})
        return True


def status() -> dict[str, Any]:
    app = {"app": "web", "ship": "hd-web-1a2b3c4", "sha": "1a2b3c4", "url": "http://h/web/",
           "since": "2026-12-01 14:02 UTC", "last_deploy": "finished",
           "orders": "pushed here"}  # fmt: skip
    return {"name": "hd", "version": "1", "pid": 1, "ssh": ":2222", "api": ":8421",
            "http_port": 80, "headquarters": "hosted here", "headquarters_sha": None,
            "pending": 0, "inflight": 0, "apps": [app]}  # fmt: skip


@pytest.fixture
async def events(tmp_path: Path) -> Any:
    log = JsonlEventLog(tmp_path / "events.jsonl")
    log.open()
    yield log
    log.close()


@pytest.mark.parametrize(("story", "outcome", "code"), STORIES[:4])
async def test_ssh_deploy_gives_hd_deploys_exit_status(
    events: JsonlEventLog, story: list[dict[str, Any]], outcome: str, code: int
) -> None:
    spool = StorySpool(events, story)
    admiral = AdmiralCommands(events, spool, status, Path("/lxc"))
    process = FakeProcess()
    assert await asyncio.wait_for(admiral(Identity("alice"), ["deploy", "web"], process), 5) == code  # type: ignore[arg-type]
    [trigger_id] = spool.put_ids
    text = process.out.getvalue().decode()
    assert text.startswith(f"deploy {trigger_id} queued\n")
    assert text.count("\n") >= len(story) + 1


async def test_ssh_status_is_hd_status_view(events: JsonlEventLog) -> None:
    admiral = AdmiralCommands(events, StorySpool(events, []), status, Path("/lxc"))
    process = FakeProcess()
    assert await admiral(Identity("alice"), ["status"], process) == 0  # type: ignore[arg-type]
    text = process.out.getvalue().decode()
    assert text == status_text(status(), 80)
    assert "hd-web-1a2b3c4" in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_enter_opens_the_shell_in_the_live_ship_or_says_there_is_none() -> None:
    argv = enter_argv(status(), "web", Path("/var/c"))
    assert argv == ["lxc-attach", "-P", "/var/c", "-n", "hd-web-1a2b3c4", "--", *SHELL]
    with pytest.raises(HyperdriveError, match="api has no live ship to enter"):
        enter_argv(status(), "api", Path("/var/c"))


async def test_ssh_enter_without_a_live_ship_is_a_clear_error(events: JsonlEventLog) -> None:
    admiral = AdmiralCommands(events, StorySpool(events, []), status, Path("/lxc"))
    process = FakeProcess()
    assert await admiral(Identity("alice"), ["enter", "api"], process) == 1  # type: ignore[arg-type]
    assert process.err.getvalue() == b"hyperdrive: api has no live ship to enter\n"
