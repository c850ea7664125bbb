"""Faults around the daemon, end to end on real LXC, nginx and nftables, with a client asking
the apps all along: each is noticed without polling, healed, and said in an event."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hyperdrive.nginx_reload import orphan_workers
from tests.conftest import Daemon, wait_for
from tests.e2e.squadron import (
    AppRepo,
    Prober,
    http_get,
    make_squadron,
    settled,
    teardown,
    wait_outcome,
)

pytestmark = [pytest.mark.root, pytest.mark.lxc, pytest.mark.nginx, pytest.mark.slow]

APPS = ("alpha", "beta")


@dataclass
class Squadron:
    d: Daemon
    repos: dict[str, AppRepo]

    def body(self, app: str) -> str:
        return f"{app} is up\n"


@pytest.fixture(scope="module")
def sq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Squadron]:
    tmp = tmp_path_factory.mktemp("healing")
    d = make_squadron(tmp / "hd")
    try:
        d.start()
        repos = {app: AppRepo(d, app, tmp / app) for app in APPS}
        deploys = [
            r.push_trigger(r.commit({"index.html": f"{a} is up\n"})) for a, r in repos.items()
        ]
        for deploy in deploys:
            assert wait_outcome(d, deploy)["event"] == "DeployFinished"
        settled(d)
        yield Squadron(d, repos)
    finally:
        teardown(d)


def master_pid(d: Daemon) -> int:
    return int((d.var / "nginx" / "run" / "nginx.pid").read_text())


def nginx_alive(d: Daemon, not_pid: int) -> int | None:
    """The running master's pid once it is not `not_pid`."""
    try:
        pid = master_pid(d)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if pid != not_pid and cmdline.startswith(b"nginx: master") else None


def count(d: Daemon, event: str) -> int:
    return sum(1 for e in d.events() if e["event"] == event)


def serves(sq: Squadron) -> None:
    for app in APPS:
        assert http_get(sq.d.http_port, f"/{app}/") == (200, sq.body(app))


def test_a_killed_nginx_master_is_started_again_on_the_config_in_force(sq: Squadron) -> None:
    d, before = sq.d, count(sq.d, "NginxRestarted")
    old = master_pid(d)
    with Prober(d.http_port, "/alpha/", step=0.005) as probe:
        wait_for(lambda: probe.served > 10, 10, 0.01, "the client to be served")
        os.kill(old, signal.SIGKILL)
        d.wait_event("NginxRestarted", timeout=10)
        new = wait_for(lambda: nginx_alive(d, old), 10, 0.01, "a new nginx master")
        served = probe.served
        wait_for(lambda: probe.served > served + 10, 10, 0.01, "the client served again")
    assert count(d, "NginxRestarted") == before + 1
    restarted = [e for e in d.events() if e["event"] == "NginxRestarted"][-1]
    assert restarted["pid"] == new
    assert f"master {old} died" in restarted["message"]
    assert probe.bodies == {sq.body("alpha")}, probe.answers
    wait_for(lambda: not orphan_workers(old), 10, 0.05, "the old master's workers to quit")
    serves(sq)


def test_nginx_killed_twice_is_healed_twice(sq: Squadron) -> None:
    # the second kill may hit the new master before the daemon saw it run: then one
    # NginxRestarted says both deaths ("nginx masters 12 and 34 died; master 56 serves …")
    d, before = sq.d, count(sq.d, "NginxRestarted")
    killed = []
    for _ in range(2):
        old = master_pid(d)
        os.kill(old, signal.SIGKILL)
        killed.append(old)
        wait_for(lambda old=old: nginx_alive(d, old), 10, 0.01, lambda: f"a new master; {d.log()}")

    def said() -> list[dict[str, Any]]:
        restarts = [e for e in d.events() if e["event"] == "NginxRestarted"][before:]
        dead = {int(n) for e in restarts for n in re.findall(r"\d+", e["message"].split(";")[0])}
        return restarts if set(killed) <= dead else []

    restarts = wait_for(said, 10, 0.05, lambda: f"both deaths said; {d.log()}")
    assert restarts[-1]["pid"] == master_pid(d), "the master said last is the one serving"
    serves(sq)


