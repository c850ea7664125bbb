"""`hd serve` as a user meets it: start, answer, take triggers, refuse a twin, stop cleanly."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from hyperdrive.triggers import Trigger, write_incoming
from tests.conftest import Daemon, make_daemon, wait_for
from tests.e2e.squadron import http_get


def test_healthz_status_metrics_and_logs(daemon: Daemon) -> None:
    assert daemon.get("/healthz")["status"] == "ok"
    status = json.loads(daemon.hd("status", "--json").stdout)
    assert status["pending"] == 0
    assert status["api"] == f"127.0.0.1:{daemon.api_port}"
    assert status["event_loop"] == "asyncio", "HYPERDRIVE_EVENT_LOOP's default"
    table = daemon.hd("status").stdout
    assert "no apps yet" in table
    url = f"http://127.0.0.1:{daemon.api_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        metrics = response.read().decode()
    assert "hyperdrive_up 1.0" in metrics
    assert "hyperdrive_triggers_pending 0.0" in metrics
    logs = daemon.hd("logs").stdout
    assert "hyperdrive: hyperdrive " in logs
    assert " serving: ssh 127.0.0.1:" in logs
    as_json = [json.loads(line) for line in daemon.hd("logs", "--json").stdout.splitlines()]
    assert as_json[0]["event"] == "DaemonStarted"


def test_admin_socket_is_private(daemon: Daemon) -> None:
    mode = (daemon.var / "hd.sock").stat().st_mode & 0o777
    assert mode == 0o600
    assert (daemon.var / "private_keys").stat().st_mode & 0o777 == 0o700


def test_private_keys_folder_is_made_private(tmp_path: Path) -> None:
    d = make_daemon(tmp_path / "hd")
    (d.var / "private_keys").mkdir(parents=True)
    (d.var / "private_keys").chmod(0o755)
    d.start()
    try:
        assert (d.var / "private_keys").stat().st_mode & 0o777 == 0o700
    finally:
        d.stop()


def test_trigger_file_is_handed_over_and_leaves_the_spool(daemon: Daemon) -> None:
    trigger = Trigger.retire("web", "a test")  # an app with nothing running: no LXC needed
    write_incoming(daemon.data / "spool", trigger)
    event = daemon.wait_event("AppRetired", deploy=trigger.id)
    assert event["app"] == "web"
    wait_for(lambda: not list((daemon.data / "spool" / "incoming").glob("*.json")), 5)
    wait_for(lambda: json.loads(daemon.hd("status", "--json").stdout)["pending"] == 0, 5)


def test_uvloop_serves_when_asked(tmp_path: Path) -> None:
    d = make_daemon(tmp_path / "hd", HYPERDRIVE_EVENT_LOOP="uvloop")
    d.start()
    try:
        assert json.loads(d.hd("status", "--json").stdout)["event_loop"] == "uvloop"
        trigger = Trigger.retire("web", "a test")
        write_incoming(d.data / "spool", trigger)
        d.wait_event("AppRetired", deploy=trigger.id)
    finally:
        assert d.stop(signal.SIGTERM) == 0


def test_bad_spool_files_are_quarantined_and_daemon_keeps_serving(daemon: Daemon) -> None:
    incoming = daemon.data / "spool" / "incoming"
    (incoming / "half.json").write_text('{"id": "t-1", "kind": "pu')
    (incoming / "hostile.json").write_text('{"id": "../../etc", "kind": "push"}')
    (incoming / "newer.json").write_text('{"id": "t-2", "kind": "teleport", "app": "web"}')
    event = daemon.wait_event("TriggerRejected", file="half.json")
    assert "spool/rejected/half.json" in event["message"]
    daemon.wait_event("TriggerRejected", file="hostile.json")
    unknown = daemon.wait_event("TriggerRejected", file="newer.json")
    assert "unknown kind 'teleport'" in unknown["message"]
    assert (daemon.data / "spool" / "rejected" / "newer.json").exists()
    assert (daemon.data / "spool" / "rejected" / "half.json").exists()
    assert daemon.get("/healthz")["status"] == "ok"


def test_second_serve_on_same_data_is_refused(daemon: Daemon) -> None:
    result = daemon.hd("serve", check=False, timeout=20)
    assert result.returncode == 1
    assert "another hd serve" in result.stderr
    assert str(daemon.proc.pid) in result.stderr  # type: ignore[union-attr]
    assert daemon.get("/healthz")["status"] == "ok"


def test_cli_says_daemon_is_not_running(tmp_path: Path) -> None:
    d = make_daemon(tmp_path / "down")
    result = d.hd("status", check=False)
    assert result.returncode == 4
    assert "not running" in result.stderr
    assert "Traceback" not in result.stderr


def test_sigterm_stops_cleanly_and_keeps_unfinished_triggers(tmp_path: Path) -> None:
    d = make_daemon(tmp_path / "hd")
    d.start()
    assert d.stop(signal.SIGTERM) == 0
    events = [e["event"] for e in d.events()]
    assert events[-2:] == ["DaemonStarted", "DaemonStopping"]
    assert not (d.var / "hd.sock").exists()
    # a trigger dropped while the daemon is down is taken at the next start
    trigger = Trigger.retire("web", "a test")
    write_incoming(d.data / "spool", trigger)
    d.start()
    d.wait_event("AppRetired", deploy=trigger.id)
    assert d.stop() == 0


def test_torn_event_log_line_is_skipped_after_crash(tmp_path: Path) -> None:
    d = make_daemon(tmp_path / "hd")
    d.start()
    d.stop(signal.SIGKILL)
    with open(d.data / "events.jsonl", "ab") as fh:
        fh.write(b'{"ts":"2026-01-01T00:00:00.000Z","event":"Tor')
    d.start()
    logs = d.hd("logs", "--json", "-n", "all").stdout.splitlines()
    names = [json.loads(line)["event"] for line in logs]
    assert names.count("DaemonStarted") == 2
    assert d.stop() == 0


def test_bad_config_value_stops_startup_naming_the_key(tmp_path: Path) -> None:
    d = make_daemon(tmp_path / "hd", HYPERDRIVE_HTTP_PORT="70000")
    result = d.hd("serve", check=False, timeout=20)
    assert result.returncode == 3
    assert "HYPERDRIVE_HTTP_PORT='70000'" in result.stderr
    assert "out of range" in result.stderr


def test_public_events_need_a_token_and_stream_sse(daemon: Daemon) -> None:
    url = f"http://127.0.0.1:{daemon.api_port}/events"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=5)
    assert refused.value.code == 401
    refused.value.close()
    token = daemon.hd("token", "alice").stdout.strip()
    assert len(token) > 30
    request = urllib.request.Request(
        f"{url}?follow=0", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        body = response.read().decode()
    assert "event: DaemonStarted" in body
    assert token not in (daemon.data / "events.jsonl").read_text()


@pytest.mark.parametrize("history", ["1e23", str(10**23), "-5", "100001"])
def test_a_bad_history_count_is_a_400_naming_the_bound(daemon: Daemon, history: str) -> None:
    token = daemon.hd("token", "alice").stdout.strip()
    url = f"http://127.0.0.1:{daemon.api_port}/events?follow=0&history={history}"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 400
    assert "0 to 100000 or 'all'" in json.loads(refused.value.read())["error"]
    refused.value.close()
    assert daemon.get("/healthz")["status"] == "ok"
    assert "Traceback" not in daemon.log()


def test_logs_refuses_a_huge_count_before_asking_the_daemon(daemon: Daemon) -> None:
    result = daemon.hd("logs", "-n", str(10**23), check=False)
    assert result.returncode == 2
    assert "0 to 100000 or 'all'" in result.stderr
    assert "Traceback" not in daemon.log()


def test_deploying_an_app_that_does_not_exist_leaves_no_trace_of_it(daemon: Daemon) -> None:
    result = daemon.hd("deploy", "ghost", check=False, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "failed at plan" in result.stdout, result.stdout
    assert not (daemon.data / "records" / "apps" / "ghost.json").exists()
    assert json.loads(daemon.hd("status", "--json").stdout)["apps"] == []
    assert not (daemon.data / "git" / "ghost.git").exists()


def test_logs_follow_streams_new_events(daemon: Daemon) -> None:
    argv = [sys.executable, "-m", "hyperdrive", "logs", "-f", "--json", "-n", "0"]
    with subprocess.Popen(argv, env=daemon.env, stdout=subprocess.PIPE, text=True) as follower:
        time.sleep(0.5)
        trigger = Trigger.retire("web", "a test")
        write_incoming(daemon.data / "spool", trigger)
        assert follower.stdout is not None
        line = follower.stdout.readline()
        follower.terminate()
    assert json.loads(line)["deploy"] == trigger.id


def test_the_http_port_answers_from_the_start(daemon: Daemon) -> None:
    status, body = http_get(daemon.http_port, "/nothing-here/")
    assert status == 404, body


def test_second_signal_stops_at_once_and_the_work_resumes_at_next_start(tmp_path: Path) -> None:
    """A sync stuck on a silent remote is in flight: SIGTERM waits for it, a second one does not."""
    with socket.socket() as silent:  # accepts git's connection and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"git://127.0.0.1:{silent.getsockname()[1]}/hq.git"
        d = make_daemon(tmp_path / "hd", HYPERDRIVE_HEADQUARTERS=url)
        d.start()
        trigger = Trigger.hq_sync("a test")
        write_incoming(d.data / "spool", trigger)
        wait_for(lambda: json.loads(d.hd("status", "--json").stdout)["inflight"] == 1, 10)
        assert d.proc is not None
        d.proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert d.proc.poll() is None, "the first signal drains in-flight work"
        started = time.monotonic()
        assert d.stop(signal.SIGTERM, timeout=10) == 0
        assert time.monotonic() - started < 5
        pending = (d.data / "spool" / "journal.jsonl").read_text()
        assert trigger.id in pending
        assert f'"op":"done","id":"{trigger.id}"' not in pending
