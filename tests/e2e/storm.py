"""Load while faults happen: signed webhooks at a steady rate, concurrent `git push`es over SSH
to several apps, a client asking every app, and the daemon SIGKILLed in the middle (then
started again, as its supervisor would). Shared by tests/e2e/test_storm.py (short) and
bench/storm.py (the issue's full figure)."""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import Daemon, wait_for
from tests.e2e.squadron import Admiral, http_get, settled
from tests.e2e.test_webhook_deploy import forge_app, post, push_payload
from tests.fixtures.webhooks.forge import github

OUTCOMES = {"DeployFinished", "DeploySuperseded", "DeployFailed", "TriggerIgnored"}


@dataclass
class Report:
    webhooks_sent: int = 0
    acknowledged: dict[str, str] = field(default_factory=dict)  # deploy id -> delivery
    refused: dict[int, int] = field(default_factory=dict)  # status (0: no answer) -> count
    lost: list[str] = field(default_factory=list)  # acknowledged, but never an outcome
    pushes: list[int] = field(default_factory=list)  # git push exit codes
    push_errors: list[str] = field(default_factory=list)  # what git said of those that failed
    pushes_in: int = 0  # pushes whose ref landed and whose deploy was queued
    newest: dict[str, bool] = field(default_factory=dict)  # app -> serves its newest commit
    requests: int = 0
    failed: list[str] = field(default_factory=list)
    killed_at: float = 0.0
    back_after: float = 0.0


class Client(threading.Thread):
    """GETs every app in turn on new connections; any answer but 200 with a known body fails."""

    def __init__(self, d: Daemon, bodies: dict[str, set[str]]) -> None:
        super().__init__(daemon=True)
        self.d, self.bodies, self.stop = d, bodies, threading.Event()
        self.count, self.failed = 0, []

    def run(self) -> None:
        apps = sorted(self.bodies)
        while not self.stop.is_set():
            app = apps[self.count % len(apps)]
            try:
                status, body = http_get(self.d.http_port, f"/{app}/", timeout=3)
            except OSError as err:
                status, body = 0, str(err)
            if status != 200 or body not in self.bodies[app]:
                self.failed.append(f"{app}: {status} {body[:60]}")
            self.count += 1
            self.stop.wait(0.002)


def body_of(app: str, n: int) -> str:
    return f"{app} version {n}\n"


def pushed_apps(d: Daemon, admiral: Admiral, tmp: Path, apps: list[str]) -> dict[str, Path]:
    """Each app pushed once over SSH and served: its working copy."""
    copies = {}
    for app in apps:
        copies[app] = admiral.working_copy(tmp / "push" / app, app)
        admiral.commit(copies[app], {"index.html": body_of(app, 1)})
        admiral.git("push", "-q", "hyperdrive", "master", cwd=copies[app])
    for app in apps:
        want = (200, body_of(app, 1))
        wait_for(lambda a=app, w=want: http_get(d.http_port, f"/{a}/") == w, 90, 0.1, app)
    return copies


def second_copies(admiral: Admiral, copies: dict[str, Path], per_app: int) -> list[Path]:
    """`per_app` working copies per app, each one commit ahead of the one before: pushed at
    once, the last one's commit is the newest, whatever order they land in."""
    ordered = []
    for app, first in copies.items():
        previous = first
        for n in range(per_app):
            copy = first.parent / f"{app}-{n}"
            admiral.git("clone", "-q", str(previous), str(copy), cwd=first.parent)
            admiral.git("remote", "add", "hyperdrive", admiral.remote(app), cwd=copy)
            admiral.commit(copy, {"index.html": body_of(app, n + 2)})
            ordered.append(copy)
            previous = copy
    return ordered


def send_webhooks(d: Daemon, url: str, sha: str, rate: float, seconds: float, r: Report) -> None:
    """`rate` signed GitHub push deliveries a second, each its own body and delivery id."""
    step, t0 = 1.0 / rate, time.monotonic()
    n = 0
    with ThreadPoolExecutor(max_workers=8) as pool:
        while (now := time.monotonic()) < t0 + seconds:
            pool.submit(_deliver, d, url, sha, r)
            n += 1
            time.sleep(max(0.0, t0 + n * step - now))
    r.webhooks_sent = n


