"""Figures for the daemon's foundation, each printed beside its target.

(a) EventLog append + fan-out to 10 live subscribers, each draining in its own task (≥ 20,000/s)
(b) a trigger written to spool/incoming by another thread → out of FileSpool.receive() while
    FileSpool.watch() runs (inotify on the event loop, no polling): p50 ≤ 5 ms, p99 reported
(c) an idle `hd serve` (tests.conftest.make_daemon): CPU ≤ 0.1% of a core over --idle seconds
    (utime + stime of all its threads, /proc/PID/stat) and RSS ≤ 60 MB
(d) `hd status --json` wall time, median of N runs (`python -m hyperdrive` and .venv/bin/hd),
    interpreter start included: ≤ 100 ms

    .venv/bin/python bench/foundation.py [--events 200000] [--triggers 200] [--runs 20]
                                         [--idle 60]
"""

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hyperdrive import config as configuration  # noqa: E402
from hyperdrive.client import AdminClient  # noqa: E402
from hyperdrive.eventlog import JsonlEventLog  # noqa: E402
from hyperdrive.spool import FileSpool  # noqa: E402
from hyperdrive.triggers import RefUpdate, Trigger, write_incoming  # noqa: E402
from tests.conftest import make_daemon, open_for_ships, remove_host_state, stop_nginx_under  # noqa: E402

SUBSCRIBERS = 10
OLD = "0" * 40  # the ref the bench triggers "push" is new
BATCH = 1_000  # appends between yields to the loop; below the subscribers' queue of 10,000


def report(label: str, figure: str, target: str, ok: bool) -> None:
    print(f"  {label:<44} {figure:>16}   target {target:<12} {'ok' if ok else 'MISSED'}")


# -- (a) event log fan-out --
async def fan_out(total: int, folder: Path) -> None:
    """Append `total` events while 10 subscribers drain; time until the last one has them all."""
    log = JsonlEventLog(folder / "events.jsonl")
    log.open()
    subs = [log.subscribe() for _ in range(SUBSCRIBERS)]
    gaps = [0] * SUBSCRIBERS

    async def drain(n: int) -> int:
        received = 0
        async for event in subs[n]:
            if event["event"] == "EventsMissed":
                gaps[n] += int(event["missed"])
                continue
            received += 1
            if received + gaps[n] == total:
                return received
        return received

    readers = [asyncio.create_task(drain(n)) for n in range(SUBSCRIBERS)]
    started = time.perf_counter()
    for n in range(total):
        log.append({"event": "BuildOutput", "app": "web", "deploy": "d-1", "message": f"line {n}"})
        if n % BATCH == BATCH - 1:
            await asyncio.sleep(0)
    received = await asyncio.gather(*readers)
    elapsed = time.perf_counter() - started
    log.close()
    rate = total / elapsed
    print(f"(a) event log: {total:,} events, {SUBSCRIBERS} subscribers, {elapsed:.2f} s")
    report("append + fan-out", f"{rate:,.0f} events/s", "≥ 20,000/s", rate >= 20_000)
    print(f"      delivered {sum(received):,} of {total * SUBSCRIBERS:,}; missed {sum(gaps):,}")


# -- (b) spool hand-over --
async def spool_latency(count: int, folder: Path) -> None:
    """Sequential triggers from a writer thread; latency from written (and from write start)."""
    spool = FileSpool(folder / "spool")
    await spool.open()
    scans = _time_scans(spool)
    stop = asyncio.Event()
    watcher = asyncio.create_task(spool.watch(stop))
    received = aiter(spool.receive())
    await asyncio.sleep(0.3)  # let the inotify watch settle before the clock starts
    after_write, whole, noticed = [], [], []
    for n in range(count + 5):
        trigger = Trigger.push("web", RefUpdate("refs/heads/master", OLD, "a" * 40), "bench")
        began, written = await _write_in_thread(folder / "spool", trigger)
        got = await asyncio.wait_for(anext(received), 5)
        arrived = time.perf_counter()
        assert got.id == trigger.id, (got.id, trigger.id)
        await spool.done(got.id, "finished")
        if n >= 5:  # the first few warm up the watcher and the writer thread
            after_write.append((arrived - written) * 1000)
            whole.append((arrived - began) * 1000)
            noticed.append((scans[-1] - written) * 1000)
    stop.set()
    await asyncio.wait_for(watcher, 5)
    await spool.close()
    print(f"(b) spool: {count} triggers via spool/incoming, one at a time")
    p50, p99 = _percentile(after_write, 50), _percentile(after_write, 99)
    report("written → out of receive() p50", f"{p50:.2f} ms", "≤ 5 ms", p50 <= 5)
    print(f"      p99 {p99:.2f} ms, max {max(after_write):.2f} ms")
    w50, w99 = _percentile(whole, 50), _percentile(whole, 99)
    print(f"      incl. write_incoming (two fsyncs): p50 {w50:.2f} ms, p99 {w99:.2f} ms")
    n50, n99 = _percentile(noticed, 50), _percentile(noticed, 99)
    print(f"      of which written → the watch wakes the spool: p50 {n50:.2f}, p99 {n99:.2f} ms")


