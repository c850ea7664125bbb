"""Cost as the squadron grows: redeploy, add and retire one app, RSS and `hd status` at N apps.

A real `hd serve` (its own name, subnet, nginx; busybox hull). The squadron is brought to each
N of `--apps` with static apps whose first deploys are triggered as post-receive does; then, at
that N, for `--rounds` rounds (p50 reported):
* redeploy: an admiral's `git push` over SSH of new content to a live app → served by nginx;
* add: the first `git push` over SSH of a new app → served (a new nginx route);
* retire: `hd retire` of that app → its route answers 404 and its ship's container is gone;
* the daemon's RSS and the wall time of `hd status`.
One redeploy, add and retire at each N go first, uncounted (caches, the first ship of a kind).
Each op's CPU time of the daemon (its own + its children's: nginx -t, nft, lxc-*, git; the
mean over the rounds) is printed beside it, and `hd status`'s own CPU: unlike wall time, other
load hardly moves it.
`--profile DIR` samples the daemon with py-spy (pip install py-spy) over the redeploys and the
`hd status` runs (collapsed stacks, to diff between Ns) and prints the gaps between each
deploy's events. Run as root, from the tree whose daemon is measured (`python -m hyperdrive`
puts the working folder first on sys.path: `cd /tmp/old && …/.venv/bin/python bench/scale.py`
measures /tmp/old):
    .venv/bin/python bench/scale.py [--apps 1,40,100] [--rounds 5] [--profile DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import Daemon, open_for_ships, wait_for
from tests.e2e.squadron import (
    Admiral,
    AppRepo,
    http_get,
    keygen,
    make_squadron,
    settled,
    teardown,
    wait_outcome,
)

Figure = tuple[float, float, float]  # wall ms, the daemon's own CPU ms, its children's CPU ms
SITE = "site"  # the app redeployed at every N
TICK = os.sysconf("SC_CLK_TCK")
STAGES = {  # stage -> the event whose `ms` it is
    "assemble": "ShipAssembled",
    "start": "ShipStarted",
    "health": "ShipHealthy",
    "swap": "TrafficSwapped",
}


def served(d: Daemon, app: str, body: str, timeout: float = 60) -> float:
    """Seconds until nginx serves `body` at /<app>/ (polled every 2 ms on new connections)."""
    t0 = time.monotonic()
    while time.monotonic() < t0 + timeout:
        if http_get(d.http_port, f"/{app}/", timeout=2) == (200, body):
            return time.monotonic() - t0
        time.sleep(0.002)
    raise AssertionError(f"{app} never served {body!r}; log: {d.log()}")


def cpu_ms(pid: int) -> tuple[float, float]:
    """CPU ms of `pid` itself (utime stime) and of its waited-for children (cutime cstime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return (utime + stime) * 1000 / TICK, (cutime + cstime) * 1000 / TICK


def reads(pid: int) -> tuple[int, int]:
    """The read calls and bytes read of `pid` so far, its threads included (/proc/PID/io)."""
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["syscr"]), int(fields["rchar"])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