def _deliver(d: Daemon, url: str, sha: str, r: Report) -> None:
    obj = json.loads(push_payload(url, "0" * 40, sha))
    obj["hook_id"] = uuid.uuid4().int % 10**12  # a body of its own: not a replay
    headers, body = github(json.dumps(obj).encode())
    try:
        status, answer = post(d, "github", headers, body)
    except OSError:
        status, answer = 0, {}
    if status == 202 and answer.get("status") == "queued":
        for deploy in answer["deploys"].values():
            r.acknowledged[deploy] = headers["X-GitHub-Delivery"]
    else:
        r.refused[status] = r.refused.get(status, 0) + 1


def kill_and_restart(d: Daemon, r: Report, t0: float) -> None:
    assert d.proc is not None
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    r.killed_at = time.monotonic() - t0
    d.start(timeout=60)
    r.back_after = time.monotonic() - t0 - r.killed_at


def storm(
    d: Daemon,
    admiral: Admiral,
    tmp: Path,
    *,
    apps: int = 10,
    per_app: int = 2,
    rate: float = 100,
    seconds: float = 60,
    kill_after: float = 0.3,
) -> Report:
    r = Report()
    url, _, sha = forge_app(d, admiral, tmp, "site version 1\n")
    names = [f"app{n:02d}" for n in range(apps)]
    copies = pushed_apps(d, admiral, tmp, names)
    pushes = second_copies(admiral, copies, per_app)
    bodies = {app: {body_of(app, n) for n in range(1, per_app + 2)} for app in names}
    bodies["site"] = {"site version 1\n"}
    client = Client(d, bodies)
    client.start()
    t0 = time.monotonic()
    sender = threading.Thread(target=send_webhooks, args=(d, url, sha, rate, seconds, r))
    sender.start()
    time.sleep(seconds * 0.3)
    before = max(e["seq"] for e in d.events())
    with ThreadPoolExecutor(max_workers=len(pushes)) as pool:
        results = [
            pool.submit(admiral.git, "push", "-q", "hyperdrive", "master", cwd=c, check=False)
            for c in pushes
        ]
        # once a push is in and its deploy under way; the others may still be transferring
        wait_for(lambda: _deploying(d, names, before), 120, 0.05, "a pushed deploy started")
        time.sleep(kill_after)
        kill_and_restart(d, r, t0)
        r.pushes = [f.result().returncode for f in results]
        done = [f.result() for f in results]
        r.push_errors = [p.stderr.strip()[-300:] for p in done if p.returncode]
        # in, and its deploy queued, even when the kill then cut the stream of the deploy
        r.pushes_in = sum(1 for p in done if p.returncode == 0 or "-----> queued " in p.stderr)
    # a push the kill cut short failed at the pusher's end, who pushes again
    for newest in pushes[per_app - 1 :: per_app]:
        admiral.git("push", "-q", "hyperdrive", "master", cwd=newest)
    sender.join(seconds + 60)
    _finish(d, r, names, per_app)
    client.stop.set()
    client.join(10)
    r.requests, r.failed = client.count, client.failed
    return r


def _finish(d: Daemon, r: Report, names: list[str], per_app: int) -> None:
    """Everything settles; every acknowledged trigger has an outcome; every app its newest."""
    newest = {app: (200, body_of(app, per_app + 1)) for app in names}
    wait_for(lambda: all(http_get(d.http_port, f"/{a}/") == w for a, w in newest.items()),
             300, 0.2, "every app on its newest commit")  # fmt: skip
    settled(d, timeout=300)
    seen = {e.get("deploy") for e in every_event(d) if e.get("event") in OUTCOMES}
    r.lost = sorted(set(r.acknowledged) - seen)
    r.newest = {a: http_get(d.http_port, f"/{a}/") == w for a, w in newest.items()}


def every_event(d: Daemon) -> list[dict]:
    """The live event log and its rotated files."""
    found = []
    for path in sorted(d.data.glob("events.jsonl*")):
        for line in path.read_text().splitlines():
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


def _deploying(d: Daemon, apps: list[str], after: int) -> bool:
    """Whether a deploy of one of `apps` started after event `after`."""
    return any(
        e["event"] == "DeployStarted" and e.get("app") in apps and e["seq"] > after
        for e in d.events()
    )
