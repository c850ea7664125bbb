"""Faults around a squadron of static apps (busybox hull), healed with a client asking all along.

Each fault is made `--rounds` times while one client GETs the apps through nginx round-robin
on new connections (no pause between requests): nginx's master `kill -9`, the nft table
deleted, the nft table flushed, a live ship `lxc-stop -k`, and a reboot (daemon, nginx, every
ship, the bridge and the table gone, then `hd serve` started). Time to heal is from the fault
to the first answer after the last failed request (0 when none failed: then the daemon's own
event `ms` is the figure); requests failed are the client's. Run as root:
    .venv/bin/python bench/faults.py [--apps 10] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from tempfile import TemporaryDirectory

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hyperdrive.nginx_reload import orphan_workers
from tests.conftest import Daemon, open_for_ships, wait_for
from tests.e2e.squadron import AppRepo, http_get, make_squadron, settled, teardown, wait_outcome


class Client(threading.Thread):
    """GETs each app in turn; keeps (time, app, ok) of every answer."""

    def __init__(self, d: Daemon, apps: list[str]) -> None:
        super().__init__(daemon=True)
        self.d, self.apps, self.answers = d, apps, []
        self.stop = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            app = self.apps[n % len(self.apps)]
            try:
                # a request to a ship that died hangs: 0.5 s is this figure's granularity there
                ok = http_get(self.d.http_port, f"/{app}/", timeout=0.5) == (200, f"{app}\n")
            except OSError:
                ok = False
            self.answers.append((time.monotonic(), app, ok))
            n += 1

    def since(self, t0: float) -> list[tuple[float, str, bool]]:
        return [a for a in list(self.answers) if a[0] >= t0]


def heal(client: Client, t0: float, settle: float = 1.5) -> tuple[float, int]:
    """(seconds from t0 to the first answer after the last failure, failed requests)."""
    time.sleep(settle)
    seen = client.since(t0)
    failed = [a for a in seen if not a[2]]
    if not failed:
        return 0.0, 0
    after = [a for a in seen if a[0] > failed[-1][0] and a[2]]
    return (after[0][0] - t0 if after else float("inf")), len(failed)


def event_ms(d: Daemon, name: str, after_seq: int) -> int | None:
    found = [e for e in d.events() if e["event"] == name and e["seq"] > after_seq]
    return found[-1].get("ms") if found else None


def last_seq(d: Daemon) -> int:
    return max(e["seq"] for e in d.events())


def master(d: Daemon) -> int:
    return int((d.var / "nginx" / "run" / "nginx.pid").read_text())


def kill_nginx(d: Daemon) -> str:
    os.kill(master(d), signal.SIGKILL)
    return "NginxRestarted"


def nft(*args: str) -> None:
    subprocess.run(["nft", *args], check=True, timeout=10, capture_output=True)


def delete_table(d: Daemon) -> str:
    nft("delete", "table", "ip", d.env["HYPERDRIVE_NAME"])
    return "TrafficTableRestored"


def flush_table(d: Daemon) -> str:
    nft("flush", "table", "ip", d.env["HYPERDRIVE_NAME"])
    return "TrafficTableRestored"


def live_ship(d: Daemon, app: str) -> str:
    status = json.loads(d.hd("status", "--json").stdout)
    return next(a["ship"] for a in status["apps"] if a["app"] == app)


def lxc(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [args[0], "-P", str(d.var / "containers"), *args[1:]]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)


def stop_ship(d: Daemon) -> str:
    lxc(d, "lxc-stop", "-n", live_ship(d, "app00"), "-k")
    return "ShipRevived"


FAULTS: dict[str, Callable[[Daemon], str]] = {
    "nginx master `kill -9`": kill_nginx,
    "nft table deleted (`nft delete table`)": delete_table,
    "nft table flushed (`nft flush table`)": flush_table,
    "live ship `lxc-stop -k` (one app of the client's)": stop_ship,
}


def reboot(d: Daemon, apps: list[str]) -> float:
    """Take away what a reboot takes; seconds from starting `hd serve` to every app served."""
    assert d.proc is not None
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    old = master(d)
    os.kill(old, signal.SIGKILL)
    time.sleep(0.1)
    for pid in orphan_workers(old):
        os.kill(pid, signal.SIGKILL)
    for ship in lxc(d, "lxc-ls", "--running", "-1").stdout.split():
        lxc(d, "lxc-stop", "-n", ship, "-k")
    name = d.env["HYPERDRIVE_NAME"]
    nft("delete", "table", "ip", name)
    subprocess.run(["ip", "link", "del", f"{name}br0"], check=True, timeout=10)
    t0 = time.monotonic()
    d.start()

    def served() -> bool:
        return all(_ok(d, app) for app in apps)

    wait_for(served, 60, 0.005, "every app served after the reboot")
    return time.monotonic() - t0


def _ok(d: Daemon, app: str) -> bool:
    try:
        return http_get(d.http_port, f"/{app}/", timeout=1) == (200, f"{app}\n")
    except OSError:
        return False


def row(name: str, heals: list[float], failed: list[int], events: list[int | None]) -> str:
    ms = [h * 1000 for h in heals]
    said = [e for e in events if e is not None]
    own = f"{statistics.median(said):.0f} / {max(said):.0f}" if said else "—"
    return (
        f"| {name} | {statistics.median(ms):.0f} / {max(ms):.0f} ms | {own} ms | "
        f"{sum(failed)} of {len(failed)} rounds' requests (max {max(failed)} a round) | 0 |"
    )


def main(args: argparse.Namespace) -> None:
    with TemporaryDirectory(prefix="hd-bench-faults-") as tmp:
        open_for_ships(tmp)
        d = make_squadron(Path(tmp) / "hd")
        apps = [f"app{n:02d}" for n in range(args.apps)]
        try:
            d.start()
            deploys = []
            for app in apps:
                repo = AppRepo(d, app, Path(tmp) / app)
                deploys.append(repo.push_trigger(repo.commit({"index.html": f"{app}\n"})))
            for deploy in deploys:
                assert wait_outcome(d, deploy)["event"] == "DeployFinished"
            settled(d)
            client = Client(d, apps)
            client.start()
            print(
                "| fault | time to heal, client (p50 / max) | daemon's event ms | "
                "requests failed | triggers lost |"
            )
            print("|---|---|---|---|---|")
            for name, fault in FAULTS.items():
                heals, failed, events = [], [], []
                for _ in range(args.rounds):
                    seq, t0 = last_seq(d), time.monotonic()
                    said = fault(d)
                    wait_for(lambda s=seq, e=said: event_ms(d, e, s) is not None, 60, 0.01, said)
                    took, lost = heal(client, t0)
                    heals.append(took)
                    failed.append(lost)
                    events.append(event_ms(d, said, seq))
                    time.sleep(0.5)
                print(row(name, heals, failed, events), flush=True)
            client.stop.set()
            client.join(10)
            boots = [reboot(d, apps) for _ in range(args.rounds)]
            ms = [b * 1000 for b in boots]
            took = f"{statistics.median(ms):.0f} / {max(ms):.0f} ms"
            print(
                f"| reboot simulated, {args.apps} apps: `hd serve` started → every app served "
                f"| {took} | — | (all down until then) | 0 |"
            )
            print(f"{len(client.answers)} requests by the client; load {os.getloadavg()[0]:.2f}")
        finally:
            teardown(d)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--apps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    main(parser.parse_args())
