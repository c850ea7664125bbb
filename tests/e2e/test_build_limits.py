"""A build can't starve production: it runs in its ship under the ordered memory limit and at a
low CPU weight, and the app it built runs at the normal weight (read on the host's cgroups)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyperdrive.lxc_async import detect_cgroups
from tests.conftest import Daemon
from tests.e2e.squadron import (
    AppRepo,
    http_get,
    make_squadron,
    push_orders,
    teardown,
    wait_outcome,
)
from tests.integration.lxc_fixtures import host_cpu_idle, host_cpu_weight

pytestmark = [pytest.mark.root, pytest.mark.lxc, pytest.mark.nginx, pytest.mark.slow]

PROCFILE = "web: busybox httpd -f -p $PORT -h /app\n"
# A build that waits (bounded) until the test has looked at its ship.
WAITING_BUILD = """#!/bin/sh
echo "waiting for the test"
i=0
while [ ! -e /hyperdrive/go ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done
echo "released after $i"
"""
HUNGRY_BUILD = "#!/bin/sh\necho allocating\ndd if=/dev/zero of=/dev/null bs=96M count=1\n"


@pytest.fixture
def squadron(tmp_path: Path) -> Iterator[Daemon]:
    d = make_squadron(tmp_path / "hd")
    try:
        d.start()
        yield d
    finally:
        teardown(d)


def weights() -> tuple[str, str]:
    """(a build's, a running ship's) CPU weight as this host's cgroup files show them."""
    return ("102", "1024") if detect_cgroups().cpu == "v1" else ("10", "100")


def ship_cpu_weight(d: Daemon, ship: str) -> str:
    """The CPU weight of the running ship's cgroup, read on the host."""
    argv = ["lxc-info", "-P", str(d.var / "containers"), "-n", ship, "-p", "-H"]
    pid = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=True).stdout
    return host_cpu_weight(int(pid))


def ship_cpu_idle(d: Daemon, ship: str) -> str:
    argv = ["lxc-info", "-P", str(d.var / "containers"), "-n", ship, "-p", "-H"]
    pid = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=True).stdout
    return host_cpu_idle(int(pid))


def test_a_build_runs_on_spare_cpu_only_and_its_app_at_the_normal_weight(
    squadron: Daemon, tmp_path: Path
) -> None:
    d, (_low, normal) = squadron, weights()
    repo = AppRepo(d, "weighed", tmp_path / "weighed")
    files = {"bin/build": WAITING_BUILD, "Procfile": PROCFILE, "index.html": "weighed\n"}
    deploy = repo.push_trigger(repo.commit(files))
    waiting = d.wait_event("BuildOutput", 60, deploy=deploy, message="waiting for the test")
    ship = str(waiting["ship"])
    try:
        assert ship_cpu_idle(d, ship) == "1"  # SCHED_IDLE: every running ship goes first
    finally:
        (d.data / "lxc" / ship / "run" / "go").touch()
    outcome = wait_outcome(d, deploy)
    assert outcome["event"] == "DeployFinished", outcome["message"]
    assert http_get(d.http_port, "/weighed/") == (200, "weighed\n")
    assert ship_cpu_weight(d, ship) == normal
    assert ship_cpu_idle(d, ship) == "0"


def test_a_build_that_outgrows_the_ordered_memory_is_killed_and_says_so(
    squadron: Daemon, tmp_path: Path
) -> None:
    d = squadron
    push_orders(d, tmp_path / "hq", {"hungry": "memory 32M\n"})
    repo = AppRepo(d, "hungry", tmp_path / "hungry")
    sha = repo.commit({"bin/build": HUNGRY_BUILD, "Procfile": PROCFILE})
    outcome = wait_outcome(d, repo.push_trigger(sha))
    assert (outcome["event"], outcome["stage"]) == ("DeployFailed", "build"), outcome
    assert "build was killed for memory (32M ordered)" in outcome["message"], outcome["message"]
