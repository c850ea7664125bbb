"""The guard: a new version that passes its health check, then answers real users 500.

Each round pushes a version whose `/cgi-bin/page` answers 500 (its `/` health check is fine)
and, once that deploy has finished, sends traffic at the page from `--clients` threads (a new
connection per request, as a browser opening a page). The squadron runs with the default
guard (60 s, 20 %, 20 requests). Measured per round: from the first 5xx a client got to the
first answer of the old version, and to the last 5xx (the keep-alive tail); and every answer
after the rollback that is not the old version's 200 (goal: 0). Run as root:
    .venv/bin/python bench/guard.py [--rounds 5] [--clients 4]
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

from tests.conftest import Daemon, open_for_ships, wait_for
from tests.e2e.squadron import AppRepo, http_get, make_squadron, settled, teardown, wait_outcome

GOOD = '#!/bin/sh\necho "Content-Type: text/plain"\necho\necho one\n'
BAD = '#!/bin/sh\necho "Status: 500 Internal Server Error"\necho\necho broken {n}\n'
PAGE = "cgi-bin/page"


class Load:
    """Clients GETting the page until stopped: (monotonic time, status, body) of each answer."""

    def __init__(self, d: Daemon, clients: int) -> None:
        self.d, self.answers = d, list[tuple[float, int, str]]()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)

    def _run(self) -> None:
        while not self.stop.is_set():
            status, body = http_get(self.d.http_port, f"/site/{PAGE}", timeout=3)
            self.answers.append((time.monotonic(), status, body))


def one_round(d: Daemon, repo: AppRepo, n: int, clients: int) -> tuple[float, float, int, int]:
    """(first 5xx → first old answer, first 5xx → last 5xx, bad answers after, requests)."""
    bad = repo.commit({PAGE: BAD.format(n=n)}, executable=(PAGE,))
    outcome = wait_outcome(d, repo.push_trigger(bad))
    assert outcome["event"] == "DeployFinished", outcome
    with Load(d, clients) as load:
        d.wait_event("RolledBack", timeout=30, deploy=outcome["deploy"])
        time.sleep(2)  # the old version serves on, under the same load
    answers = load.answers
    first_bad = next(t for t, status, _ in answers if status >= 500)
    first_old = next(t for t, s, body in answers if t > first_bad and (s, body) == (200, "one\n"))
    last_bad = max(t for t, status, _ in answers if status >= 500)
    after = [(s, body) for t, s, body in answers if t > last_bad]
    wrong = sum(1 for answer in after if answer != (200, "one\n"))
    return first_old - first_bad, last_bad - first_bad, wrong, len(answers)


def main(args: argparse.Namespace) -> None:
    with TemporaryDirectory(prefix="hd-bench-guard-") as tmp:
        open_for_ships(tmp)
        d = make_squadron(
            Path(tmp) / "hd", HYPERDRIVE_DRAIN_SECONDS="3", HYPERDRIVE_GUARD="60 20 20"
        )
        try:
            d.start()
            repo = AppRepo(d, "site", Path(tmp) / "site")
            first = repo.commit({"index.html": "home\n", PAGE: GOOD}, executable=(PAGE,))
            assert wait_outcome(d, repo.push_trigger(first))["event"] == "DeployFinished"
            assert http_get(d.http_port, f"/site/{PAGE}") == (200, "one\n")
            back, tail, wrong, total = [], [], 0, 0
            for n in range(args.rounds):
                settled(d)
                b, t, w, r = one_round(d, repo, n, args.clients)
                back.append(b * 1000)
                tail.append(t * 1000)
                wrong, total = wrong + w, total + r
                wait_for(lambda: http_get(d.http_port, f"/site/{PAGE}")[1] == "one\n", 10)
            print(
                f"{args.rounds} rollbacks by the guard (default 60 s / 20 % / 20 requests, "
                f"{args.clients} clients, {total} requests): first 5xx → old version answers "
                f"p50 {statistics.median(back):.0f} ms, max {max(back):.0f} ms; first 5xx → "
                f"last 5xx p50 {statistics.median(tail):.0f} ms, max {max(tail):.0f} ms; "
                f"answers after the last 5xx that were not the old version's 200: {wrong}"
            )
        finally:
            teardown(d)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=4)
    main(parser.parse_args())
