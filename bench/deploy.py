"""Push accepted → new content served through nginx, stage by stage (static app, busybox hull).

A real `hd serve` (its own name, subnet, nginx); each round commits new content and either
runs a real `git push` over SSH (clock starts when git starts) or updates the hosted repo and
writes the spool trigger as post-receive does (clock starts when the trigger is written).
A thread GETs /<app>/ every 2 ms and stops the clock at the first answer with the new content.
The stages come from the events' `ms` fields; Hyperdrive's own overhead is DeployQueued →
TrafficSwapped less the build and the health stage (the app's own start-up). Run as root:
    .venv/bin/python bench/deploy.py [--pushes 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from tempfile import TemporaryDirectory

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hyperdrive.triggers import RefUpdate, Trigger, write_incoming
from tests.conftest import Daemon, open_for_ships
from tests.e2e.squadron import (
    Admiral,
    AppRepo,
    git,
    http_get,
    keygen,
    make_squadron,
    settled,
    teardown,
    wait_outcome,
)

APP = "site"
WALL_START: dict[str, float] = {}  # sha -> time.time() when its git push started
STAGES = ("queue", "export", "assemble", "build", "start", "health", "swap", "drain", "total")


class Watch(threading.Thread):
    """Polls the app until it serves `body`; `.seconds` is the time from `t0` to that answer."""

    def __init__(self, port: int, app: str, body: str, timeout: float = 60) -> None:
        super().__init__(daemon=True)
        self.port, self.app, self.body, self.timeout = port, app, body, timeout
        self.t0 = time.monotonic()
        self.seconds: float | None = None

    def run(self) -> None:
        deadline = self.t0 + self.timeout
        while time.monotonic() < deadline:
            try:
                if http_get(self.port, f"/{self.app}/", timeout=2) == (200, self.body):
                    self.seconds = time.monotonic() - self.t0
                    return
            except OSError:
                pass
            time.sleep(0.002)


def ts(event: dict) -> float:
    return datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()


def stages(d: Daemon, sha: str) -> dict[str, float]:
    """Each stage's ms for the deploy of `sha`; queue = trigger received → deploy started."""
    events = [e for e in d.events() if e.get("sha") == sha]
    by = {e["event"] if e["event"] != "StageFinished" else e["stage"]: e for e in events}
    got = {
        "export": by["export"]["ms"],
        "assemble": by["ShipAssembled"]["ms"],
        "build": by["ShipBuilt"]["ms"] if "ShipBuilt" in by else 0,
        "start": by["ShipStarted"]["ms"],
        "health": by["ShipHealthy"]["ms"],
        "swap": by["TrafficSwapped"]["ms"],
        "drain": by["ShipDrained"]["ms"] if "ShipDrained" in by else 0,
        "total": by["DeployFinished"]["ms"],  # after the drain
    }
    got["queue"] = (ts(by["DeployStarted"]) - ts(by["DeployQueued"])) * 1000
    # Hyperdrive's own part: queued → traffic swapped, less the build and the app's own start-up
    # (the health stage waits for it); the drain after the swap serves the old ship's clients
    swapped = (ts(by["TrafficSwapped"]) - ts(by["DeployQueued"])) * 1000
    got["overhead"] = swapped - got["build"] - got["health"]
    if sha in WALL_START:  # git push started → the daemon has the trigger (ssh, git, hook)
        got["push→queued"] = (ts(by["DeployQueued"]) - WALL_START[sha]) * 1000
    return got


def ssh_round(d: Daemon, admiral: Admiral, work: Path, i: int) -> tuple[float, str]:
    body = f"ssh push {i}\n"
    admiral.commit(work, {"index.html": body})
    sha = admiral.git("rev-parse", "HEAD", cwd=work).stdout.strip()
    watch = Watch(d.http_port, APP, body)
    watch.start()
    WALL_START[sha] = time.time()
    admiral.git("push", "-q", "hyperdrive", "master", cwd=work)
    watch.join()
    assert watch.seconds is not None, f"push {i} was never served"
    settled(d)  # the previous deploy's drain is over: pushes are not back to back here
    return watch.seconds, sha


def trigger_round(d: Daemon, repo: AppRepo, i: int) -> tuple[float, str]:
    body = f"trigger {i}\n"
    sha = repo.commit({"index.html": body})
    old = (
        git("rev-parse", "--verify", "-q", "refs/heads/master^{commit}", cwd=repo.bare)
        if i
        else "0" * 40
    )
    git("push", "-q", "-f", str(repo.bare), f"{sha}:refs/heads/master", cwd=repo.dir)
    trigger = Trigger.push(repo.app, RefUpdate("refs/heads/master", old, sha), "bench")
    watch = Watch(d.http_port, repo.app, body)
    watch.start()
    write_incoming(d.data / "spool", trigger)
    watch.join()
    wait_outcome(d, trigger.id)
    assert watch.seconds is not None, f"trigger {i} was never served"
    settled(d)
    return watch.seconds, sha


def row(name: str, values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return f"{name:>26}: p50 {statistics.median(values):7.0f} ms   p90 {p90:7.0f} ms"


def report(title: str, served: list[float], rows: list[dict[str, float]]) -> None:
    print(f"\n{title} ({len(served)} deploys)")
    print(row("push → new content served", [s * 1000 for s in served]))
    if "push→queued" in rows[0]:
        print(row("git push → DeployQueued", [r["push→queued"] for r in rows]))
    for stage in STAGES:
        print(row(f"stage {stage}", [r[stage] for r in rows]))
    print(row("overhead (queued→swapped−build−health)", [r["overhead"] for r in rows]))


def main(args: argparse.Namespace) -> None:
    with TemporaryDirectory(prefix="hd-bench-deploy-") as tmp:
        open_for_ships(tmp)
        root = Path(tmp)
        d = make_squadron(root / "hd", HYPERDRIVE_DRAIN_SECONDS=str(args.drain))
        key = keygen(root / "admiral")
        (d.root / "admirals.pub").write_text(Path(f"{key}.pub").read_text())
        try:
            d.start()
            admiral = Admiral(d, key)
            work = admiral.working_copy(root / "site", APP)
            ssh_round(d, admiral, work, -1)  # first deploy: hull, nginx route, bridge
            results = [ssh_round(d, admiral, work, i) for i in range(args.pushes)]
            report("git push over SSH", [r[0] for r in results], [stages(d, r[1]) for r in results])
            # a repo made directly (no hooks): the trigger is written by this process
            repo = AppRepo(d, "direct", root / "direct")
            trigger_round(d, repo, 0)  # its first deploy: a new nginx route
            results = [trigger_round(d, repo, i) for i in range(1, args.pushes + 1)]
            report("trigger written", [r[0] for r in results], [stages(d, r[1]) for r in results])
        finally:
            teardown(d)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pushes", type=int, default=10)
    parser.add_argument("--drain", type=float, default=3.0)
    main(parser.parse_args())