def running(d: Daemon) -> set[str]:
    listed = subprocess.run(
        ["lxc-ls", "-P", str(d.var / "containers"), "--running", "-1"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return set(listed.stdout.split())


def live_ships(d: Daemon) -> dict[str, str]:
    status = json.loads(d.hd("status", "--json").stdout)
    return {a["app"]: a["ship"] for a in status["apps"] if a["app"] in APPS}


def simulate_reboot(d: Daemon) -> None:
    """What a reboot takes away: the daemon, nginx, every ship, the bridge and the nft table."""
    assert d.proc is not None
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    master = master_pid(d)
    with contextlib.suppress(ProcessLookupError):  # (gone already: as good as killed)
        os.kill(master, signal.SIGKILL)
    wait_for(lambda: nginx_alive(d, 0) is None, 10, 0.01, "the nginx master gone")
    for pid in orphan_workers(master):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not orphan_workers(master), 10, 0.01, "its workers gone")
    for ship in running(d):
        subprocess.run(
            ["lxc-stop", "-P", str(d.var / "containers"), "-n", ship, "-k"],
            capture_output=True, timeout=60, check=True,
        )  # fmt: skip
    name = d.env["HYPERDRIVE_NAME"]
    subprocess.run(["nft", "delete", "table", "ip", name], timeout=10, check=True)
    subprocess.run(["ip", "link", "del", f"{name}br0"], timeout=10, check=True)


def followers(pid: int) -> dict[int, str]:
    """The daemon's children that follow the kernel and LXC: `nft monitor`, `lxc-monitor`."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid and argv[0] in (b"nft", b"lxc-monitor"):
            found[int(entry.name)] = argv[0].decode()
    return found


def alive(pid: int) -> bool:
    try:
        return b"zombie" not in Path(f"/proc/{pid}/status").read_bytes().lower()
    except OSError:
        return False


def test_after_a_reboot_every_app_serves_its_last_live_ship_without_a_deploy(
    sq: Squadron,
) -> None:
    d = sq.d
    ships = live_ships(d)
    deploys = count(d, "DeployStarted")
    assert d.proc is not None
    watching = followers(d.proc.pid)
    assert sorted(watching.values()) == ["lxc-monitor", "nft"], watching
    simulate_reboot(d)
    # a daemon killed with SIGKILL takes its followers with it: none lingers after a crash
    wait_for(lambda: not any(map(alive, watching)), 10, 0.02, f"{watching} to end")
    assert not running(d) & set(ships.values())
    assert http_get(d.http_port, "/alpha/", timeout=1)[0] == 0, "nothing answers after a reboot"
    d.start()
    wait_for(lambda: all(http_ok(d, app, sq.body(app)) for app in APPS), 30, 0.05, "apps back")
    assert live_ships(d) == ships, "the same ships serve: nothing was deployed"
    assert count(d, "DeployStarted") == deploys
    assert set(ships.values()) <= running(d)


def http_ok(d: Daemon, app: str, body: str) -> bool:
    try:
        return http_get(d.http_port, f"/{app}/", timeout=1) == (200, body)
    except OSError:
        return False


def nft(*args: str) -> None:
    subprocess.run(["nft", *args], capture_output=True, timeout=10, check=True)


@pytest.mark.parametrize("how", ["delete", "flush"])
def test_a_deleted_or_flushed_nft_table_is_restored_from_the_records(
    sq: Squadron, how: str
) -> None:
    d, before = sq.d, count(sq.d, "TrafficTableRestored")
    table = d.env["HYPERDRIVE_NAME"]
    with Prober(d.http_port, "/beta/", step=0.005) as probe:
        wait_for(lambda: probe.served > 10, 10, 0.01, "the client to be served")
        nft(how, "table", "ip", table)
        wait_for(lambda: count(d, "TrafficTableRestored") > before, 10, 0.02, "the restore")
        served = probe.served
        wait_for(lambda: probe.served > served + 10, 10, 0.01, "the client served again")
    restored = [e for e in d.events() if e["event"] == "TrafficTableRestored"][-1]
    assert "nft monitor" in restored["cause"]
    repointed = "alpha, beta re-pointed" if how == "delete" else "no app re-pointed"
    assert repointed in restored["message"], restored
    assert probe.bodies == {sq.body("beta")}, probe.answers
    serves(sq)
    assert f"ok traffic table: whole, restored {before + 1}" in doctor(d)


def doctor(d: Daemon) -> str:
    """`hd doctor`'s lines, with rich's wrapping at 80 columns undone."""
    return " ".join(d.hd("doctor", check=False).stdout.split())


def test_a_table_deleted_while_the_daemon_is_down_is_shown_then_restored_at_start(
    sq: Squadron,
) -> None:
    d = sq.d
    assert d.proc is not None
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    nft("delete", "table", "ip", d.env["HYPERDRIVE_NAME"])
    assert not http_ok(d, "alpha", sq.body("alpha")), "nothing reaches the ships"
    assert f"FAIL traffic table: nft table ip {d.env['HYPERDRIVE_NAME']} is missing" in doctor(d)
    d.start()
    wait_for(lambda: all(http_ok(d, app, sq.body(app)) for app in APPS), 30, 0.05, "apps back")
    assert "ok traffic table: whole" in doctor(d)
    repo = sq.repos["alpha"]
    sha = repo.commit({"index.html": "alpha is up\n", "v": "2"})
    assert wait_outcome(d, repo.push_trigger(sha))["event"] == "DeployFinished"
    serves(sq)


def kill_ship(d: Daemon, ship: str) -> None:
    subprocess.run(
        ["lxc-stop", "-P", str(d.var / "containers"), "-n", ship, "-k"],
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip


def events_since(d: Daemon, seq: int, name: str) -> list[dict]:
    return [e for e in d.events() if e["event"] == name and e["seq"] > seq]


def last_seq(d: Daemon) -> int:
    return max(e["seq"] for e in d.events())


def test_a_live_ship_killed_from_outside_is_started_again(sq: Squadron) -> None:
    d = sq.d
    ship, seq = live_ships(d)["alpha"], last_seq(d)
    with Prober(d.http_port, "/alpha/", step=0.005) as probe:
        wait_for(lambda: probe.served > 10, 10, 0.01, "the client to be served")
        kill_ship(d, ship)
        wait_for(lambda: events_since(d, seq, "ShipRevived"), 30, 0.02, "the ship revived")
        served = probe.served
        wait_for(lambda: probe.served > served + 10, 10, 0.01, "the client served again")
    died = events_since(d, seq, "ShipDied")
    assert [(e["app"], e["ship"], e["state"]) for e in died] == [("alpha", ship, "STOPPED")]
    assert "stopped without Hyperdrive" in died[0]["message"]
    assert live_ships(d)["alpha"] == ship, "the same ship serves: nothing was deployed"
    assert probe.bodies == {sq.body("alpha")}
    assert http_ok(d, "beta", sq.body("beta")), "the other app never noticed"


def test_a_ship_that_keeps_dying_backs_off_and_says_so(sq: Squadron) -> None:
    d = sq.d
    ship, seq = live_ships(d)["beta"], last_seq(d)
    for n in range(1, 4):
        kill_ship(d, ship)
        wait_for(
            lambda n=n: len(events_since(d, seq, "ShipRevived")) >= n, 30, 0.02, f"revival {n}"
        )
    looping = events_since(d, seq, "ShipCrashLooping")
    assert looping, "the third death in a minute backs off"
    assert looping[0]["app"] == "beta"
    assert looping[0]["wait_s"] >= 1
    assert "backing off" in looping[0]["message"]
    assert http_ok(d, "beta", sq.body("beta"))
    assert live_ships(d)["beta"] == ship