class Bench:
    """One squadron, an admiral, and what was measured at each N."""

    def __init__(self, d: Daemon, admiral: Admiral, root: Path, profile: Path | None) -> None:
        self.d, self.admiral, self.root, self.profile = d, admiral, root, profile
        self.apps: list[str] = []  # the apps live now
        self.added = self.pushes = 0
        self.rows: dict[int, dict[str, Figure]] = {}
        self.deployed: dict[str, list[str]] = {"redeploy": [], "add": []}  # op -> shas
        self.clock: dict[str, tuple[float, float]] = {}  # sha -> push started, served (epoch s)
        self.reads: dict[str, list[tuple[int, int]]] = {}  # op -> the daemon's (reads, bytes)

    @property
    def pid(self) -> int:
        assert self.d.proc is not None
        return self.d.proc.pid

    def once(self, op: Callable[[int], float], i: int) -> Figure:
        """`op`'s ms and the daemon's own and children's CPU ms over it, from a settled start;
        the daemon's read calls and bytes over it go to `self.reads` (load does not move them)."""
        settled(self.d)
        own, children = cpu_ms(self.pid)
        calls, got = reads(self.pid)
        wall = op(i) * 1000
        own_after, children_after = cpu_ms(self.pid)
        calls_after, got_after = reads(self.pid)
        self.reads.setdefault(op.__name__, []).append((calls_after - calls, got_after - got))
        return wall, own_after - own, children_after - children

    def measured(self, *ops: Callable[[int], float], rounds: int) -> list[Figure]:
        """Per op, the p50 of each of its figures; the ops alternate round by round."""
        seen: list[list[Figure]] = [[] for _ in ops]
        for i in range(rounds):
            for got, op in zip(seen, ops, strict=True):
                got.append(self.once(op, i))
        return [p50(got) for got in seen]

    def first_site(self) -> None:
        work = self.admiral.working_copy(self.root / SITE, SITE)
        self.admiral.commit(work, {"index.html": "site 0\n"})
        self.admiral.git("push", "-q", "hyperdrive", "master", cwd=work)
        served(self.d, SITE, "site 0\n")
        self.apps.append(SITE)

    def grow(self, n: int) -> None:
        """Filler static apps up to `n` live apps, deployed as post-receive triggers them."""
        deploys = []
        while len(self.apps) < n:
            app = f"app{len(self.apps):03d}"
            repo = AppRepo(self.d, app, self.root / app)
            deploys.append(repo.push_trigger(repo.commit({"index.html": f"{app}\n"})))
            self.apps.append(app)
        for deploy in deploys:
            assert wait_outcome(self.d, deploy, 300)["event"] == "DeployFinished"
        settled(self.d, 120)

    def redeploy(self, _: int) -> float:
        self.pushes += 1
        work, body = self.root / SITE, f"site {self.pushes}\n"
        self.admiral.commit(work, {"index.html": body})
        return self._push_and_watch(work, SITE, body, "redeploy")

    def add(self, _: int) -> float:
        self.added += 1
        app = f"new{self.added:03d}"
        work = self.admiral.working_copy(self.root / app, app)
        self.admiral.commit(work, {"index.html": f"{app}\n"})
        took = self._push_and_watch(work, app, f"{app}\n", "add")
        self.apps.append(app)
        return took

    def retire(self, _: int) -> float:
        """`hd retire` of the app added last; seconds until its route and ship are gone."""
        app = self.apps.pop()
        ships = [p for p in (self.d.var / "containers").iterdir() if f"-{app}-" in p.name]
        assert ships, f"no ship of {app}"
        t0 = time.monotonic()
        self.d.hd("retire", app, timeout=60)

        def gone() -> bool:
            route = http_get(self.d.http_port, f"/{app}/", timeout=2)[0] == 404
            return route and not any(p.exists() for p in ships)

        wait_for(gone, 60, 0.002, f"{app}'s route and ship gone")
        return time.monotonic() - t0

    def status(self) -> Figure:
        """`hd status`'s wall ms, its own CPU ms, and the daemon's CPU ms answering it."""
        before, own = resource.getrusage(resource.RUSAGE_CHILDREN), cpu_ms(self.pid)[0]
        t0 = time.monotonic()
        self.d.hd("status")
        wall = (time.monotonic() - t0) * 1000
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        used = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        return wall, used * 1000, cpu_ms(self.pid)[0] - own

    def _push_and_watch(self, work: Path, app: str, body: str, op: str) -> float:
        """`git push` started → `body` served; the watch runs beside the push."""
        sha = self.admiral.git("rev-parse", "HEAD", cwd=work).stdout.strip()
        self.deployed[op].append(sha)
        took: list[float] = []
        watch = threading.Thread(target=lambda: took.append(served(self.d, app, body)))
        started = time.time()
        watch.start()
        self.admiral.git("push", "-q", "hyperdrive", "master", cwd=work)
        watch.join(70)
        assert took, f"{app} was never served {body!r}"
        self.clock[sha] = started, started + took[0]
        return took[0]

    def measure(self, n: int, rounds: int) -> None:
        self.measured(self.redeploy, self.add, self.retire, rounds=1)  # warm-up, not counted
        for shas in self.deployed.values():
            shas.clear()
        with spied(self.pid, self.profile, f"redeploy-{n}"):
            (redeploy,) = self.measured(self.redeploy, rounds=rounds)
        add, retire = self.measured(self.add, self.retire, rounds=rounds)  # N stays N
        settled(self.d)
        row = {"redeploy": redeploy, "add": add, "retire": retire}
        row["rss"] = (rss_mb(self.pid), 0.0, 0.0)
        with spied(self.pid, self.profile, f"status-{n}"):
            row["status"] = p50([self.status() for _ in range(rounds)])
        self.rows[n] = row
        print(f"N={n}: {fmt(row)}  load {os.getloadavg()[0]:.2f}", flush=True)
        for op, got in self.reads.items():
            calls, sizes = zip(*got[1:], strict=True)  # the warm-up round is not counted
            mean = f"{statistics.fmean(calls):.0f} calls, {statistics.fmean(sizes) / 1024:.0f} KB"
            print(f"  {op}: the daemon's reads per op (mean) {mean}", flush=True)
        self.reads.clear()
        events = self.d.events()
        for op, shas in self.deployed.items():
            print(f"  {op} stages (p50 ms): {stage_line(events, shas)}", flush=True)
            print(f"  {op} wall (p50 ms): {wall_line(events, shas, self.clock)}", flush=True)
            if self.profile is not None:
                print(f"  {op} between events (p50 ms): {gap_line(events, shas)}", flush=True)
            shas.clear()


