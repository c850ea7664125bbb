"""One view of a fleet and a rollout in waves, with real daemons: three squadrons on
loopback (a managed nats-server, real git over SSH, LXC busybox ships, nginx).

The rollout's failure is one a user can hit: v2 of the app needs a setting (`SITE_KEY`, in
each squadron's `$DATA/includes`) that the operator of the second squadron forgot.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon, wait_for
from tests.e2e.squadron import Admiral, admiral_squadron, http_get, settled
from tests.e2e.test_fleet import connected, fleet_ports, init, stop_node

pytestmark = [pytest.mark.root, pytest.mark.lxc, pytest.mark.nginx, pytest.mark.slow]

HTTPD = "busybox httpd -f -p $PORT -h /app"
V1 = {"Procfile": f"web: {HTTPD}\n", "index.html": "v1\n"}
# v2 reads a key each squadron's operator puts in $DATA/includes; without it, it stops
V2 = {"Procfile": f'web: test -n "$SITE_KEY" && exec {HTTPD}\n', "index.html": "v2\n"}


@contextlib.contextmanager
def three_squadrons(root: Path) -> Iterator[list[tuple[Daemon, Admiral]]]:
    with (
        admiral_squadron(root / "a", **fleet_ports()) as one,
        admiral_squadron(root / "b", **fleet_ports()) as two,
        admiral_squadron(root / "c", **fleet_ports()) as three,
    ):
        # sorted by name, as a rollout's waves are
        made = sorted([one, two, three], key=lambda pair: pair[0].env["HYPERDRIVE_NAME"])
        try:
            yield made
        finally:
            for d, _ in made:
                stop_node(d)


@contextlib.contextmanager
def following(d: Daemon) -> Iterator[list[str]]:
    """`hd logs -f --fleet site -n 0` on `d` while the block runs: the lines it printed."""
    argv = [sys.executable, "-m", "hyperdrive", "logs", "-f", "--fleet", "site", "-n", "0"]
    proc = subprocess.Popen(argv, env=d.env, stdout=subprocess.PIPE, text=True)
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield lines
    finally:
        proc.kill()
        proc.wait(10)
        reader.join(10)
        if proc.stdout is not None:
            proc.stdout.close()


def name(d: Daemon) -> str:
    return d.env["HYPERDRIVE_NAME"]


def serves(d: Daemon, body: str) -> None:
    wait_for(lambda: http_get(d.http_port, "/site/") == (200, body), 180, 0.3, f"{body!r}")


def test_a_rollout_stops_at_the_failing_squadron_and_the_fleet_shows_it(tmp_path: Path) -> None:
    with three_squadrons(tmp_path) as made:
        (first, admiral), (second, _), (third, _) = made
        for d in (first, third):  # the second squadron's operator forgot the key
            (d.data / "includes").mkdir(parents=True, exist_ok=True)
            (d.data / "includes" / "site.env").write_text("SITE_KEY=k-123\n")
        _, url, secret = init(first)
        for d in (second, third):  # members: the waves, not the NATS nodes, are tested here
            d.hd("fleet", "join", url, "--secret", secret, "--member", timeout=60)
        wait_for(lambda: all(connected(d) for d, _ in made), 60, 0.2, "three in the fleet")

        hq = admiral.working_copy(tmp_path / "hq", "headquarters")
        key = Path(f"{admiral.key}.pub").read_text()
        orders = "rollout 1 2 100%\nhealthcheck / 5\n"
        admiral.commit(hq, {"authorized_keys/admiral.pub": key, "site/orders": orders})
        admiral.git("push", "hyperdrive", "master", cwd=hq)
        for d, _ in made:
            d.wait_event("HeadquartersSynced", 60)

        # v1 rolls out wave by wave and is served everywhere
        work = admiral.working_copy(tmp_path / "site", "site")
        admiral.commit(work, V1)
        admiral.git("push", "-o", "nowait", "hyperdrive", "master", cwd=work)
        for d, _ in made:
            serves(d, "v1\n")
            settled(d)

        # v2: live on the first, fails its health check on the second, held on the third;
        # the pusher sees all three squadrons' stories, and so does `hd logs -f --fleet`
        admiral.commit(work, V2)
        with following(third) as followed:
            pushed = admiral.git("push", "hyperdrive", "master", cwd=work)
            for d, said in ((first, "is live"), (second, "failed"), (third, "held by rollout")):
                wait_for(
                    lambda d=d, said=said: any(
                        line.startswith(f"[{name(d)}] ") and said in line for line in followed
                    ),
                    60,
                    0.2,
                    f"`hd logs -f --fleet` showing {said!r} on {name(d)}",
                )
        told = pushed.stdout + pushed.stderr
        assert f"remote: [{name(second)}] " in told, told
        assert f"remote: [{name(third)}] -----> held by rollout" in told, told
        assert f"[{name(first)}]" not in told  # the squadron pushed to: as alone
        serves(first, "v2\n")
        for d in (second, third):
            serves(d, "v1\n")  # the old ship keeps serving
        assert second.wait_event("RolloutStopped", 30, app="site")
        held = third.wait_event("RolloutHeld", 30, app="site")
        started = {e.get("deploy") for e in third.events() if e.get("event") == "DeployStarted"}
        assert held["deploy"] not in started  # the third never started v2

        def stopped() -> dict | None:
            shown = json.loads(third.hd("fleet", "status", "--json").stdout)
            (site,) = [row for row in shown["apps"] if row["app"] == "site"]
            parts = {n: cell.get("rollout") for n, cell in site["squadrons"].items()}
            return (
                site
                if parts
                == {
                    name(first): "live",
                    name(second): "failed",
                    name(third): "held",
                }
                else None
            )

        site = wait_for(stopped, 60, 0.5, "the rollout shown as stopped")
        assert site["rollout"]["state"] == "stopped"
        assert site["rollout"]["waves"] == [[name(d)] for d, _ in made]

        # one view of the fleet's events, each line tagged with its squadron
        logs = third.hd("logs", "--fleet", "site", "-n", "all").stdout
        for d, _ in made:
            assert f"[{name(d)}] " in logs, logs

        # the same over the public SSE endpoint, each event carrying its squadron
        token = second.hd("token", "watcher").stdout.strip()
        url = f"http://127.0.0.1:{second.api_port}/events?fleet=1&follow=0&history=all&app=site"
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read().decode()
        sent = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]
        assert {e["squadron"] for e in sent} == {name(d) for d, _ in made}
        assert "RolloutHeld" in {e["event"] for e in sent if e["squadron"] == name(third)}

        # `hd rollback --fleet` goes to every squadron, waves or not: the first is on v1 again
        third.hd("rollback", "site", "--fleet", timeout=120, check=False)
        serves(first, "v1\n")
        for d in (second, third):
            serves(d, "v1\n")
