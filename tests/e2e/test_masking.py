"""Secrets out of sight (issue 14): an app's build prints an include, a `*_TOKEN` value and a
value its orders name with `secret`; every text Hyperdrive shows carries only the mask — the
pushing git client's `remote:` lines, `hd logs`, `ssh … logs`, events.jsonl, setup.log, /events
and a failed build's DeployFailed message. Real daemon, git over SSH, LXC (busybox) and nginx.
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import Daemon, wait_for
from tests.e2e.squadron import Admiral, admiral_squadron, http_get

pytestmark = [pytest.mark.root, pytest.mark.lxc, pytest.mark.nginx, pytest.mark.slow]

MASK = "********"
INCLUDED = "sk_inc_7d3b2e91"  # from $DATA/includes/payments.env
TOKEN = "tok-e2e-5f1c9a40"  # export API_TOKEN=… (the name says secret)
NAMED = "opensesame-e2e"  # export DB_WORD=… plus `secret DB_WORD`
SECRETS = (INCLUDED, TOKEN, NAMED)
ORDERS = (
    f"export API_TOKEN={TOKEN}\nexport DB_WORD={NAMED}\nexport GREETING=hello-there\n"
    "secret DB_WORD\nhealthcheck / 10\n"
)
PRINT = 'echo "include=$STRIPE token=$API_TOKEN word=$DB_WORD greeting=$GREETING"\n'
PROCFILE = 'web: busybox httpd -f -p "$PORT" -h /app/public\n'


def sse(d: Daemon) -> str:
    """Every stored event as /events streams it to an admiral's token."""
    token = d.hd("token", "alice").stdout.strip()
    url = f"http://127.0.0.1:{d.api_port}/events?follow=0&history=all"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(response.read().decode())


def push_app(admiral: Admiral, work: Path, build: str) -> str:
    """Commit a build script and push; the whole push output (the deploy's `remote:` lines)."""
    (work / "bin").mkdir(exist_ok=True)
    (work / "bin" / "build").write_text(build)
    os.chmod(work / "bin" / "build", 0o755)
    admiral.commit(work, {"bin/build": build, "Procfile": PROCFILE})
    pushed = admiral.git("push", "hyperdrive", "HEAD:master", cwd=work, check=False)
    return pushed.stdout + pushed.stderr


def everything_shown(d: Daemon, admiral: Admiral) -> dict[str, str]:
    shown = {
        "hd logs": d.hd("logs", "-n", "all").stdout + d.hd("logs", "--json", "-n", "all").stdout,
        "ssh logs": admiral.ssh("logs", "-n", "all").stdout,
        "events.jsonl": (d.data / "events.jsonl").read_text(),
        "/events": sse(d),
        "daemon log": d.log(),
    }
    for path in (d.data / "lxc").glob("*/setup.log"):
        shown[str(path)] = path.read_text()
    return shown


def test_secrets_a_build_prints_are_masked_everywhere_hyperdrive_shows_text(
    tmp_path: Path,
) -> None:
    with admiral_squadron(tmp_path) as (d, admiral):
        (d.data / "includes").mkdir(parents=True, exist_ok=True)
        (d.data / "includes" / "payments.env").write_text(f"STRIPE={INCLUDED}\n")
        hq = admiral.working_copy(tmp_path / "hq", "headquarters")
        key = Path(f"{admiral.key}.pub").read_text()
        admiral.commit(hq, {"authorized_keys/admiral.pub": key, "web/orders": ORDERS})
        admiral.git("push", "hyperdrive", "master", cwd=hq)

        work = admiral.working_copy(tmp_path / "web", "web")
        build = f"#!/bin/sh\nmkdir -p public\necho served > public/index.html\n{PRINT}"
        good = push_app(admiral, work, build)
        wait_for(lambda: http_get(d.http_port, "/web/") == (200, "served\n"), 60, 0.2, "web")
        bad = push_app(admiral, work, f"#!/bin/sh\n{PRINT}exit 3\n")
        failed = d.wait_event("DeployFailed", timeout=60, app="web", stage="build")
        shown = {"push output": good + bad, **everything_shown(d, admiral)}
        served = http_get(d.http_port, "/web/")

    masked = f"include={MASK} token={MASK} word={MASK} greeting=hello-there"
    remote = [line for line in good.splitlines() if line.startswith("remote:")]
    assert any(line.split(None, 1)[1].strip() == masked for line in remote), good
    assert masked in failed["message"], failed
    assert "build exited 3" in failed["message"]
    assert served == (200, "served\n"), "the failed build left the live ship serving"
    setup_logs = [where for where in shown if where.endswith("setup.log")]
    assert len(setup_logs) >= 2, shown.keys()
    for where, text in shown.items():
        for secret in SECRETS:
            assert secret not in text, f"{secret} shown in {where}"
    for where in ("hd logs", "ssh logs", "events.jsonl", "/events", *setup_logs):
        assert masked in shown[where], where
    build_lines = [json.loads(line) for line in shown["events.jsonl"].splitlines()]
    outputs = [e["message"] for e in build_lines if e["event"] == "BuildOutput"]
    assert outputs.count(masked) == 2, outputs
