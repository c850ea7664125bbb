"""The daemon SIGKILLed in each stage of a deploy and started again: ships and nginx serve all
along, the interrupted deploy is finished (its trigger is still in the spool) or rolled back,
and no container is left that the records do not know."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator

import pytest

from tests.conftest import Daemon, wait_for
from tests.e2e.squadron import (
    AppRepo,
    Prober,
    assert_no_orphans,
    http_get,
    make_squadron,
    settled,
    teardown,
    wait_outcome,
)

pytestmark = [pytest.mark.root, pytest.mark.lxc, pytest.mark.nginx, pytest.mark.slow]

STATIC = "web: busybox httpd -f -p $PORT -h /app\n"
# stage -> (the event after which the daemon is killed, extra files that make that stage slow)
STAGES: dict[str, tuple[str, dict[str, str]]] = {
    "fetch": ("DeployStarted", {}),
    "assemble": ("StageFinished", {}),
    "build": ("ShipAssembled", {"bin/build": "#!/bin/sh\nsleep 2\n", "Procfile": STATIC}),
    "start": ("ShipBuilt", {"bin/build": "#!/bin/sh\ntrue\n", "Procfile": STATIC}),
    "health": ("ShipStarted", {"Procfile": f"web: sleep 1.5; {STATIC[5:]}"}),
    "swap": ("ShipHealthy", {}),
    "drain": ("DeployFinished", {}),
}


@pytest.fixture(scope="module")
def squadron(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, AppRepo]]:
    tmp = tmp_path_factory.mktemp("restart")
    d = make_squadron(tmp / "hd", HYPERDRIVE_DRAIN_SECONDS="1")
    try:
        d.start()
        repo = AppRepo(d, "web", tmp / "web")
        outcome = wait_outcome(d, repo.push_trigger(repo.commit({"index.html": "start\n"})))
        assert outcome["event"] == "DeployFinished", outcome
        yield d, repo
    finally:
        teardown(d)


def kill_after(d: Daemon, deploy: str, event: str) -> None:
    """SIGKILL the daemon as soon as `deploy` has emitted `event` (polled every 5 ms)."""

    def seen() -> bool:
        return any(e.get("deploy") == deploy and e["event"] == event for e in d.events())

    wait_for(seen, 60, 0.005, f"{event} of {deploy}")
    assert d.proc is not None
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)


def live_ship(d: Daemon) -> str:
    status = json.loads(d.hd("status", "--json").stdout)
    return next(a["ship"] for a in status["apps"] if a["app"] == "web")


def running(d: Daemon) -> set[str]:
    """Containers that run (lxc-ls --running)."""
    listed = subprocess.run(
        ["lxc-ls", "-P", str(d.var / "containers"), "--running", "-1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return set(listed.stdout.split())


@pytest.mark.parametrize("stage", list(STAGES))
def test_sigkill_in_each_stage(squadron: tuple[Daemon, AppRepo], stage: str) -> None:
    d, repo = squadron
    old = http_get(d.http_port, "/web/")[1]
    new = f"after a kill in {stage}\n"
    event, files = STAGES[stage]
    with Prober(d.http_port, "/web/", step=0.01) as probe:
        deploy = repo.push_trigger(repo.commit({"index.html": new, **files}))
        kill_after(d, deploy, event)
        down = http_get(d.http_port, "/web/")  # the daemon is gone; its app is not
        d.start()
        outcome = wait_outcome(d, deploy, timeout=60)
    assert down[0] == 200, down
    assert probe.failures == [], probe.failures[:5]
    assert probe.bodies <= {old, new}, probe.answers
    assert outcome["event"] == "DeployFinished", outcome
    assert http_get(d.http_port, "/web/") == (200, new)
    settled(d)
    assert {c for c in running(d) if "-web-" in c} == {live_ship(d)}
    assert_no_orphans(d)
