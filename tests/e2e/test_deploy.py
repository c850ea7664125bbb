"""Deploys as a user sees them: a push becomes new content served through nginx, and every
failure leaves the running version serving."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon
from tests.e2e.squadron import AppRepo, http_get, make_squadron, teardown, wait_outcome

pytestmark = [pytest.mark.root, pytest.mark.lxc, pytest.mark.nginx, pytest.mark.slow]

STATIC = {"index.html": "version one\n"}


@pytest.fixture
def squadron(tmp_path: Path) -> Iterator[Daemon]:
    d = make_squadron(tmp_path / "hd")
    try:
        d.start()
        yield d
    finally:
        teardown(d)


def served(d: Daemon, app: str) -> tuple[int, str]:
    return http_get(d.http_port, f"/{app}/")


def test_push_deploys_redeploys_and_rolls_back(squadron: Daemon, tmp_path: Path) -> None:
    repo = AppRepo(squadron, "web", tmp_path / "web")
    first = repo.commit(STATIC)
    outcome = wait_outcome(squadron, repo.push_trigger(first))
    assert outcome["event"] == "DeployFinished", outcome
    assert served(squadron, "web") == (200, "version one\n")
    names = [e["event"] for e in squadron.events() if e.get("deploy") == outcome["deploy"]]
    for stage in (
        "PushReceived",
        "DeployQueued",
        "DeployStarted",
        "ShipAssembled",
        "ShipStarted",
        "ShipHealthy",
        "TrafficSwapped",
        "DeployFinished",
    ):
        assert stage in names

    second = repo.commit({"index.html": "version two\n"})
    outcome = wait_outcome(squadron, repo.push_trigger(second))
    assert outcome["event"] == "DeployFinished", outcome
    assert served(squadron, "web") == (200, "version two\n")

    status = json.loads(squadron.hd("status", "--json").stdout)
    row = next(a for a in status["apps"] if a["app"] == "web")
    assert row["sha"] == second[:7]


def test_broken_build_keeps_old_ship_serving(squadron: Daemon, tmp_path: Path) -> None:
    repo = AppRepo(squadron, "web", tmp_path / "web")
    wait_outcome(squadron, repo.push_trigger(repo.commit(STATIC)))
    bad = repo.commit(
        {
            "bin/build": "#!/bin/sh\necho compiling\nexit 3\n",
            "Procfile": "web: busybox httpd -f -p $PORT -h /app\n",
        }
    )
    outcome = wait_outcome(squadron, repo.push_trigger(bad))
    assert outcome["event"] == "DeployFailed"
    assert outcome["stage"] == "build"
    assert "keeps serving" in outcome["message"]
    assert served(squadron, "web") == (200, "version one\n")
    assert "compiling" in Path(outcome["log"]).read_text()


def test_push_to_another_branch_is_ignored(squadron: Daemon, tmp_path: Path) -> None:
    repo = AppRepo(squadron, "web", tmp_path / "web")
    sha = repo.commit(STATIC)
    outcome = wait_outcome(squadron, repo.push_trigger(sha, ref="refs/heads/feature"))
    assert outcome["event"] == "TriggerIgnored"
    assert "deploys master" in outcome["message"]
