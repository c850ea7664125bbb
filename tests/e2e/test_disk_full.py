"""The data disk full (HYPERDRIVE_DATA on a small tmpfs of the test's own): a push, a webhook
and a build are refused with a message saying so, the running apps keep serving, the spool
and the event log stay whole, and everything works again once room is made."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon, wait_for
from tests.diskfull import fill, tmpfs
from tests.e2e.squadron import Admiral, Prober, admiral_squadron, http_get
from tests.e2e.test_webhook_deploy import forge_app, post, push_payload
from tests.fixtures.webhooks.forge import SECRET, github

pytestmark = [pytest.mark.root, pytest.mark.lxc, pytest.mark.nginx, pytest.mark.slow]
MiB = 1 << 20


@pytest.fixture
def squadron(tmp_path: Path) -> Iterator[tuple[Daemon, Admiral]]:
    with (
        tmpfs(tmp_path / "hd" / "data", "160m", "0711"),
        admiral_squadron(tmp_path, HYPERDRIVE_WEBHOOK_SECRET=SECRET) as pair,
    ):
        yield pair


def webhook(d: Daemon, url: str, before: str, after: str) -> tuple[int, dict]:
    """A fresh delivery of the push (a body of its own: a replay of one body is a duplicate)."""
    obj = json.loads(push_payload(url, before, after))
    obj["hook_id"] = uuid.uuid4().int % 10**9
    headers, body = github(json.dumps(obj).encode())
    return post(d, "github", headers, body)


def whole(path: Path) -> int:
    """Every line of a JSONL file parses; how many there are."""
    data = path.read_bytes()
    assert data.endswith(b"\n"), f"{path.name} ends in a torn line"
    return len([json.loads(line) for line in data.splitlines()])


def outcome_of(d: Daemon, sha: str, app: str = "site") -> dict | None:
    finished = {"DeployFinished", "DeployFailed"}
    found = [e for e in d.events() if e["event"] in finished and e.get("sha") == sha]
    return found[-1] if found and found[-1].get("app") == app else None


def test_a_full_data_disk_refuses_work_clearly_and_keeps_serving(
    squadron: tuple[Daemon, Admiral], tmp_path: Path
) -> None:
    d, admiral = squadron
    url, work, v1 = forge_app(d, admiral, tmp_path, "v1\n")
    pushed = admiral.working_copy(tmp_path / "pushed", "pushed")
    admiral.commit(pushed, {"index.html": "pushed one\n"})
    admiral.git("push", "hyperdrive", "master", cwd=pushed)
    wait_for(lambda: http_get(d.http_port, "/pushed/") == (200, "pushed one\n"), 60, 0.2, "push")
    admiral.commit(work, {"index.html": "v2\n"})
    admiral.git("push", "-q", "origin", "master", cwd=work)
    v2 = admiral.git("rev-parse", "HEAD", cwd=work).stdout.strip()
    admiral.commit(pushed, {"index.html": "pushed two\n"})

    with Prober(d.http_port, "/site/", step=0.02) as probe:
        filler = fill(d.data, leave=32 * MiB)  # room for triggers, not for work
        refused = admiral.git("push", "hyperdrive", "master", cwd=pushed, check=False)
        assert refused.returncode != 0
        assert "push refused: the data disk is full" in refused.stderr, refused.stderr
        status, answer = webhook(d, url, v1, v2)
        assert status == 202, answer  # the trigger fits; the build it asks for does not
        failed = wait_for(lambda: outcome_of(d, v2), 30, 0.1, "the build refused")
        assert failed["event"] == "DeployFailed", failed
        assert failed["stage"] == "fetch", failed
        assert "nothing built: the data disk is full" in failed["message"]

        filler = fill(d.data, leave=0)  # not even a trigger fits now
        status, answer = webhook(d, url, v1, v2)
        assert status == 507, answer
        assert "the data disk is full" in answer["raw"], answer
        deploy = d.hd("deploy", "site", check=False)
        assert deploy.returncode != 0
        assert "the data disk is full" in deploy.stderr, deploy.stderr
        assert http_get(d.http_port, "/pushed/") == (200, "pushed one\n")
        filler.unlink()
    assert probe.failures == [], probe.failures
    assert probe.bodies == {"v1\n"}

    journal, events = d.data / "spool" / "journal.jsonl", d.data / "events.jsonl"
    assert whole(journal) > 0
    assert whole(events) > 0
    status, answer = webhook(d, url, v1, v2)
    assert status == 202, answer
    wait_for(lambda: http_get(d.http_port, "/site/") == (200, "v2\n"), 60, 0.2, "v2 served")
    admiral.git("push", "hyperdrive", "master", cwd=pushed)
    wait_for(lambda: http_get(d.http_port, "/pushed/") == (200, "pushed two\n"), 60, 0.2, "two")
    whole(journal)
    whole(events)
