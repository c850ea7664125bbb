"""Squadrons in one fleet, as a user builds it: `hd fleet init`, `hd fleet join`, `leave`.

Real daemons, a real managed nats-server (started and supervised by the first daemon), real
git, LXC and nginx for the deploy; everything on loopback with ports of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon, free_port, wait_for
from tests.e2e.squadron import (
    Admiral,
    admiral_squadron,
    forge_repo,
    http_get,
    make_squadron,
    settled,
)
from tests.e2e.squadron import teardown as squadron_teardown
from tests.e2e.test_webhook_deploy import post, push_payload
from tests.fixtures.webhooks.forge import SECRET, github

pytestmark = [pytest.mark.root]

JOIN = re.compile(r"hd fleet join (nats://\S+) --secret (\S+)")


def fleet_ports() -> dict[str, str]:
    return {
        "HYPERDRIVE_FLEET_LISTEN": f"127.0.0.1:{free_port()}",
        "HYPERDRIVE_FLEET_CLUSTER_LISTEN": f"127.0.0.1:{free_port()}",
    }


def node_pid(d: Daemon) -> int | None:
    try:
        pid = int((d.data / "nats" / "nats.pid").read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def stop_node(d: Daemon) -> None:
    """The managed nats-server outlives its daemon on purpose: the test ends it."""
    if (pid := node_pid(d)) is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def fleet_status(d: Daemon) -> dict:
    return json.loads(d.hd("status", "--json").stdout)["fleet"]


def connected(d: Daemon) -> bool:
    return fleet_status(d)["state"] == "connected"


def init(d: Daemon) -> tuple[str, str, str]:
    """`hd fleet init` on `d`: (the printed join line, its URL, its secret)."""
    out = d.hd("fleet", "init", "--advertise", "127.0.0.1", timeout=60).stdout
    found = JOIN.search(out)
    assert found, out
    return found.group(0), found.group(1), found.group(2)


@pytest.fixture
def squadrons(tmp_path: Path) -> Iterator[list[Daemon]]:
    made: list[Daemon] = []
    yield made
    for d in made:
        squadron_teardown(d)
        stop_node(d)


def started(made: list[Daemon], root: Path, **extra: str) -> Daemon:
    d = make_squadron(root, **fleet_ports(), **extra)
    made.append(d)
    d.start()
    return d


def test_init_join_a_name_clash_wrong_secret_and_leave(
    tmp_path: Path, squadrons: list[Daemon]
) -> None:
    a = started(squadrons, tmp_path / "a")
    b = started(squadrons, tmp_path / "b")
    assert fleet_status(a) == {"state": "alone"}
    alone = a.hd("deploy", "site", "--fleet", check=False)
    assert alone.returncode == 1
    assert "not in a fleet" in alone.stderr
    line, url, secret = init(a)
    assert line.startswith("hd fleet join nats://127.0.0.1:")
    wait_for(lambda: connected(a), 30, 0.2, "A connected to its own node")
    assert re.search(rf"fleet +connected \({re.escape(url)}\)", a.hd("status").stdout)

    b.hd("fleet", "join", url, "--member", "--secret", secret, timeout=60)
    wait_for(lambda: connected(b), 30, 0.2, "B connected to the fleet")
    refused = b.hd("fleet", "join", url, "--member", "--secret", secret, check=False)
    assert refused.returncode == 1
    assert "in a fleet already" in refused.stderr

    twin = started(squadrons, tmp_path / "twin", HYPERDRIVE_NAME=a.env["HYPERDRIVE_NAME"])
    clash = twin.hd("fleet", "join", url, "--member", "--secret", secret, check=False, timeout=60)
    assert clash.returncode == 1
    assert f"the squadron name '{a.env['HYPERDRIVE_NAME']}' is already taken" in clash.stderr
    wrong = twin.hd("fleet", "join", url, "--member", "--secret", "not-it", check=False, timeout=60)
    assert wrong.returncode == 1
    assert "refused the fleet credentials" in wrong.stderr
    assert fleet_status(twin) == {"state": "alone"}

    in_use = a.hd("fleet", "leave", check=False, timeout=60)
    assert in_use.returncode == 1
    assert f"{b.env['HYPERDRIVE_NAME']} still use the NATS node" in in_use.stderr
    b.hd("fleet", "leave", timeout=60)
    assert fleet_status(b) == {"state": "alone"}
    assert not (b.data / "nats" / "fleet.json").exists()
    a.hd("fleet", "leave", timeout=60)  # the last one: its node stops
    assert fleet_status(a) == {"state": "alone"}
    assert node_pid(a) is None


def test_the_managed_node_outlives_the_daemon_and_is_restarted_when_it_dies(
    tmp_path: Path, squadrons: list[Daemon]
) -> None:
    a = started(squadrons, tmp_path / "a")
    b = started(squadrons, tmp_path / "b")
    _, url, secret = init(a)
    b.hd("fleet", "join", url, "--member", "--secret", secret, timeout=60)
    wait_for(lambda: connected(b), 30, 0.2, "B connected")
    pid = node_pid(a)
    assert pid is not None

    a.stop()  # A's daemon restarts (an upgrade): the fleet's node keeps running
    assert node_pid(a) == pid
    assert connected(b)
    a.start()
    wait_for(lambda: connected(a), 30, 0.2, "A back in the fleet")
    assert node_pid(a) == pid, "the running node was adopted, not started again"

    os.kill(pid, signal.SIGKILL)  # the node dies: A's daemon starts it again
    wait_for(lambda: node_pid(a) not in (None, pid), 30, 0.2, "a new nats-server")
    wait_for(lambda: connected(a) and connected(b), 40, 0.2, "both reconnected")


def test_status_and_doctor_say_when_nats_is_unreachable(
    tmp_path: Path, squadrons: list[Daemon]
) -> None:
    a = started(squadrons, tmp_path / "a")
    b = started(squadrons, tmp_path / "b")
    _, url, secret = init(a)
    b.hd("fleet", "join", url, "--member", "--secret", secret, timeout=60)
    wait_for(lambda: connected(b), 30, 0.2, "B connected")
    a.stop()
    stop_node(a)  # the fleet's only node is gone
    wait_for(lambda: fleet_status(b)["state"] == "unreachable", 30, 0.2, "B sees it")
    assert re.search(r"fleet +UNREACHABLE", b.hd("status").stdout)
    doctor = b.hd("doctor", check=False, timeout=60)
    assert re.search(r"FAIL fleet: UNREACHABLE \(nats://127\.0\.0\.1:\d+\)", doctor.stdout)
    assert b.get("/healthz")["status"] == "ok"  # the squadron itself keeps serving
    a.start()  # A's daemon starts its node again
    wait_for(lambda: connected(b), 40, 0.2, "B reconnected")


@pytest.mark.lxc
@pytest.mark.nginx
@pytest.mark.slow
def test_a_webhook_to_one_squadron_deploys_on_both(tmp_path: Path) -> None:
    """An app both squadrons follow from a forge: its webhook reaches A only, and B deploys it
    too, from the fleet's trigger stream."""
    extra = {"HYPERDRIVE_WEBHOOK_SECRET": SECRET}
    with (
        admiral_squadron(tmp_path / "a", **fleet_ports(), **extra) as (a, admiral_a),
        admiral_squadron(tmp_path / "b", **fleet_ports(), **extra) as (b, admiral_b),
    ):
        try:
            forge, work = forge_repo(admiral_a, tmp_path, {"index.html": "v1\n"})
            url = f"file://{forge}"
            for d, admiral, where in ((a, admiral_a, "hq-a"), (b, admiral_b, "hq-b")):
                order_site(d, admiral, tmp_path / where, url)
            _, nats_url, secret = init(a)
            b.hd("fleet", "join", nats_url, "--member", "--secret", secret, timeout=60)
            wait_for(lambda: connected(a) and connected(b), 30, 0.2, "both in the fleet")

            v1 = admiral_a.git("rev-parse", "HEAD", cwd=work).stdout.strip()
            admiral_a.commit(work, {"index.html": "v2 for the fleet\n"})
            admiral_a.git("push", "-q", "origin", "master", cwd=work)
            v2 = admiral_a.git("rev-parse", "HEAD", cwd=work).stdout.strip()
            headers, body = github(push_payload(url, v1, v2))
            status, answer = post(a, "github", headers, body)
            assert status == 202, answer
            served = (200, "v2 for the fleet\n")
            for d in (a, b):
                wait_for(lambda d=d: http_get(d.http_port, "/site/") == served, 120, 0.3, "v2")
            delivery = answer["deploys"]["site"]
            assert b.wait_event("DeployFinished", 30, deploy=delivery)
            # the forge sends the same delivery to B as well: still one deploy on each
            status, again = post(b, "github", headers, body)
            assert (status, again) == (200, {"status": "duplicate"})
            for d in (a, b):
                settled(d)
                queued = [e for e in d.events() if e.get("event") == "DeployQueued"]
                assert [e["deploy"] for e in queued].count(delivery) == 1

            # `hd rollback --fleet` on B: every squadron goes back to v1
            rolled = b.hd("rollback", "site", "--fleet", timeout=120)
            deploy = re.search(r"rollback (\S+) queued", rolled.stdout).group(1)
            for d in (a, b):
                wait_for(lambda d=d: http_get(d.http_port, "/site/") == (200, "v1\n"), 120, 0.3)
            assert a.wait_event("DeployFinished", 60, deploy=deploy)
        finally:
            stop_node(a)