@contextlib.contextmanager
def spied(pid: int, into: Path | None, name: str) -> Iterator[None]:
    """py-spy samples the daemon over the block into `into`/`name`.txt (collapsed stacks), to
    diff what grows with N; nothing runs without `--profile`."""
    if into is None:
        yield
        return
    into.mkdir(parents=True, exist_ok=True)
    spy = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("py-spy")),
            "record",
            "--pid",
            str(pid),
            "-r",
            "500",
            "-f",
            "raw",
            "-o",
            str(into / f"{name}.txt"),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1)  # py-spy attaches
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)


def p50(figures: list[Figure]) -> Figure:
    """The p50 wall ms and the mean CPU ms: CPU comes in clock ticks (10 ms), whose median
    hides any change smaller than a tick."""
    walls, own, children = zip(*figures, strict=True)
    return statistics.median(walls), statistics.fmean(own), statistics.fmean(children)


def stage_line(events: list[dict[str, Any]], shas: list[str]) -> str:
    """Each stage's p50 ms over the deploys of `shas`, from their events."""
    found: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for event in events:
        for stage, name in STAGES.items():
            if event.get("sha") in shas and event["event"] == name and "ms" in event:
                found[stage].append(event["ms"])
    return ", ".join(f"{s} {statistics.median(v):.0f}" for s, v in found.items() if v)


def wall_line(
    events: list[dict[str, Any]], shas: list[str], clock: dict[str, tuple[float, float]]
) -> str:
    """Where each deploy's wall time went, p50 ms: the push started → DeployQueued (ssh, git,
    the hook) → DeployStarted → TrafficSwapped → the new content served."""
    marks = ("DeployQueued", "DeployStarted", "TrafficSwapped")
    parts: dict[str, list[float]] = {}
    for sha in shas:
        at = {e["event"]: stamp(e) for e in events if e.get("sha") == sha and e["event"] in marks}
        if len(at) < len(marks) or sha not in clock:
            continue
        points = [clock[sha][0], *(at[m] for m in marks), clock[sha][1]]
        names = ("push→queued", "queued→started", "started→swapped", "swapped→served")
        for name, a, b in zip(names, points, points[1:], strict=False):
            parts.setdefault(name, []).append((b - a) * 1000)
    return ", ".join(f"{k} {statistics.median(v):.0f}" for k, v in parts.items())


