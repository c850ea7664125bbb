"""Zero downtime across real redeploys, through the whole pipeline (bench/zero_downtime.py
measures the nginx + nftables swap alone).

A real `hd serve` on the busybox hull serves a static app; wrk (keep-alive connections) and
Python clients that open a NEW connection per request GET /site/ through nginx while the app is
redeployed back to back: each round commits new content, writes the push trigger as
post-receive does and waits for DeployFinished (the next deploy then queues behind the old
ship's drain). Run as root:
    .venv/bin/python bench/zero_downtime_deploys.py [--deploys 20] [--drain 1.5]
"""

from __future__ import annotations

import argparse
import http.client
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.zero_downtime import parse_wrk
from tests.conftest import open_for_ships
from tests.e2e.squadron import AppRepo, make_squadron, settled, teardown, wait_outcome


@dataclass
class NewConnections:
    """Clients that open a new connection per request, each in its own thread."""

    port: int
    clients: int = 2
    requests: int = 0
    non_2xx: int = 0
    errors: int = 0
    bodies: dict[str, int] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=self.run, daemon=True) for _ in range(self.clients)]
        for thread in threads:
            thread.start()
        return threads

    def run(self) -> None:
        while not self.stop.is_set():
            status, body = self.one()
            with self.lock:
                self.requests += 1
                if status is None:
                    self.errors += 1
                elif not 200 <= status < 300:
                    self.non_2xx += 1
                else:
                    self.bodies[body] = self.bodies.get(body, 0) + 1

    def one(self) -> tuple[int | None, str]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            connection.request("GET", "/site/", headers={"Connection": "close"})
            response = connection.getresponse()
            return response.status, response.read().decode(errors="replace")
        except (OSError, http.client.HTTPException):
            return None, ""
        finally:
            connection.close()


def redeploys(repo: AppRepo, count: int) -> list[int]:
    """`count` back-to-back deploys; each one's own total ms."""
    took = []
    for i in range(count):
        deploy = repo.push_trigger(repo.commit({"index.html": f"version {i + 1}\n"}))
        outcome = wait_outcome(repo.d, deploy, timeout=120)
        assert outcome["event"] == "DeployFinished", outcome
        took.append(int(outcome["ms"]))
    return took


def main(args: argparse.Namespace) -> int:
    with TemporaryDirectory(prefix="hd-bench-zdd-") as tmp:
        open_for_ships(tmp)
        d = make_squadron(Path(tmp) / "hd", HYPERDRIVE_DRAIN_SECONDS=str(args.drain))
        try:
            d.start()
            repo = AppRepo(d, "site", Path(tmp) / "site")
            first = wait_outcome(d, repo.push_trigger(repo.commit({"index.html": "version 0\n"})))
            assert first["event"] == "DeployFinished", first
            return measure(d.http_port, repo, args)
        finally:
            teardown(d)


def measure(port: int, repo: AppRepo, args: argparse.Namespace) -> int:
    url = f"http://127.0.0.1:{port}/site/"
    wrk = subprocess.Popen(
        ["wrk", "-t1", f"-c{args.connections}", "-d600s", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    fresh = NewConnections(port, args.clients)
    threads = fresh.start()
    time.sleep(1.0)
    started = time.monotonic()
    took = redeploys(repo, args.deploys)
    settled(repo.d, 60)  # the last old ship drained and stopped
    elapsed = time.monotonic() - started
    time.sleep(0.5)
    fresh.stop.set()
    wrk.send_signal(signal.SIGINT)
    out, _ = wrk.communicate(timeout=30)
    for thread in threads:
        thread.join(10)
    result = parse_wrk(out)
    failed = result.non_2xx + result.errors
    ratio = 100.0 * failed / max(result.requests, 1)
    print(
        f"{args.deploys} redeploys in {elapsed:.1f} s (drain {args.drain} s; deploy total p50 "
        f"{sorted(took)[len(took) // 2]} ms)\n"
        f"keep-alive (wrk -c{args.connections}): {result.requests} requests, "
        f"{result.non_2xx} non-2xx, {result.errors} socket errors = {ratio:.4f}%\n"
        f"new connection per request ({args.clients} clients): {fresh.requests} requests, "
        f"{fresh.non_2xx} non-2xx, {fresh.errors} errors\n"
        f"versions seen by new connections: {len(fresh.bodies)}"
    )
    if args.verbose:
        print(out)
    ok = fresh.non_2xx == 0 and fresh.errors == 0 and ratio <= 0.01
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deploys", type=int, default=20)
    parser.add_argument("--drain", type=float, default=1.5)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--verbose", action="store_true")
    sys.exit(main(parser.parse_args()))
