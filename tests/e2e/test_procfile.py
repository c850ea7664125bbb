"""The whole Procfile on the busybox hull: release before the swap, workers under supervision,
cron on its schedule, the app's own output, `hd ps` and `hd run`."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

from tests.conftest import Daemon
from tests.e2e.squadron import (
    AppRepo,
    admiral_squadron,
    containers,
    http_get,
    make_squadron,
    teardown,
    wait_outcome,
)

pytestmark = [pytest.mark.root, pytest.mark.lxc, pytest.mark.nginx, pytest.mark.slow]

WEB = "web: busybox httpd -f -p $PORT -h /app\n"
HEARTBEAT = "worker: while :; do echo $$ > /app/heartbeat; echo beat $$; sleep 0.2; done\n"


@pytest.fixture
def squadron(tmp_path: Path) -> Iterator[Daemon]:
    d = make_squadron(tmp_path / "hd")
    try:
        d.start()
        yield d
    finally:
        teardown(d)


def deploy(d: Daemon, repo: AppRepo, files: dict[str, str]) -> dict:
    return wait_outcome(d, repo.push_trigger(repo.commit(files)))


def until(what: Callable[[], object], seconds: float, step: float = 0.2) -> object:
    """What `what` returns once it is true, within `seconds`; AssertionError after that."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if found := what():
            return found
        time.sleep(step)
    raise AssertionError(f"not within {seconds:g} s: {what}")


def live_ship(d: Daemon, app: str) -> str:
    record = json.loads((d.data / "records" / "apps" / f"{app}.json").read_text())
    return str(record["live"])