def order_site(d: Daemon, admiral: Admiral, hq_dir: Path, url: str) -> None:
    hq = admiral.working_copy(hq_dir, "headquarters")
    orders = {
        "authorized_keys/admiral.pub": Path(f"{admiral.key}.pub").read_text(),
        "site/orders": f"autodeploy {url}\nhealthcheck / 10\n",
    }
    admiral.commit(hq, orders)
    admiral.git("push", "hyperdrive", "master", cwd=hq)
    wait_for(lambda: http_get(d.http_port, "/site/") == (200, "v1\n"), 120, 0.3, "v1 served")


def test_three_nodes_keep_the_fleet_going_without_the_first(
    tmp_path: Path, squadrons: list[Daemon]
) -> None:
    a, b, c = (started(squadrons, tmp_path / name) for name in "abc")
    _, url, secret = init(a)
    for d in (b, c):
        node = d.hd(
            "fleet",
            "join",
            url,
            "--secret",
            secret,
            "--advertise",
            "127.0.0.1",
            timeout=60,
        )
        assert "a NATS node runs here too" in node.stdout
        wait_for(lambda d=d: connected(d), 60, 0.2, "the new node connected")
    wait_for(lambda: all(connected(d) for d in (a, b, c)), 60, 0.2, "all three connected")
    wait_for(lambda: fleet_status(c)["replicas"] == 3, 90, 0.5, "the stream on three nodes")
    a.stop()
    stop_node(a)  # the first squadron and its node are gone for good

    # a fleet trigger from B still reaches C (an app nobody has: it fails fast everywhere)
    def reaches_c() -> bool:
        asked = b.hd("rollback", "ghost", "--fleet", check=False, timeout=60)
        found = re.search(r"rollback (\S+) queued", asked.stdout)
        if not found:
            return False
        try:
            c.wait_event("DeployFailed", 10, deploy=found.group(1))
        except AssertionError:
            return False
        return True

    wait_for(reaches_c, 90, 1, "a trigger from B on C without the first node")


