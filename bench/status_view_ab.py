"""Drawing `hd status` for N apps: this tree against another, alternating in one run.

`hd status` without `--json` draws the daemon's answer with rich; this times only that part,
as a user gets it: once, in a fresh process (what rich loads at its first print included).
Each run is a child process with a tree's own imports whose `cmd_status` draws a status of N
apps (the fields a real daemon sends) into a pipe to this process; the trees alternate run by
run, `--runs` each. The daemon's answer comes from a stand-in for the admin client, as the
point is the drawing (bench/status_ab.py times the whole command against a real daemon).
Printed: the median CPU ms of the draw, and whether both trees drew the same text.
    git archive <commit> | tar -x -C /tmp/old
    .venv/bin/python bench/status_view_ab.py /tmp/old [--apps 1,40,100] [--runs 15]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
import hyperdrive.cli as cli

n = int(sys.argv[1])
status = {
    "name": "hdx", "version": "1.0", "pid": 1, "headquarters": "hosted here",
    "headquarters_sha": None, "ssh": "0.0.0.0:2222", "api": "/run/hd.sock", "http_port": 80,
    "pending": 0, "inflight": 0, "hulls": {"busybox": {"current": "hdx-hull-busybox-1"}},
    "apps": [
        {"app": f"app{i:03d}", "ship": f"hdx-app{i:03d}-1a2b3c4", "sha": "1a2b3c4",
         "since": "2026-12-02 02:00 UTC", "url": f"http://host/app{i:03d}/",
         "last_deploy": "finished 312 ms", "orders": "hosted here, PORT 8080, hull busybox"}
        for i in range(n)
    ],
}

class Client:
    def __init__(self, path): pass
    def get(self, path): return json.loads(json.dumps(status))

class Args:
    json = False

class Config:
    socket_path = None

cli.AdminClient = Client
t0 = time.process_time()
cli.cmd_status(Args(), Config())  # into a pipe, as `hd status | less` or a script reading it
sys.stdout.flush()
print((time.process_time() - t0) * 1000, file=sys.stderr)
"""


def run(tree: Path, n: int) -> tuple[float, str]:
    """One draw in a fresh process: its CPU ms and the sha256 of the text."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(n)],
        cwd=tree,  # `-c` puts the working folder first on sys.path
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    text = hashlib.sha256(done.stdout.encode()).hexdigest()
    return float(done.stderr.strip().splitlines()[-1]), text


def main(args: argparse.Namespace) -> None:
    trees = {"this": HERE, "other": args.other}
    for n in (int(x) for x in args.apps.split(",")):
        ms: dict[str, list[float]] = {name: [] for name in trees}
        texts = set()
        for _ in range(args.runs):
            for name, tree in trees.items():
                took, text = run(tree, n)
                ms[name].append(took)
                texts.add(text)
        same = "the same text" if len(texts) == 1 else "DIFFERENT text"
        cells = ", ".join(f"{name} {statistics.median(v):.1f} ms" for name, v in ms.items())
        print(f"{n} apps: CPU of the draw (median) {cells}; {same}", flush=True)
    print(f"load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("other", type=Path, help="another tree (git archive … | tar -x)")
    parser.add_argument("--apps", default="1,40,100")
    parser.add_argument("--runs", type=int, default=15)
    main(parser.parse_args())
