"""`hd rollback APP` → the previous version served through nginx (static app, busybox hull).

Two versions are deployed, then `hd rollback` is run back and forth: each rollback starts the
kept (stopped) ship again, health-checks it and swaps traffic to it. The clock starts when
`hd rollback` is started and stops at the first GET (polled every 2 ms) that returns the
version rolled back to. Run as root:
    .venv/bin/python bench/rollback.py [--rounds 6]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path
from tempfile import TemporaryDirectory

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import Daemon, open_for_ships
from tests.e2e.squadron import AppRepo, http_get, make_squadron, settled, teardown, wait_outcome


def served_after(d: Daemon, body: str, action: threading.Thread) -> float:
    """Seconds from starting `action` to the first GET of /site/ that answers `body`."""
    t0 = time.monotonic()
    action.start()
    deadline = t0 + 30
    while time.monotonic() < deadline:
        try:
            if http_get(d.http_port, "/site/", timeout=2) == (200, body):
                return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.002)
    raise AssertionError(f"{body!r} was not served within 30 s")


def main(args: argparse.Namespace) -> None:
    with TemporaryDirectory(prefix="hd-bench-rollback-") as tmp:
        open_for_ships(tmp)
        d = make_squadron(Path(tmp) / "hd", HYPERDRIVE_DRAIN_SECONDS=str(args.drain))
        try:
            d.start()
            repo = AppRepo(d, "site", Path(tmp) / "site")
            for body in ("one\n", "two\n"):
                outcome = wait_outcome(d, repo.push_trigger(repo.commit({"index.html": body})))
                assert outcome["event"] == "DeployFinished", outcome
            settled(d)
            took, events = [], []
            for i in range(args.rounds):
                body = "one\n" if i % 2 == 0 else "two\n"
                rollback = threading.Thread(target=lambda: d.hd("rollback", "site", timeout=60))
                took.append(served_after(d, body, rollback))
                rollback.join(60)
                settled(d)  # the ship rolled away from is drained and stopped again
                finished = [e for e in d.events() if e["event"] == "DeployFinished"]
                events.append(finished[-1]["ms"])
            ms = [t * 1000 for t in took]
            print(
                f"{args.rounds} rollbacks to a stopped kept ship: `hd rollback` → old version "
                f"served p50 {statistics.median(ms):.0f} ms, max {max(ms):.0f} ms; "
                f"the rollback's own DeployFinished ms p50 {statistics.median(events):.0f} "
                "(start, health, swap and the post-swap check)"
            )
        finally:
            teardown(d)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--drain", type=float, default=1.0)
    main(parser.parse_args())
