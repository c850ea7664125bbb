"""The post-receive hook: ref updates → spool triggers, and what the pusher sees."""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from dulwich.refs import Ref
from dulwich.repo import Repo

from hyperdrive.errors import DaemonUnavailable, HyperdriveError
from hyperdrive.gitserver import package_hooks
from hyperdrive.headquarters.orders import parse_orders
from hyperdrive.hooks import post_receive as hook
from hyperdrive.pipeline.plan import not_deployed
from hyperdrive.render import pushed
from hyperdrive.triggers import RefUpdate, Trigger

A, B, ZERO = "a" * 40, "b" * 40, "0" * 40


def incoming(spool: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((spool / "incoming").glob("*.json"))]


def test_parse_updates_keeps_branches_and_tags_only() -> None:
    out = io.StringIO()
    lines = [f"{A} {B} refs/heads/master\n", f"{ZERO} {A} refs/tags/v1\n", "garbage\n",
             f"{A} {B} refs/notes/commits\n", f"{A} {B} refs/heads/../x\n"]  # fmt: skip
    updates = hook.parse_updates(lines, out)
    assert updates == [
        RefUpdate("refs/heads/master", A, B), RefUpdate("refs/tags/v1", ZERO, A)
    ]  # fmt: skip
    assert out.getvalue().count("ignored") == 2


def test_a_branch_name_hyperdrive_cannot_deploy_is_said_plainly() -> None:
    out = io.StringIO()
    assert hook.parse_updates([f"{ZERO} {A} refs/heads/f\u00ebature\n"], out) == []
    assert "ASCII letters, digits and ._/+-" in out.getvalue()


def test_triggers_for_apps_and_headquarters() -> None:
    update = RefUpdate("refs/heads/master", A, B)
    app = hook.make_trigger("web", "alice", update)
    assert (app.kind, app.app, app.id.startswith("push-")) == ("push", "web", True)
    assert app.data == {"ref": "refs/heads/master", "old": A, "new": B, "admiral": "alice"}
    hq = hook.make_trigger("headquarters", "alice", update)
    assert (hq.kind, hq.app) == ("hq", None)


def test_push_options() -> None:
    env = {"GIT_PUSH_OPTION_COUNT": "2", "GIT_PUSH_OPTION_0": "x", "GIT_PUSH_OPTION_1": "nowait"}
    assert hook.push_options(env) == ["x", "nowait"]
    assert hook.push_options({}) == []
    assert hook.push_options({"GIT_PUSH_OPTION_COUNT": "many"}) == []


def env_for(spool: Path, **extra: str) -> dict[str, str]:
    return {"HYPERDRIVE_SPOOL": str(spool), "HYPERDRIVE_APP": "web",
            "HYPERDRIVE_ADMIRAL": "alice", **extra}  # fmt: skip


def test_run_writes_one_trigger_per_ref_then_says_the_daemon_is_away(tmp_path: Path) -> None:
    out = io.StringIO()
    lines = [f"{A} {B} refs/heads/master\n", f"{B} {ZERO} refs/heads/old\n"]
    env = env_for(tmp_path, HYPERDRIVE_SOCKET=str(tmp_path / "absent.sock"))
    assert hook.run(lines, out, env) == 0
    written = incoming(tmp_path)
    assert {(t["data"]["ref"], t["data"]["new"]) for t in written} == {
        ("refs/heads/master", B), ("refs/heads/old", ZERO)
    }  # fmt: skip
    text = out.getvalue()
    assert f"queued {B[:7]} on refs/heads/master for web" in text
    assert "queued deletion of refs/heads/old for web" in text
    assert text.endswith(f"-----> {hook.QUEUED}\n")


def test_run_with_nowait_only_queues(tmp_path: Path) -> None:
    out = io.StringIO()
    env = env_for(tmp_path, GIT_PUSH_OPTION_COUNT="1", GIT_PUSH_OPTION_0="nowait")
    assert hook.run([f"{A} {B} refs/heads/master\n"], out, env) == 0
    assert len(incoming(tmp_path)) == 1
    assert hook.QUEUED not in out.getvalue()


def test_run_without_a_spool_or_with_a_bad_app_queues_nothing_and_exits_0(
    tmp_path: Path,
) -> None:
    out = io.StringIO()
    assert hook.run([f"{A} {B} refs/heads/master\n"], out, {}) == 0
    assert "HYPERDRIVE_SPOOL is not set" in out.getvalue()
    env = env_for(tmp_path, HYPERDRIVE_APP="../etc")
    assert hook.run([f"{A} {B} refs/heads/master\n"], out, env) == 0
    assert "could not queue the deploy: invalid app name" in out.getvalue()
    assert not (tmp_path / "incoming").exists()


