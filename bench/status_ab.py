"""`hd status --json` against a real idle daemon: interpreter start, imports, one GET /status.

Run: .venv/bin/python bench/status_ab.py [OTHER_TREE] [--runs 30]

Each run is `python -m hyperdrive status --json` with PYTHONPATH at a tree, its output checked
to be the squadron's status. With OTHER_TREE (another checkout, e.g. `git archive main | tar -x
-C /tmp/main`) the two trees alternate run by run against the same daemon (this tree's), so a
loaded machine moves both alike. Printed: median wall time and CPU time (the child's utime +
stime), and `python -c pass`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import make_daemon, open_for_ships, remove_host_state, stop_nginx_under  # noqa: E402


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall ms, CPU ms, stdout) of one child process, run in / so that no tree is its cwd."""
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    done = subprocess.run(
        argv, env=env, cwd="/", check=True, capture_output=True, text=True, timeout=60
    )
    wall, after = (
        (time.perf_counter() - started) * 1000,
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1000
    return wall, cpu, done.stdout


def status_run(tree: Path, env: dict[str, str]) -> tuple[float, float]:
    """One `hd status --json` of `tree`'s code; it must print the squadron's status."""
    argv = [sys.executable, "-m", "hyperdrive", "status", "--json"]
    wall, cpu, out = timed(argv, env | {"PYTHONPATH": str(tree)})
    assert "apps" in json.loads(out), f"{tree}: {out[:200]}"
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("other", type=Path, nargs="?")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    trees = {"this": ROOT} | ({"other": args.other.resolve()} if args.other else {})
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory(prefix="hd-status-") as tmp:
        open_for_ships(tmp)
        daemon = make_daemon(Path(tmp) / "hd")
        daemon.start()
        try:
            probe = [sys.executable, "-c", "import hyperdrive; print(hyperdrive.__file__)"]
            for tree in trees.values():
                found = timed(probe, daemon.env | {"PYTHONPATH": str(tree)})[2]
                assert found.startswith(str(tree)), f"{tree}'s code is not the one run: {found}"
            for run in range(args.runs):
                for name in list(trees) if run % 2 == 0 else list(trees)[::-1]:
                    results[name].append(status_run(trees[name], daemon.env))
            bare = [timed([sys.executable, "-c", "pass"], daemon.env)[:2] for _ in range(15)]
        finally:
            daemon.stop()
            stop_nginx_under(Path(tmp))
            remove_host_state(daemon.env["HYPERDRIVE_NAME"])
    for name, runs in results.items():
        wall, cpu = (statistics.median(r[i] for r in runs) for i in (0, 1))
        print(f"{name:6} hd status --json: {wall:6.1f} ms wall, {cpu:6.1f} ms CPU")
    wall, cpu = (statistics.median(r[i] for r in bare) for i in (0, 1))
    print(f"python -c pass: {wall:.1f} ms wall, {cpu:.1f} ms CPU; load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