def gap_line(events: list[dict[str, Any]], shas: list[str]) -> str:
    """The p50 ms from each of a deploy's events to the next, DeployQueued → TrafficSwapped:
    where time that no stage's `ms` covers goes."""
    gaps: dict[str, list[float]] = {}
    for sha in shas:
        mine = [e for e in events if e.get("sha") == sha or e.get("deploy") == sha]
        names = [e["event"] if e["event"] != "StageFinished" else e["stage"] for e in mine]
        if "TrafficSwapped" not in names:
            continue
        mine = mine[: names.index("TrafficSwapped") + 1]
        for a, b, name in zip(mine, mine[1:], names[1:], strict=False):
            gaps.setdefault(name, []).append((stamp(b) - stamp(a)) * 1000)
    return ", ".join(f"→{k} {statistics.median(v):.1f}" for k, v in gaps.items())


def stamp(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(event["ts"]).replace("Z", "+00:00")).timestamp()


OPS = ("redeploy", "add", "retire")


def cell(f: Figure) -> str:
    return f"{f[0]:.0f} ms ({f[1]:.0f} + {f[2]:.0f})"


def fmt(row: dict[str, Figure]) -> str:
    parts = [f"{k} {cell(row[k])}" for k in OPS]
    status = row["status"]
    said = f"status {status[0]:.0f} ms (its CPU {status[1]:.0f}, the daemon's {status[2]:.0f})"
    return ", ".join([*parts, f"RSS {row['rss'][0]:.1f} MB", said])


def ratio(now: float, then: float) -> str:
    return f"{now / then:.2f}x" if then else "-"


def table(rows: dict[int, dict[str, Figure]]) -> None:
    """Markdown: each figure at each N, then its ratio to the figure at the smallest N. CPU is
    the daemon's own + its children's (nginx -t, nft, lxc-*, git), ms over the op."""
    ns = sorted(rows)
    base = rows[ns[0]]
    print(
        "\n| apps | redeploy (CPU own + children) | add (CPU) | retire (CPU) | RSS | "
        "`hd status` (its CPU + the daemon's) |"
    )
    print("|---|---|---|---|---|---|")
    for n in ns:
        r = rows[n]
        status = f"{r['status'][0]:.0f} ms ({r['status'][1]:.0f} + {r['status'][2]:.0f})"
        cells = [cell(r[k]) for k in OPS] + [f"{r['rss'][0]:.1f} MB", status]
        print(f"| {n} | " + " | ".join(cells) + " |")
    for n in ns[1:]:
        r = rows[n]
        ratios = [
            f"{ratio(r[k][0], base[k][0])} (CPU {ratio(r[k][1], base[k][1])} + "
            f"{ratio(r[k][2], base[k][2])})"
            for k in OPS
        ]
        ratios.append(ratio(r["rss"][0], base["rss"][0]))
        ratios.append(
            f"{ratio(r['status'][0], base['status'][0])} (CPU "
            f"{ratio(r['status'][1], base['status'][1])})"
        )
        print(f"| {n} / {ns[0]} | " + " | ".join(ratios) + " |")


def main(args: argparse.Namespace) -> None:
    counts = sorted(int(n) for n in args.apps.split(","))
    with TemporaryDirectory(prefix="hd-bench-scale-") as tmp:
        open_for_ships(tmp)
        root = Path(tmp)
        # KEEP_SHIPS 1: a /24 holds every app's live ship plus the redeployed app's kept one
        d = make_squadron(root / "hd", HYPERDRIVE_KEEP_SHIPS="1")
        key = keygen(root / "admiral")
        (d.root / "admirals.pub").write_text(Path(f"{key}.pub").read_text())
        bench = Bench(d, Admiral(d, key), root, args.profile)
        try:
            d.start()
            bench.first_site()  # the hull is built here, not in a measured round
            for n in counts:
                bench.grow(n)
                bench.measure(n, args.rounds)
            table(bench.rows)
            load = subprocess.run(
                ["uptime"], check=False, capture_output=True, text=True, timeout=10
            )
            print(f"\nrounds {args.rounds}; {load.stdout.strip()}")
        finally:
            teardown(d)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--apps", default="1,40,100")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--profile", type=Path, help="py-spy the daemon over the redeploys and hd status into DIR"
    )
    main(parser.parse_args())
