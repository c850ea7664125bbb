"""The Procfile's processes on the busybox hull: a killed worker back, and `hd run`.

* restart: a worker writes its pid to /app/heartbeat every 50 ms; it is killed with SIGKILL
  from outside (lxc-attach) and the clock stops when the heartbeat names a new pid (the
  supervisor's 1 s first backoff is in it: a worker that ran over 30 s starts over at 1 s).
* run: `hd run APP -- true`, start to exit: a one-off ship made from the live one (snapshot,
  copy of /app, start), the command, and the ship destroyed.
Run as root:
    .venv/bin/python bench/procfile.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import Daemon, open_for_ships
from tests.e2e.squadron import AppRepo, make_squadron, settled, teardown, wait_outcome

WORKER = "worker: while :; do echo $$ > /app/heartbeat; sleep 0.05; done\n"
WEB = "web: busybox httpd -f -p $PORT -h /app\n"


def live_ship(d: Daemon) -> str:
    record = json.loads((d.data / "records" / "apps" / "procs.json").read_text())
    return str(record["live"])


def beat(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def restart_s(d: Daemon, ship: str) -> float:
    """SIGKILL the worker; seconds until a new pid beats."""
    heartbeat = d.data / "lxc" / ship / "app" / "heartbeat"
    old = beat(heartbeat)
    lxc = ["lxc-attach", "-P", str(d.var / "containers"), "-n", ship, "--"]
    t0 = time.monotonic()
    subprocess.run([*lxc, "kill", "-KILL", old], check=True, timeout=30)
    while time.monotonic() < t0 + 30:
        now = beat(heartbeat)
        if now and now != old:
            return time.monotonic() - t0
        time.sleep(0.005)
    raise AssertionError("the worker did not come back within 30 s")


def run_s(d: Daemon) -> float:
    t0 = time.monotonic()
    ran = d.hd("run", "procs", "--", "true", timeout=120, check=False)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    return time.monotonic() - t0


def main(args: argparse.Namespace) -> None:
    with TemporaryDirectory(prefix="hd-bench-procfile-") as tmp:
        open_for_ships(tmp)
        d = make_squadron(Path(tmp) / "hd")
        try:
            d.start()
            repo = AppRepo(d, "procs", Path(tmp) / "procs")
            files = {"Procfile": WEB + WORKER, "index.html": "hi\n"}
            outcome = wait_outcome(d, repo.push_trigger(repo.commit(files)))
            assert outcome["event"] == "DeployFinished", outcome
            settled(d)
            ship = live_ship(d)
            restarts = []
            for _ in range(args.rounds):
                time.sleep(31)  # ran past the backoff reset: the first delay again
                restarts.append(restart_s(d, ship))
            runs = [run_s(d) for _ in range(args.rounds)]
        finally:
            teardown(d)
    for name, values in (("worker back after SIGKILL", restarts), ("hd run -- true", runs)):
        shown = " ".join(f"{v:.2f}" for v in values)
        print(f"{name}: median {statistics.median(values):.2f} s ({shown})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    main(parser.parse_args())
