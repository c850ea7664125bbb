"""Two source trees' git servers side by side: what the server itself costs per transfer.

Run (as root): .venv/bin/python bench/git_ab.py OTHER_TREE [--files 800] [--mb 20] [--rounds 6]
  [--profile DIR]  (cProfile both servers into DIR/<tree>.prof; where their time went, printed)

OTHER_TREE is another checkout of Hyperdrive (e.g. `git archive main | tar -x -C /tmp/main`).
Each tree's GitServer runs as its own process (`bench/git_ssh.py --serve` with HD_BENCH_TREE
naming whose hyperdrive package it imports); rounds alternate which tree goes first, so a
shared machine's load hits both alike. A round is, on each server: the first push of the
generated repo into a fresh repo, then a full clone of it. Printed: wall time, the server
process's own CPU and its git children's CPU (/proc/PID/stat) per operation, medians, and the
paired own-CPU ratio (other ÷ this), which the load moves far less than wall time.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from git_ssh import Side, clone, cpu_seconds, push, sh, source_repo, start_hyperdrive  # noqa: E402

Sample = dict[str, float]  # wall, own (server CPU), git (its children's CPU), in seconds


@contextlib.contextmanager
def server(tree: Path, work: Path, key: Path, profile: Path | None) -> Iterator[tuple[int, Side]]:
    """`tree`'s git server in its own process: (pid, how to reach it)."""
    folder = work / tree.name
    folder.mkdir()
    proc, port = start_hyperdrive(folder, key.with_suffix(".pub"), profile, tree)
    try:
        yield proc.pid, Side(tree.name, key, port, "git", "/")
    finally:
        proc.communicate("", timeout=60)


def on_cpu(pid: int) -> float:
    """The server's own CPU time so far, in ns resolution: its threads' schedstat run time
    (/proc/PID/stat counts 10 ms ticks, too coarse for a 100 ms figure)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that just ended
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def measured(pid: int, action: Callable[[], object]) -> Sample:
    """Run `action`; its wall time and the server's CPU (own, git's) while it ran."""
    own0, git0 = on_cpu(pid), cpu_seconds(pid)[1]
    started = time.perf_counter()
    action()
    wall = time.perf_counter() - started
    own1, git1 = on_cpu(pid), cpu_seconds(pid)[1]
    return {"wall": wall, "own": own1 - own0, "git": git1 - git0}


def one_round(pid: int, side: Side, tree: Path, into: Path, name: str) -> dict[str, Sample]:
    """First push into a fresh repo, then a full clone of it; the clone must match."""
    pushed = measured(pid, lambda: push(side, tree, name))
    cloned = measured(pid, lambda: clone(side, name, into))
    want = sh("git", "rev-parse", "HEAD", cwd=tree).strip()
    got = sh("git", "rev-parse", "HEAD", cwd=into).strip()
    assert got == want, f"{side.name}: clone of {name} has {got}, pushed {want}"
    return {"first push": pushed, "full clone": cloned}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("other", type=Path)
    parser.add_argument("--files", type=int, default=800)
    parser.add_argument("--mb", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--profile", type=Path, help="a folder for both servers' cProfiles")
    args = parser.parse_args()
    trees = {"other": args.other.resolve(), "this": ROOT}
    print(
        f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}; other = {trees['other']}"
    )
    with tempfile.TemporaryDirectory(prefix="hd-git-ab-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", work / "client")
        profiles = {n: args.profile / f"{n}.prof" if args.profile else None for n in trees}
        live = {
            n: stack.enter_context(server(t, work, work / "client", profiles[n]))
            for n, t in trees.items()
        }
        source = work / "source"
        source_repo(source, args.files, args.mb, live["this"][1].env)
        results: dict[str, list[dict[str, Sample]]] = {n: [] for n in trees}
        for i in range(args.rounds):
            for name in list(trees) if i % 2 == 0 else list(trees)[::-1]:
                pid, side = live[name]
                into = work / f"clone-{name}-{i}"
                results[name].append(one_round(pid, side, source, into, f"r{i}"))
            print(f"  round {i + 1}: " + ", ".join(shown(n, r[-1]) for n, r in results.items()))
    report(results)
    for name, path in profiles.items():
        if path is not None:
            where_time_went(name, path)


def component(filename: str, function: str) -> str:
    """Which part of the server a profiled function belongs to."""
    if "epoll" in function:
        return "waiting (epoll)"
    for name in ("asyncssh", "hyperdrive", "asyncio"):
        if f"/{name}/" in filename:
            return name
    builtin = {
        "posix.write": "os.write (to git)", "posix.read": "os.read (from git)",
        "send": "socket.send", "recv": "socket.recv", "crypt": "AES-GCM",
        "fork_exec": "starting git", "acquire": "thread start waits",
    }  # fmt: skip
    for key, name in builtin.items():
        if filename == "~" and key in function:
            return name
    return "other Python"


def where_time_went(name: str, path: Path) -> None:
    """The profile grouped by component: own time and calls, and the busiest functions."""
    stats = pstats.Stats(str(path))
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, object]]
    raw = stats.stats  # type: ignore[attr-defined]  # the profile's rows: public, not typed
    own: dict[str, float] = collections.defaultdict(float)
    calls: collections.Counter[str] = collections.Counter()
    for (filename, _, function), (_, ncalls, tottime, _, _) in raw.items():
        part = component(filename, function)
        own[part] += tottime
        calls[part] += ncalls
    busy = sum(t for part, t in own.items() if part != "waiting (epoll)")
    print(f"\n{name}: where the server's time went ({path}); busy {busy:.2f} s in all")
    for part, seconds in sorted(own.items(), key=lambda kv: -kv[1]):
        share = "" if part == "waiting (epoll)" else f"{seconds / busy:6.1%}"
        print(f"  {part:<24} {seconds:8.3f} s {calls[part]:>9,} calls {share}")
    top = sorted(raw.items(), key=lambda kv: -kv[1][2])[:8]
    for (filename, line, function), (_, ncalls, tottime, _, _) in top:
        print(f"    {tottime:7.3f} s {ncalls:>8,}  {Path(filename).name}:{line} {function}")


def shown(name: str, sample: dict[str, Sample]) -> str:
    return (
        name
        + " "
        + " ".join(
            f"{op.split()[1]} {s['wall']:.2f}s/{s['own'] * 1000:.0f}ms" for op, s in sample.items()
        )
    )


def report(results: dict[str, list[dict[str, Sample]]]) -> None:
    for op in ("first push", "full clone"):
        for name, rounds in results.items():
            med = {k: statistics.median(r[op][k] for r in rounds) for k in ("wall", "own", "git")}
            print(
                f"{op:<11} {name:6} wall {med['wall']:6.3f} s   server CPU {med['own']:.3f} s"
                f"   its git {med['git']:.3f} s"
            )
        pairs = [
            a[op]["own"] / b[op]["own"]
            for a, b in zip(results["other"], results["this"], strict=True)
            if b[op]["own"] > 0
        ]
        if pairs:
            each = " ".join(f"{p:.2f}" for p in pairs)
            print(f"{op}: server CPU other ÷ this, per round: {each}; median "
                  f"{statistics.median(pairs):.2f}")  # fmt: skip
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