class FakeClient:
    """Stands in for AdminClient: a canned event stream per deploy id."""

    def __init__(self, events: list[dict[str, Any]] | None = None, error: bool = False):
        self.script = events or []
        self.error = error
        self.asked: list[str] = []

    def get(self, path: str) -> Any:
        raise HyperdriveError("this squadron is not in a fleet")  # alone: no `[sq]` lines

    def events(self, *, deploy: str, follow: bool, history: int | None) -> Iterator[dict[str, Any]]:
        assert follow
        assert history is None, "a follower reads all of its deploy's events (from its first)"
        self.asked.append(deploy)
        if self.error:
            raise DaemonUnavailable("hyperdrive is not running")
        for event in self.script:
            if event.get("block"):
                threading.Event().wait(1)
            yield {**event, "deploy": deploy}


def trigger(tid: str = "push-1") -> Trigger:
    return replace(Trigger.push("web", RefUpdate("refs/heads/master", A, B), "alice"), id=tid)


def test_follow_stops_at_the_terminal_event() -> None:
    client = FakeClient([{"event": "DeployStarted", "app": "web", "sha": B},
                         {"event": "DeployFailed", "app": "web", "stage": "build",
                          "message": "exit 1"},
                         {"event": "BuildOutput", "message": "never shown"}])  # fmt: skip
    out = io.StringIO()
    assert hook.follow([trigger("p1"), trigger("p2")], client, out, 5) is True  # type: ignore[arg-type]
    assert sorted(client.asked) == ["p1", "p2"]
    text = out.getvalue()
    assert text.count("deploy failed at build: exit 1") == 2
    assert "never shown" not in text


def test_follow_gives_up_after_the_bound() -> None:
    client = FakeClient([{"event": "DeployStarted", "app": "web", "sha": B}, {"block": True}])
    out = io.StringIO()
    assert hook.follow([trigger()], client, out, 0.2) is True  # type: ignore[arg-type]
    assert out.getvalue().endswith("still deploying; follow it with `hd logs -f`\n")


def test_follow_when_the_daemon_went_away() -> None:
    out = io.StringIO()
    assert hook.follow([trigger()], FakeClient(error=True), out, 5) is True  # type: ignore[arg-type]
    assert out.getvalue() == f"-----> {hook.QUEUED}\n"


class GoneOut(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_follow_notices_a_pusher_who_hung_up() -> None:
    client = FakeClient([{"event": "DeployStarted", "app": "web", "sha": B},
                         {"event": "DeployFinished", "app": "web"}])  # fmt: skip
    assert hook.follow([trigger()], client, GoneOut(), 5) is False  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("event", "shown"),
    [
        ({"event": "PushReceived"}, None),
        ({"event": "DeployStarted", "app": "web", "sha": B}, f"-----> Deploying web at {B[:7]}"),
        ({"event": "BuildOutput", "message": "a\nb\x1b[2J"}, "       a\n       b[2J"),
        ({"event": "DeployFinished", "app": "web", "ms": 3200, "url": "http://h/web/"},
         "-----> web deployed (3.2 s): http://h/web/"),
        ({"event": "DeployFailed", "app": "web", "stage": "health",
          "message": "no answer; hd-web-aaaaaaa keeps serving"},
         " !     web: deploy failed at health: no answer; hd-web-aaaaaaa keeps serving"),
        ({"event": "DeploySuperseded", "by": "push-2"},
         "-----> superseded by a newer deploy (push-2)"),
        ({"event": "ShipHealthy", "ship": "hd-web-bbbbbbb", "message": "answered", "ms": 1500},
         "-----> answered (1.5 s)"),
        ({"event": "TrafficSwapped", "ship": "hd-web-bbbbbbb", "ms": 12},
         "-----> Traffic swapped hd-web-bbbbbbb (12 ms)"),
        ({"event": "AppRetired", "app": "web"}, "-----> App retired web"),
    ],
)  # fmt: skip
def test_what_the_pusher_sees(event: dict[str, Any], shown: str | None) -> None:
    assert pushed(event) == shown