def _time_scans(spool: FileSpool) -> list[float]:
    """Note when each scan of spool/incoming starts: the watch's share of the latency."""
    starts: list[float] = []
    scan = spool.ingest_incoming

    async def timed() -> int:
        starts.append(time.perf_counter())
        return await scan()

    spool.ingest_incoming = timed  # type: ignore[method-assign]
    return starts


async def _write_in_thread(root: Path, trigger: Trigger) -> tuple[float, float]:
    """write_incoming from another thread, as the post-receive hook does from another process."""
    stamps: list[float] = []

    def write() -> None:
        stamps.append(time.perf_counter())
        write_incoming(root, trigger)
        stamps.append(time.perf_counter())

    thread = threading.Thread(target=write)
    thread.start()
    await asyncio.to_thread(thread.join, 5)
    return stamps[0], stamps[1]


def _percentile(values: list[float], pct: int) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


# -- (c) and (d): a real daemon --
def daemon_figures(runs: int, idle: float, folder: Path) -> None:
    daemon = make_daemon(folder / "hd")
    daemon.start()
    try:
        time.sleep(2)  # idle: start-up work done, nothing queued
        assert daemon.proc is not None
        print(f"(c) idle daemon, {idle:.0f} s")
        busy, wakeups = _idle_cpu(daemon.proc.pid, idle)
        report("CPU of hd serve (all threads)", f"{busy:.3f} % core", "≤ 0.1 %", busy <= 0.1)
        print(f"      context switches in that time: {wakeups}")
        rss, peak = _vm(daemon.proc.pid, "VmRSS"), _vm(daemon.proc.pid, "VmHWM")
        report("RSS of hd serve", f"{rss / 1024:.1f} MB", "≤ 60 MB", rss <= 60 * 1024)
        print(f"      peak RSS {peak / 1024:.1f} MB; children {_children(daemon.proc.pid)}")
        print(f"(d) `hd status --json`, median of {runs} runs")
        module = [sys.executable, "-m", "hyperdrive", "status", "--json"]
        script = [str(ROOT / ".venv" / "bin" / "hd"), "status", "--json"]
        for label, argv in (("python -m hyperdrive status", module), ("hd status", script)):
            times = _round_trips(argv, daemon.env, runs)
            median = statistics.median(times)
            report(label, f"{median:.1f} ms", "≤ 100 ms", median <= 100)
            print(f"      min {min(times):.1f} ms, max {max(times):.1f} ms")
        _breakdown(daemon.env, runs)
    finally:
        daemon.stop()
        stop_nginx_under(folder)
        remove_host_state(daemon.env["HYPERDRIVE_NAME"])


def _breakdown(env: dict[str, str], runs: int) -> None:
    """Where the time goes: interpreter start, hd's imports, the daemon's own answer."""
    bare = _round_trips([sys.executable, "-c", "pass"], env, runs)
    version = _round_trips([sys.executable, "-m", "hyperdrive", "version"], env, runs)
    client = AdminClient(configuration.load(environ=env).socket_path)
    answers = []
    for _ in range(runs):
        began = time.perf_counter()
        client.get("/status")
        answers.append((time.perf_counter() - began) * 1000)
    print(
        f"      medians: bare `python -c pass` {statistics.median(bare):.1f} ms; "
        f"`hd version` (start + imports) {statistics.median(version):.1f} ms; "
        f"GET /status in-process {statistics.median(answers):.2f} ms"
    )


def _idle_cpu(pid: int, seconds: float) -> tuple[float, int]:
    """Percent of one core the process (every thread) used over `seconds`, and how many times
    its threads were switched in (each wake-up is one)."""
    tick = os.sysconf("SC_CLK_TCK")
    cpu0, switches0, began = _cpu_ticks(pid), _switches(pid), time.monotonic()
    time.sleep(seconds)
    cpu1, switches1, ended = _cpu_ticks(pid), _switches(pid), time.monotonic()
    return (cpu1 - cpu0) / tick / (ended - began) * 100, switches1 - switches0


def _cpu_ticks(pid: int) -> int:
    """utime + stime of the whole process (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def _switches(pid: int) -> int:
    """Voluntary + involuntary context switches summed over the process's threads."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


def _vm(pid: int, key: str) -> int:
    """A /proc/PID/status figure in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise LookupError(f"{key} not in /proc/{pid}/status")


def _children(pid: int) -> str:
    found = subprocess.run(
        ["ps", "--ppid", str(pid), "-o", "pid=,rss=,comm="],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    ).stdout.split("\n")
    rows = [row.split() for row in found if row.strip()]
    return ", ".join(f"{r[2]} {int(r[1]) / 1024:.1f} MB" for r in rows) or "none"


def _round_trips(argv: list[str], env: dict[str, str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        done = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=30, check=False
        )
        times.append((time.perf_counter() - began) * 1000)
        if done.returncode != 0:
            raise RuntimeError(f"{argv} exited {done.returncode}: {done.stderr}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--triggers", type=int, default=200)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idle to measure")
    args = parser.parse_args()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{os.cpu_count()} cores, load average {load} (the machine is shared)")
    with tempfile.TemporaryDirectory(prefix="hd-bench-") as tmp:
        open_for_ships(tmp)
        folder = Path(tmp)
        asyncio.run(fan_out(args.events, folder))
        asyncio.run(spool_latency(args.triggers, folder))
        daemon_figures(args.runs, args.idle, folder)


if __name__ == "__main__":
    main()
