"""Ships and the network, as a user sees it: real busybox ships reach a world of the test's own
(a network namespace routed through the host) by name, leave with the host's address, are cut
off by `egress off` (per app, and HYPERDRIVE_SHIP_EGRESS=off for all) or limited by `egress
allow`, and never reach the host's own services except what Hyperdrive offers them.

busybox's static wget cannot resolve names (static glibc without NSS), so ships look names up
with nslookup and fetch by address; the debian hull's pip resolves by name (test_builds.py).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyperdrive.network import bridge_address
from tests.conftest import Daemon
from tests.e2e.squadron import (
    AppRepo,
    http_get,
    make_squadron,
    push_orders,
    teardown,
    wait_outcome,
)
from tests.e2e.world import ALT_PORT, World, make_wheel

pytestmark = [
    pytest.mark.root,
    pytest.mark.lxc,
    pytest.mark.nginx,
    pytest.mark.slow,
    pytest.mark.timeout(300),
]

FETCH_BUILD = """#!/bin/sh
# the build fetches something from the world, as a dependency download would
busybox timeout 10 busybox wget -q -O /app/fetched "http://$FROM/during-the-build" || {
  echo "could not reach $FROM"; exit 1; }
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("world")
    make_wheel(root / "wheels", "hdtdemo")
    place = World(root / "ns", root / "wheels").open()
    try:
        yield place
    finally:
        place.close()


@pytest.fixture(scope="module")
def squadron(tmp_path_factory: pytest.TempPathFactory, world: World) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("egress")
    d = make_squadron(root / "hd", HYPERDRIVE_SHIP_DNS=world.ip)
    try:
        d.start()
        yield d
    finally:
        teardown(d)


def bridge(d: Daemon) -> str:
    return str(bridge_address(d.env["HYPERDRIVE_SUBNET"]))


def deploy(d: Daemon, app: str, work: Path, files: dict[str, str]) -> dict:
    repo = AppRepo(d, app, work)
    return wait_outcome(d, repo.push_trigger(repo.commit(files)), timeout=120)


def live_ship(d: Daemon, app: str) -> str:
    record = json.loads((d.data / "records" / "apps" / f"{app}.json").read_text())
    return str(record["live"])


def in_ship(d: Daemon, app: str, *command: str) -> subprocess.CompletedProcess[str]:
    """Run a busybox command in the app's live ship, as `hd enter` would."""
    argv = ["lxc-attach", "-P", str(d.var / "containers"), "-n", live_ship(d, app), "--"]
    return subprocess.run(
        [*argv, "/bin/busybox", *command], capture_output=True, text=True, timeout=60, check=False
    )


def wget(d: Daemon, app: str, url: str, *options: str) -> str:
    """The body a ship gets for `url`, or `FAILED …` with what wget said."""
    # bounded by `timeout`: busybox 1.35's own `wget -T` crashes when it cannot connect
    done = in_ship(d, app, "timeout", "5", "/bin/busybox", "wget", "-q", "-O", "-", *options, url)
    return (
        done.stdout
        if done.returncode == 0
        else f"FAILED {done.returncode} {done.stdout}{done.stderr}"
    )


def site(text: str) -> dict[str, str]:
    return {"index.html": text}


def test_a_ship_resolves_the_worlds_names_and_leaves_with_the_hosts_address(
    squadron: Daemon, world: World, tmp_path: Path
) -> None:
    d = squadron
    push_orders(d, tmp_path / "hq", {"site": "servername site.hdt.example\n"})
    assert deploy(d, "site", tmp_path / "site", site("a site\n"))["event"] == "DeployFinished"
    looked_up = in_ship(d, "site", "nslookup", world.index_host)
    assert looked_up.returncode == 0, looked_up.stdout + looked_up.stderr
    assert world.ip in looked_up.stdout
    assert wget(d, "site", f"http://{world.ip}/from-a-ship") == "hello from the world\n"
    seen = {r["client"] for r in world.requests() if r["path"] == "/from-a-ship"}
    assert seen == {world.host_ip}, "the world sees the host's address, not the ship's"
    # an app's servername resolves to the bridge, where nginx serves it
    looked_up = in_ship(d, "site", "nslookup", "site.hdt.example")
    assert f"Address: {bridge(d)}" in looked_up.stdout, looked_up.stdout
    url = f"http://{bridge(d)}:{d.http_port}/"
    assert wget(d, "site", url, "--header", "Host: site.hdt.example") == "a site\n"
    doctor = d.hd("doctor", check=False).stdout
    assert f"ok   ships' dns: {bridge(d)}:53 answers" in doctor, doctor