def attach(d: Daemon, ship: str, *argv: str) -> subprocess.CompletedProcess[str]:
    lxcpath = str(d.var / "containers")
    return subprocess.run(
        ["lxc-attach", "-P", lxcpath, "-n", ship, "--", *argv],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_release_writes_what_the_new_web_process_serves(squadron: Daemon, tmp_path: Path) -> None:
    repo = AppRepo(squadron, "rel", tmp_path / "rel")
    procfile = WEB + "release: echo migrated on $PORT > /app/marker.txt; echo release ran\n"
    outcome = deploy(squadron, repo, {"Procfile": procfile, "index.html": "one\n"})
    assert outcome["event"] == "DeployFinished", outcome
    status, body = http_get(squadron.http_port, "/rel/marker.txt")
    assert status == 200
    assert body == "migrated on 3000\n"  # with the app's env (PORT)
    story = [e for e in squadron.events() if e.get("deploy") == outcome["deploy"]]
    names = [e["event"] for e in story]
    assert (
        names.index("ReleaseFinished") < names.index("ShipHealthy") < names.index("DeployFinished")
    )
    assert any(e.get("message") == "release ran" for e in story if e["event"] == "BuildOutput")


def test_a_failing_release_keeps_the_old_ship_serving(squadron: Daemon, tmp_path: Path) -> None:
    repo = AppRepo(squadron, "relbad", tmp_path / "relbad")
    assert deploy(squadron, repo, {"Procfile": WEB, "index.html": "one\n"})["event"] == (
        "DeployFinished"
    )
    bad = WEB + "release: echo cannot migrate; exit 4\n"
    outcome = deploy(squadron, repo, {"Procfile": bad, "index.html": "two\n"})
    assert outcome["event"] == "DeployFailed", outcome
    assert outcome["stage"] == "release", outcome
    assert "exited 4" in outcome["message"], outcome
    assert "cannot migrate" in outcome["message"], outcome
    assert http_get(squadron.http_port, "/relbad/") == (200, "one\n")


def test_a_bad_procfile_line_is_refused_and_the_old_ship_serves(
    squadron: Daemon, tmp_path: Path
) -> None:
    repo = AppRepo(squadron, "badline", tmp_path / "badline")
    assert deploy(squadron, repo, {"Procfile": WEB, "index.html": "one\n"})["event"] == (
        "DeployFinished"
    )
    outcome = deploy(squadron, repo, {"Procfile": WEB + "worker ./work\n", "index.html": "2\n"})
    assert outcome["event"] == "DeployFailed", outcome
    assert "Procfile line 2" in outcome["message"], outcome
    assert http_get(squadron.http_port, "/badline/") == (200, "one\n")


def test_a_worker_killed_from_outside_comes_back(squadron: Daemon, tmp_path: Path) -> None:
    repo = AppRepo(squadron, "wrk", tmp_path / "wrk")
    outcome = deploy(squadron, repo, {"Procfile": WEB + HEARTBEAT, "index.html": "one\n"})
    assert outcome["event"] == "DeployFinished", outcome
    ship = live_ship(squadron, "wrk")
    heartbeat = squadron.data / "lxc" / ship / "app" / "heartbeat"
    first = str(until(lambda: heartbeat.is_file() and heartbeat.read_text().strip(), 10))
    killed = attach(squadron, ship, "kill", "-KILL", first)
    assert killed.returncode == 0, killed.stderr

    def another() -> str:
        beat = heartbeat.read_text().strip()
        return beat if beat and beat != first else ""

    assert until(another, 15) != first
    exited = until(lambda: [e for e in squadron.events() if e["event"] == "ProcessExited"], 15)
    assert isinstance(exited, list)
    assert exited[0]["process"] == "worker", exited
    assert exited[0]["code"] == 137, exited
    assert "beat" in exited[0]["message"], exited


def test_a_worker_only_app_has_no_route_and_runs(squadron: Daemon, tmp_path: Path) -> None:
    repo = AppRepo(squadron, "bot", tmp_path / "bot")
    outcome = deploy(squadron, repo, {"Procfile": HEARTBEAT})
    assert outcome["event"] == "DeployFinished", outcome
    ship = live_ship(squadron, "bot")
    heartbeat = squadron.data / "lxc" / ship / "app" / "heartbeat"
    assert until(heartbeat.is_file, 10)
    assert http_get(squadron.http_port, "/bot/")[0] == 404


def test_a_worker_that_dies_before_the_swap_fails_the_deploy(
    squadron: Daemon, tmp_path: Path
) -> None:
    repo = AppRepo(squadron, "wdie", tmp_path / "wdie")
    assert deploy(squadron, repo, {"Procfile": WEB, "index.html": "one\n"})["event"] == (
        "DeployFinished"
    )
    dying = WEB + "worker: echo no queue to read; exit 3\n"
    outcome = deploy(squadron, repo, {"Procfile": dying, "index.html": "two\n"})
    assert outcome["event"] == "DeployFailed", outcome
    assert "process `worker` exited 3" in outcome["message"], outcome
    assert "no queue to read" in outcome["message"], outcome
    assert http_get(squadron.http_port, "/wdie/") == (200, "one\n")


def test_a_cron_job_runs_within_its_minute(squadron: Daemon, tmp_path: Path) -> None:
    repo = AppRepo(squadron, "tick", tmp_path / "tick")
    procfile = WEB + "cron: * * * * * echo ticked >> /app/ticks; echo tick said\n"
    outcome = deploy(squadron, repo, {"Procfile": procfile, "index.html": "one\n"})
    assert outcome["event"] == "DeployFinished", outcome

    def ran() -> list[dict]:
        return [e for e in squadron.events() if e["event"] == "CronRan"]

    runs = until(ran, 75, step=1)  # due at the next minute: at most 60 s and a little
    assert isinstance(runs, list)
    assert runs[0]["app"] == "tick", runs
    assert runs[0]["code"] == 0, runs
    assert runs[0]["ms"] >= 0, runs
    assert "tick said" in runs[0]["message"], runs
    assert http_get(squadron.http_port, "/tick/ticks") == (200, "ticked\n")


def test_hd_logs_app_follows_what_the_app_prints(squadron: Daemon, tmp_path: Path) -> None:
    repo = AppRepo(squadron, "chatty", tmp_path / "chatty")
    worker = "worker: echo $VERSION says hello; sleep 2; echo $VERSION says later; exec sleep 600\n"
    files = {"Procfile": WEB + worker.replace("$VERSION", "one"), "index.html": "one\n"}
    outcome = deploy(squadron, repo, files)
    assert outcome["event"] == "DeployFinished", outcome
    argv = [sys.executable, "-m", "hyperdrive", "logs", "chatty", "--app", "-f"]
    follower = subprocess.Popen(argv, env=squadron.env, stdout=subprocess.PIPE, text=True)
    try:
        assert follower.stdout is not None
        seen = read_until(follower.stdout, "worker | one says later")
        assert "worker | one says hello" in seen, seen
        files = {"Procfile": WEB + worker.replace("$VERSION", "two"), "index.html": "two\n"}
        assert deploy(squadron, repo, files)["event"] == "DeployFinished"
        seen = read_until(follower.stdout, "worker | two says later")  # the next live ship's
        assert any(line.startswith("hyperdrive | now following ") for line in seen), seen
    finally:
        follower.kill()
        follower.wait(10)
        if follower.stdout is not None:
            follower.stdout.close()
    once = squadron.hd("logs", "chatty", "--app", "-n", "1")
    assert once.stdout.splitlines() == ["worker | two says later"], once.stdout


def read_until(stream: IO[str], wanted: str, seconds: float = 30) -> list[str]:
    """Lines read from `stream` up to `wanted` (AssertionError if it never comes)."""
    seen: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and wanted not in seen:
        line = stream.readline()
        if not line:
            break
        seen.append(line.rstrip("\n"))
    assert wanted in seen, seen
    return seen


def test_hd_ps_shows_each_process_and_cron_job(squadron: Daemon, tmp_path: Path) -> None:
    repo = AppRepo(squadron, "busy", tmp_path / "busy")
    procfile = WEB + HEARTBEAT + "cron_daily: 0 3 * * * echo nightly\n"
    assert deploy(squadron, repo, {"Procfile": procfile, "index.html": "1\n"})["event"] == (
        "DeployFinished"
    )
    ps = json.loads(squadron.hd("ps", "busy", "--json").stdout)["processes"]
    rows = {row["process"]: row for row in ps}
    assert set(rows) == {"web", "worker", "cron_daily"}, ps
    assert rows["web"]["state"] == rows["worker"]["state"] == "running", ps
    assert rows["worker"]["restarts"] == 0, ps
    assert rows["worker"]["uptime_s"] >= 0, ps
    assert rows["cron_daily"]["schedule"] == "0 3 * * *", ps
    assert rows["cron_daily"]["next"].endswith("T03:00"), ps
    table = squadron.hd("ps").stdout
    assert "worker" in table
    assert "running" in table


def test_hd_run_runs_in_a_one_off_ship_with_the_apps_env(squadron: Daemon, tmp_path: Path) -> None:
    repo = AppRepo(squadron, "oneoff", tmp_path / "oneoff")
    assert deploy(squadron, repo, {"Procfile": WEB, "index.html": "one\n"})["event"] == (
        "DeployFinished"
    )
    before = containers(squadron)
    ran = squadron.hd(
        "run",
        "oneoff",
        "--",
        "echo port $PORT in $(pwd); hostname > /app/index.html; exit 7",
        check=False,
        timeout=120,
    )
    assert ran.returncode == 7, ran.stdout + ran.stderr
    assert "port 3000 in /app" in ran.stdout, ran.stdout
    assert containers(squadron) == before  # the one-off ship is gone
    assert http_get(squadron.http_port, "/oneoff/") == (200, "one\n")  # the live /app untouched


def test_ps_logs_and_run_over_ssh(tmp_path: Path) -> None:
    with admiral_squadron(tmp_path) as (d, admiral):
        repo = AppRepo(d, "sshy", tmp_path / "sshy")
        procfile = WEB + "worker: echo ready to work; exec sleep 600\n"
        outcome = deploy(d, repo, {"Procfile": procfile, "index.html": "one\n"})
        assert outcome["event"] == "DeployFinished", outcome
        ps = json.loads(admiral.ssh("ps", "sshy", "--json").stdout)["processes"]
        assert {row["process"] for row in ps} == {"web", "worker"}, ps
        assert "worker" in admiral.ssh("ps").stdout
        output = str(until(lambda: admiral.ssh("logs", "sshy", "--app").stdout, 10))
        assert "worker | ready to work" in output, output
        ran = admiral.ssh(
            "run", "sshy", "--", "echo", "in", "'$HOME'", ";", "exit", "5", check=False
        )
        assert ran.returncode == 5, ran.stdout + ran.stderr
        assert "in /app" in ran.stdout, ran.stdout
        base = [*shlex.split(admiral.ssh_command()), "-tt", "-p", str(d.ssh_port), "git@127.0.0.1"]
        tty = subprocess.run(
            [*base, "run", "sshy", "--", "tty", ";", "exit", "3"],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        assert tty.returncode == 3, tty.stdout + tty.stderr
        assert "/dev/" in tty.stdout, tty.stdout  # the command had a terminal


def test_a_retired_ships_worker_gets_sigterm_and_time_to_finish(
    squadron: Daemon, tmp_path: Path
) -> None:
    repo = AppRepo(squadron, "grace", tmp_path / "grace")
    worker = (
        "worker: trap 'sleep 1; echo finished > /app/bye; exit 0' TERM; "
        "while :; do sleep 0.2; done\n"
    )
    outcome = deploy(squadron, repo, {"Procfile": WEB + worker, "index.html": "one\n"})
    assert outcome["event"] == "DeployFinished", outcome
    old = live_ship(squadron, "grace")
    outcome = deploy(squadron, repo, {"Procfile": WEB + worker, "index.html": "two\n"})
    assert outcome["event"] == "DeployFinished", outcome
    bye = squadron.data / "lxc" / old / "app" / "bye"
    assert until(bye.is_file, 15)
    assert bye.read_text() == "finished\n"  # it ran its SIGTERM handler to the end


def test_a_worker_that_forks_without_bound_stops_at_the_pids_limit(tmp_path: Path) -> None:
    d = make_squadron(tmp_path / "hd", HYPERDRIVE_SHIP_PIDS="64")
    try:
        d.start()
        calm = AppRepo(d, "calm", tmp_path / "calm")
        assert deploy(d, calm, {"index.html": "calm\n"})["event"] == "DeployFinished"
        bomb = AppRepo(d, "bomb", tmp_path / "bomb")
        outcome = deploy(d, bomb, {"Procfile": "worker: while :; do sleep 30 & done\n"})
        assert outcome["event"] == "DeployFailed", outcome
        assert outcome["stage"] == "health", outcome
        assert "process `worker` exited" in outcome["message"], outcome
        assert "can't fork" in outcome["message"], outcome  # it hit the ship's limit
        assert http_get(d.http_port, "/calm/") == (200, "calm\n")  # the other app serves
    finally:
        teardown(d)
