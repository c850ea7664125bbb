"""Restarts and upgrades under a real systemd: requests served and failed, time to healthy.

Boots the e2e test's systemd host (a Debian LXC container with systemd as PID 1, see
tests/e2e/systemd_host.py), installs Hyperdrive with ./bootstrap, pushes a static app, then
runs `systemctl restart hyperdrive` ROUNDS times and `./bootstrap` (the upgrade) ROUNDS times,
2.5 s apart (systemd's start limit), while a client on the host GETs the app on a new
connection every 10 ms. Run as root:
    .venv/bin/python bench/systemd_restart.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from tempfile import TemporaryDirectory

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import wait_for
from tests.e2e.squadron import Prober
from tests.e2e.systemd_host import SystemdHost, systemd_host


def timed(host: SystemdHost, action: Callable[[], object]) -> tuple[float, float]:
    """(seconds the action took, seconds from its start until /healthz answered again)."""
    before, start = host.main_pid(), time.monotonic()
    action()
    done = time.monotonic()
    wait_for(lambda: host.main_pid() not in (0, before), 60, 0.01, "a new daemon")
    wait_for(host.healthy, 60, 0.01, "/healthz")
    return done - start, time.monotonic() - start


def phase(host: SystemdHost, name: str, action: Callable[[], object], rounds: int) -> None:
    took, healthy = [], []
    with Prober(80, "/site/", step=0.01, address=host.address, limit=900) as client:
        for _ in range(rounds):
            a, b = timed(host, action)
            took.append(a)
            healthy.append(b)
            time.sleep(2.5)  # systemd refuses a 6th start within 10 s (StartLimitBurst)
    print(
        f"{name}: {rounds} rounds, {client.served} requests served, "
        f"{len(client.failures)} failed; command {statistics.median(took):.2f} s median, "
        f"healthy again after {statistics.median(healthy):.2f} s median "
        f"({min(healthy):.2f}–{max(healthy):.2f})"
    )
    for failure in client.failures[:5]:
        print(f"  {failure}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f}")
    with TemporaryDirectory() as tmp, systemd_host(Path(tmp)) as host:
        start = time.monotonic()
        host.bootstrap("--admiral-key", "/root/admiral.pub")
        print(f"first ./bootstrap (offline, packages present): {time.monotonic() - start:.1f} s")
        host.push(host.root / "site", "site", {"index.html": "bench\n"})
        restart = lambda: host.attach("systemctl", "restart", "hyperdrive")  # noqa: E731
        phase(host, "systemctl restart hyperdrive", restart, args.rounds)
        phase(host, "upgrade (./bootstrap again)", host.bootstrap, args.rounds)


if __name__ == "__main__":
    main()