def test_ships_reach_no_host_service_hyperdrive_does_not_offer(
    squadron: Daemon, tmp_path: Path
) -> None:
    d = squadron
    assert deploy(d, "probe", tmp_path / "probe", site("probe\n"))["event"] == "DeployFinished"
    here = bridge(d)
    assert wget(d, "probe", f"http://{here}:{d.http_port}/probe/") == "probe\n"
    assert wget(d, "probe", f"http://{here}:{d.api_port}/healthz").startswith("FAILED")
    host_ip = (
        subprocess.run(
            ["ip", "-4", "-o", "route", "get", "1.1.1.1"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        .stdout.split(" src ")[1]
        .split()[0]
    )
    assert wget(d, "probe", f"http://{host_ip}:{d.http_port}/probe/").startswith("FAILED")
    ssh = in_ship(d, "probe", "nc", "-w", "3", here, str(d.ssh_port))
    assert "SSH-" not in ssh.stdout, "the daemon's SSH port is not for ships"
    assert http_get(d.api_port, "/healthz")[0] == 200, "the host itself still reaches it"


def test_egress_off_per_app_fails_the_build_and_the_old_ship_keeps_serving(
    squadron: Daemon, world: World, tmp_path: Path
) -> None:
    d = squadron
    files = {"bin/build": FETCH_BUILD, "Procfile": "web: httpd -f -p $PORT -h /app\n"}
    files["index.html"] = "fetched\n"
    push_orders(d, tmp_path / "hq", {"fetch": f"export FROM={world.ip}\n"})
    repo = AppRepo(d, "fetch", tmp_path / "fetch")
    outcome = wait_outcome(d, repo.push_trigger(repo.commit(files)), timeout=120)
    assert outcome["event"] == "DeployFinished", outcome["message"]
    old = live_ship(d, "fetch")
    push_orders(d, tmp_path / "hq", {"fetch": f"export FROM={world.ip}\negress off\n"})
    outcome = wait_outcome(d, repo.push_trigger(repo.commit({"index.html": "v2\n"})), 120)
    assert outcome["event"] == "DeployFailed"
    assert "egress is off for this app: fetch/orders:2" in outcome["message"]
    assert f"could not reach {world.ip}" in outcome["message"]
    assert f"{old} keeps serving" in outcome["message"]
    assert http_get(d.http_port, "/fetch/") == (200, "fetched\n")


def test_egress_allow_lets_only_the_allowed_host_port_through(
    squadron: Daemon, world: World, tmp_path: Path
) -> None:
    d = squadron
    # a name in the allow list is resolved (as ships resolve it) when the ship is made
    push_orders(d, tmp_path / "hq", {"narrow": f"egress allow {world.web_host}:80\n", "wide": ""})
    assert deploy(d, "narrow", tmp_path / "n", site("narrow\n"))["event"] == "DeployFinished"
    assert deploy(d, "wide", tmp_path / "w", site("wide\n"))["event"] == "DeployFinished"
    assert wget(d, "narrow", f"http://{world.ip}/allowed") == "hello from the world\n"
    assert wget(d, "narrow", f"http://{world.ip}:{ALT_PORT}/other").startswith("FAILED")
    assert wget(d, "wide", f"http://{world.ip}:{ALT_PORT}/open") == "hello from the world\n"
    paths = {r["path"] for r in world.requests()}
    assert {"/allowed", "/open"} <= paths
    assert "/other" not in paths


def test_egress_off_for_every_ship(squadron: Daemon, world: World, tmp_path: Path) -> None:
    """HYPERDRIVE_SHIP_EGRESS=off (last: it restarts the squadron with it)."""
    d = squadron
    files = {"bin/build": FETCH_BUILD, "Procfile": "web: httpd -f -p $PORT -h /app\n"}
    push_orders(d, tmp_path / "hq", {"all": f"export FROM={world.ip}\n"})
    repo = AppRepo(d, "all", tmp_path / "all")
    outcome = wait_outcome(d, repo.push_trigger(repo.commit({**files, "index.html": "v1\n"})))
    assert outcome["event"] == "DeployFinished", outcome["message"]
    d.stop()
    d.env["HYPERDRIVE_SHIP_EGRESS"] = "off"
    d.start()
    assert http_get(d.http_port, "/all/") == (200, "v1\n"), "a restart keeps it serving"
    assert wget(d, "all", f"http://{world.ip}/after-restart").startswith("FAILED")
    outcome = wait_outcome(d, repo.push_trigger(repo.commit({"index.html": "v2\n"})), 120)
    assert outcome["event"] == "DeployFailed"
    assert "egress is off for every ship: HYPERDRIVE_SHIP_EGRESS=off" in outcome["message"]
    assert http_get(d.http_port, "/all/") == (200, "v1\n")
    assert "/after-restart" not in {r["path"] for r in world.requests()}