@pytest.mark.lxc
@pytest.mark.nginx
@pytest.mark.slow
def test_a_push_to_one_squadron_is_served_by_both_and_hq_is_one(tmp_path: Path) -> None:
    """`git push` over SSH to A of an app hosted there: its commits reach B as a bundle and B
    serves it too, also when B was down at the push; an HQ push to B orders an app on A."""
    with (
        admiral_squadron(tmp_path / "a", **fleet_ports()) as (a, admiral_a),
        admiral_squadron(tmp_path / "b", **fleet_ports()) as (b, admiral_b),
    ):
        try:
            _, nats_url, secret = init(a)
            b.hd("fleet", "join", nats_url, "--member", "--secret", secret, timeout=60)
            wait_for(lambda: connected(a) and connected(b), 30, 0.2, "both in the fleet")

            work = admiral_a.working_copy(tmp_path / "site", "site")
            admiral_a.commit(work, {"index.html": "v1 on the fleet\n"})
            pushed = admiral_a.git("push", "hyperdrive", "master", cwd=work)
            assert "site deployed" in pushed.stdout + pushed.stderr
            served = (200, "v1 on the fleet\n")
            for d in (a, b):
                wait_for(lambda d=d: http_get(d.http_port, "/site/") == served, 120, 0.3, "v1")

            b.stop()  # B is down while A takes a push; it catches up when it is back
            admiral_a.commit(work, {"index.html": "v2 while B was down\n"})
            admiral_a.git("push", "-o", "nowait", "hyperdrive", "master", cwd=work)
            newest = (200, "v2 while B was down\n")
            wait_for(lambda: http_get(a.http_port, "/site/") == newest, 120, 0.3, "v2 on A")
            b.start()
            wait_for(lambda: http_get(b.http_port, "/site/") == newest, 120, 0.3, "v2 on B")

            # one HQ: a push to B's headquarters orders an app on A as well
            forge, _ = forge_repo(admiral_b, tmp_path / "f", {"index.html": "ordered by HQ\n"})
            hq = admiral_b.working_copy(tmp_path / "hq-b", "headquarters")
            keys = {
                f"authorized_keys/{who}.pub": Path(f"{admiral.key}.pub").read_text()
                for who, admiral in (("ann", admiral_a), ("bob", admiral_b))
            }
            admiral_b.commit(hq, {**keys, "shop/orders": f"autodeploy file://{forge}\n"})
            admiral_b.git("push", "hyperdrive", "master", cwd=hq)
            ordered = (200, "ordered by HQ\n")
            for d in (b, a):
                wait_for(lambda d=d: http_get(d.http_port, "/shop/") == ordered, 120, 0.3, "shop")
            assert a.wait_event("AdmiralsChanged", 30)["admirals"] == ["ann", "bob"]

            # `hd fleet status --json` on either: both squadrons, and each app on each
            names = sorted(d.env["HYPERDRIVE_NAME"] for d in (a, b))
            site_sha = admiral_a.git("rev-parse", "--short=7", "HEAD", cwd=work).stdout.strip()

            def both_listed() -> bool:
                shown = json.loads(a.hd("fleet", "status", "--json").stdout)
                apps = {row["app"]: row["squadrons"] for row in shown["apps"]}
                on = apps.get("site", {})
                listed = sorted(s["name"] for s in shown["squadrons"]) == names
                shas = [on.get(n, {}).get("sha") for n in names] == [site_sha] * 2
                return listed and shas and sorted(apps.get("shop", {})) == names

            wait_for(both_listed, 60, 0.5, "the fleet's status")
            # b reads the same buckets itself; its own link may be between sessions just now
            wait_for(
                lambda: all(name in b.hd("fleet", "status").stdout for name in names),
                60,
                0.5,
                "b's `hd fleet status` listing both",
            )
        finally:
            stop_node(a)
