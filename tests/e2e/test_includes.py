"""`$DATA/includes/*.env` for push-only users: an app pushed to a squadron whose HQ has no
commit gets the includes in its env, and an includes change redeploys it — with the real
daemon, git and ssh clients, LXC (busybox ships) and nginx."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon, wait_for
from tests.e2e.squadron import Admiral, admiral_squadron, http_get

pytestmark = [pytest.mark.root, pytest.mark.lxc, pytest.mark.nginx, pytest.mark.slow]

# the build writes the env it sees into the page busybox httpd serves
BUILD = '#!/bin/sh\nmkdir -p public\necho "greeting: ${GREETING:-unset}" > public/index.html\n'
PROCFILE = 'web: busybox httpd -f -p "$PORT" -h /app/public\n'


@pytest.fixture
def squadron(tmp_path: Path) -> Iterator[tuple[Daemon, Admiral]]:
    with admiral_squadron(tmp_path) as squadron:
        yield squadron


def answers(d: Daemon) -> tuple[int, str]:
    try:
        return http_get(d.http_port, "/pushed/")
    except OSError as err:
        return 0, str(err)


def serves(d: Daemon, text: str) -> None:
    wait_for(
        lambda: answers(d) == (200, text),
        60,
        0.2,
        f"/pushed/ to serve {text!r}; log: {d.log()}",
    )


def test_includes_reach_an_app_pushed_with_no_hq_commit_and_a_change_redeploys_it(
    squadron: tuple[Daemon, Admiral], tmp_path: Path
) -> None:
    d, admiral = squadron
    includes = d.data / "includes"
    includes.mkdir(parents=True, exist_ok=True)
    (includes / "greeting.env").write_text("GREETING=hello\n")
    work = admiral.working_copy(tmp_path / "pushed", "pushed")
    (work / "bin").mkdir()
    (work / "bin" / "build").write_text(BUILD)
    os.chmod(work / "bin" / "build", 0o755)
    admiral.commit(work, {"Procfile": PROCFILE})
    admiral.git("push", "hyperdrive", "HEAD:master", cwd=work)
    serves(d, "greeting: hello\n")
    assert json.loads(d.hd("status", "--json").stdout)["headquarters_sha"] is None, "no HQ"

    (includes / "greeting.env").write_text("GREETING=goodbye\n")
    changed = d.wait_event("OrdersChanged", timeout=30, app="pushed")
    assert changed["message"] == "pushed: env changed (GREETING changed)"
    serves(d, "greeting: goodbye\n")
    queued = d.wait_event("DeployQueued", timeout=10, app="pushed", source="hq")
    assert str(queued["deploy"]).startswith("env-"), queued
    d.wait_event("DeployFinished", timeout=30, deploy=queued["deploy"])  # after its drain
    redeploys = [
        e
        for e in d.events()
        if e.get("event") == "DeployFinished" and str(e.get("deploy")).startswith("env-")
    ]
    assert [e["app"] for e in redeploys] == ["pushed"]
