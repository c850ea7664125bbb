"""Two source trees' webhook receivers side by side: which one costs less per delivery.

Run: .venv/bin/python bench/webhooks_ab.py OTHER_TREE [--rounds 8] [--seconds 3]

OTHER_TREE is another checkout of Hyperdrive (e.g. `git archive main | tar -x -C /tmp/main`);
each tree's receiver runs as its own process (`bench/webhooks.py --serve` of this tree, with
HD_BENCH_TREE naming whose hyperdrive package it imports), and wrk rounds alternate between
them, so a shared machine's load hits both alike. Printed per round and as medians: accepted
req/s and the receiver's own CPU µs per 202, and the paired CPU ratio (other ÷ this).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from webhooks import measured  # noqa: E402

from tests.conftest import free_port  # noqa: E402

Round = dict[str, float]


@contextlib.contextmanager
def receiver(tree: Path, spool: Path) -> Iterator[tuple[int, str]]:
    """The receiver with `tree`'s hyperdrive package: (pid, URL)."""
    port = free_port()
    env = {**os.environ, "HD_BENCH_TREE": str(tree)}
    argv = [sys.executable, str(ROOT / "bench/webhooks.py"), "--serve", str(port), str(spool)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=tree, env=env)
    try:
        assert proc.stdout is not None
        if not proc.stdout.readline().startswith("ready"):
            raise RuntimeError(f"the receiver of {tree} did not start")
        yield proc.pid, f"http://127.0.0.1:{port}/hooks/github"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("other", type=Path)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=3)
    args = parser.parse_args()
    trees = {"other": args.other.resolve(), "this": ROOT}
    print(
        f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}; other = {trees['other']}"
    )
    with tempfile.TemporaryDirectory(prefix="hd-ab-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        live = {n: stack.enter_context(receiver(t, work / f"spool-{n}")) for n, t in trees.items()}
        results: dict[str, list[Round]] = {n: [] for n in trees}
        for i in range(args.rounds):
            for name in list(trees) if i % 2 == 0 else list(trees)[::-1]:
                pid, url = live[name]
                results[name].append(measured(url, pid, f"ab{i}{name}", args.seconds, work))
            said = ", ".join(
                f"{n} {r[-1]['rps']:,.0f}/s {r[-1]['cpu_us']:.0f} µs" for n, r in results.items()
            )
            print(f"  round {i + 1}: {said}")
    report(results)


def report(results: dict[str, list[Round]]) -> None:
    for name, rounds in results.items():
        rps = statistics.median(r["rps"] for r in rounds)
        cpu = statistics.median(r["cpu_us"] for r in rounds)
        print(f"{name:6} median {rps:8,.0f} req/s {cpu:6.0f} µs CPU per 202")
    pairs = [
        a["cpu_us"] / b["cpu_us"] for a, b in zip(results["other"], results["this"], strict=True)
    ]
    shown = " ".join(f"{p:.2f}" for p in pairs)
    print(f"CPU other ÷ this, per round: {shown}; median {statistics.median(pairs):.2f}")
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
