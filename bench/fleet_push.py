"""A `git push` over SSH to squadron A → the new content served on every squadron of a fleet
(real daemons, busybox hull, `hd fleet init` on A, `hd fleet join` on B and C), beside the same
push to a squadron alone (the peer).

Each round commits new content and runs a real `git push -o nowait` to A; the clock starts
when git starts and stops, per squadron, at the first GET of /site/ (every 5 ms) that answers
with the new content; "all" is the slowest of the three. Run as root:
    .venv/bin/python bench/fleet_push.py [--pushes 10]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import Daemon, open_for_ships, wait_for
from tests.e2e.squadron import Admiral, admiral_squadron, http_get
from tests.e2e.test_fleet import connected, fleet_ports, init, stop_node

APP = "site"


def served_within(d: Daemon, text: str, start: float, limit: float = 120) -> float:
    while time.perf_counter() - start < limit:
        if http_get(d.http_port, f"/{APP}/", timeout=1) == (200, text):
            return time.perf_counter() - start
        time.sleep(0.005)
    said = [f"{e.get('event')}: {e.get('message')}" for e in d.events()[-15:]]
    name = d.env["HYPERDRIVE_NAME"]
    raise AssertionError(f"{name} did not serve {text!r} in {limit} s:\n" + "\n".join(said))


def rounds(admiral: Admiral, work: Path, squadrons: list[Daemon], pushes: int) -> list[float]:
    """The seconds from `git push` to the slowest squadron serving it, one per push."""
    slowest = []
    for n in range(pushes + 1):  # the first push makes the app: not timed
        text = f"round {n} at {time.time()}\n"
        admiral.commit(work, {"index.html": text})
        start = time.perf_counter()
        admiral.git("push", "-q", "-o", "nowait", "hyperdrive", "master", cwd=work)
        times = [served_within(d, text, start) for d in squadrons]
        if n:
            slowest.append(max(times))
    return slowest


def show(label: str, values: list[float]) -> None:
    p50 = statistics.median(values)
    print(f"{label}: p50 {p50:.2f} s, max {max(values):.2f} s ({len(values)} pushes)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pushes", type=int, default=10)
    args = parser.parse_args()
    with TemporaryDirectory(prefix="hd-bench-fleet-") as tmp, contextlib.ExitStack() as stack:
        root = open_for_ships(tmp)
        made = [stack.enter_context(admiral_squadron(root / n, **fleet_ports())) for n in "abc"]
        (a, admiral), b, c = made[0], made[1][0], made[2][0]
        print("squadrons:", *(d.env["HYPERDRIVE_NAME"] for d in (a, b, c)))
        stack.callback(stop_node, a)
        _, url, secret = init(a)
        for d in (b, c):
            d.hd("fleet", "join", url, "--member", "--secret", secret, timeout=60)
        wait_for(lambda: all(connected(d) for d in (a, b, c)), 60, 0.2, "all in the fleet")
        work = admiral.working_copy(root / "site-fleet", APP)
        show("push → served on all three", rounds(admiral, work, [a, b, c], args.pushes))
        alone, lone_admiral = stack.enter_context(admiral_squadron(root / "alone"))
        work = lone_admiral.working_copy(root / "site-alone", APP)
        show("push → served alone (peer)", rounds(lone_admiral, work, [alone], args.pushes))


if __name__ == "__main__":
    main()