def test_the_hook_program_exits_0_quietly_when_the_pusher_is_gone(tmp_path: Path) -> None:
    """githooks/post-receive, run the way git runs it, writing into a pipe nobody reads."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {**env_for(tmp_path), "HYPERDRIVE_PYTHON": sys.executable, "PATH": os.environ["PATH"]}
    done = subprocess.run(
        [str(package_hooks() / "post-receive")], input=f"{A} {B} refs/heads/master\n".encode(),
        stdout=write_end, stderr=subprocess.PIPE, env=env, cwd=tmp_path, timeout=30, check=False,
    )  # fmt: skip
    os.close(write_end)
    assert (done.returncode, done.stderr) == (0, b"")
    assert len(incoming(tmp_path)) == 1


def test_the_hook_follows_the_deploy_at_a_lower_priority_than_it_queued_it(tmp_path: Path) -> None:
    """The trigger is written at the pusher's priority; the follower that connects to the
    daemon afterwards runs FOLLOW_NICE lower, so it never takes CPU from the deploy."""
    path = tmp_path / "api.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    listener.settimeout(30)
    env = {**env_for(tmp_path), "HYPERDRIVE_PYTHON": sys.executable, "PATH": os.environ["PATH"]}
    env["HYPERDRIVE_SOCKET"] = str(path)
    refs = tmp_path / "refs"
    refs.write_text(f"{A} {B} refs/heads/master\n")
    with refs.open("rb") as stdin:
        hook_program = subprocess.Popen(
            [str(package_hooks() / "post-receive")], stdin=stdin,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path,
        )  # fmt: skip
    try:
        conn, _ = listener.accept()
        listener.close()  # its next calls find no daemon: it says the deploy is queued
        with conn:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid = struct.unpack("3i", creds)[0]
            stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            assert len(incoming(tmp_path)) == 1  # queued before it stepped aside
        assert int(stat[16]) == min(19, os.nice(0) + hook.FOLLOW_NICE)
        out, _ = hook_program.communicate(timeout=30)
        assert (hook_program.returncode, b"queued" in out) == (0, True)
    finally:
        if hook_program.poll() is None:
            hook_program.kill()
            hook_program.communicate(timeout=30)
        listener.close()


def bare_repo(path: Path, head: str, branches: tuple[str, ...] = ()) -> Path:
    """A bare repo whose HEAD names `head` and whose `branches` exist (refs only)."""
    repo = Repo.init_bare(str(path), mkdir=True)
    with repo:
        repo.refs.set_symbolic_ref(Ref(b"HEAD"), Ref(f"refs/heads/{head}".encode()))
        for branch in branches:
            repo.refs[Ref(f"refs/heads/{branch}".encode())] = A.encode()
    return path


@pytest.mark.parametrize(
    ("head", "branches", "pushed", "after"),
    [
        ("main", ("master",), ["refs/tags/v1", "refs/heads/master"], "master"),  # first push
        ("main", ("main", "master"), ["refs/heads/master"], "main"),  # HEAD's branch exists
        ("master", ("main",), ["refs/heads/main"], "main"),  # made before this rule: repaired
        ("main", (), ["refs/tags/v1"], "main"),  # no branch pushed: HEAD stays
    ],
)
def test_a_repo_takes_the_first_branch_pushed_as_its_default(
    tmp_path: Path, head: str, branches: tuple[str, ...], pushed: list[str], after: str
) -> None:
    repo = bare_repo(tmp_path / "web.git", head, branches)
    env = {**env_for(tmp_path / "spool"), "GIT_DIR": str(repo)}
    assert hook.run([f"{ZERO} {B} {ref}\n" for ref in pushed], io.StringIO(), env) == 0
    assert (repo / "HEAD").read_text() == f"ref: refs/heads/{after}\n"


def test_a_push_to_another_branch_is_told_what_deploys_and_how_to_change_it() -> None:
    hosted = parse_orders("", "web/orders")
    message = not_deployed("web", "refs/heads/feature", "main", hosted)
    assert message == (
        "feature stored, not deployed: web deploys main (its default branch: the first branch "
        "pushed); to deploy feature, push it as main (`git push hyperdrive feature:main`) or "
        "name it in headquarters' web/orders: `branch feature`"
    )
    event = {"event": "TriggerIgnored", "app": "web", "message": message}
    assert pushed(event) == f"-----> {message}"
    remote = parse_orders("autodeploy https://x/y.git#trunk", "web/orders")
    assert not_deployed("web", "refs/tags/v2", "trunk", remote) == (
        "v2 pushed, not deployed: web deploys trunk (as its orders say); to deploy v2, "
        "name it in headquarters' web/orders instead of trunk"
    )


def test_a_superseded_push_ends_naming_the_deploy_that_took_over() -> None:
    client = FakeClient([{"event": "DeployStarted", "app": "web", "sha": B},
                         {"event": "DeploySuperseded", "app": "web", "by": "push-2"},
                         {"event": "DeployFinished", "app": "web"}])  # fmt: skip
    out = io.StringIO()
    assert hook.follow([trigger()], client, out, 5) is True  # type: ignore[arg-type]
    assert out.getvalue().splitlines()[-2:] == [
        "-----> superseded by a newer deploy (push-2)",
        "-----> push-2 goes on from here: `ssh … logs -f --deploy push-2`",
    ]


def test_a_fall_back_during_the_drain_is_told_as_a_failure() -> None:
    client = FakeClient([{"event": "TrafficSwapped", "app": "web", "ship": "hd-web-bbbbbbb"},
                         {"event": "RolledBack", "app": "web", "message": "back on hd-web-a"},
                         {"event": "DeployFailed", "app": "web", "stage": "drain",
                          "message": "the new ship stopped answering"},
                         {"event": "DeployFinished", "app": "web"}])  # fmt: skip
    out = io.StringIO()
    assert hook.follow([trigger()], client, out, 5) is True  # type: ignore[arg-type]
    assert out.getvalue().splitlines()[-2:] == [
        " !     web: back on hd-web-a",
        " !     web: deploy failed at drain: the new ship stopped answering",
    ]
