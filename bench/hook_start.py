"""git's post-receive hook, from its start to its trigger on disk: the part of `git push` →
DeployQueued that is the hook's interpreter and imports.

Run: .venv/bin/python bench/hook_start.py [OTHER_TREE] [--runs 30]

Each run is the tree's real hook as git runs it (hyperdrive/githooks/post-receive, the shell
script that execs the interpreter on `hyperdrive.hooks.post_receive`; the interpreter is this
one, as the daemon's HYPERDRIVE_PYTHON names its own) in a real bare repo, fed one ref line, with
`-o nowait` so it exits once its trigger file is written (checked). With OTHER_TREE (another
checkout, e.g. `git archive main | tar -x -C /tmp/main`) the two trees' hooks alternate run by
run. Printed: median wall time and CPU time (the child's utime + stime), and `python -c pass`.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHA = "a" * 40


def timed(argv: list[str], env: dict[str, str], cwd: Path, stdin: str) -> tuple[float, float]:
    """(wall ms, CPU ms) of one child process."""
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(
        argv, input=stdin, text=True, env=env, cwd=cwd, check=True, capture_output=True, timeout=60
    )
    wall, after = (
        (time.perf_counter() - started) * 1000,
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1000
    return wall, cpu


def hook_run(tree: Path, repo: Path, spool: Path) -> tuple[float, float]:
    """One hook run of `tree`'s code; its trigger must be in `spool/incoming` after."""
    env = {
        "PATH": os.environ["PATH"], "PYTHONPATH": str(tree), "HYPERDRIVE_SPOOL": str(spool),
        "GIT_DIR": str(repo), "HYPERDRIVE_APP": "web", "GIT_PUSH_OPTION_COUNT": "1",
        "GIT_PUSH_OPTION_0": "nowait", "HYPERDRIVE_PYTHON": sys.executable,
    }  # fmt: skip
    # PYTHONPATH picks the tree for a hook that does not set it itself; cwd is the repo, as
    # git runs it
    argv = ["/bin/sh", str(tree / "hyperdrive" / "githooks" / "post-receive")]
    figures = timed(argv, env, repo, f"{'0' * 40} {SHA} refs/heads/main\n")
    written = list((spool / "incoming").glob("*.json"))
    assert len(written) == 1, f"the hook of {tree} wrote {len(written)} triggers"
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("other", type=Path, nargs="?")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    trees = {"this": ROOT} | ({"other": args.other.resolve()} if args.other else {})
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="hd-hook-") as tmp:
        work = Path(tmp)
        repo = work / "web.git"
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(repo)], check=True)
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
        for run in range(args.runs):
            for name in list(trees) if run % 2 == 0 else list(trees)[::-1]:
                spool = work / f"spool-{name}-{run}"
                results[name].append(hook_run(trees[name], repo, spool))
        bare = [
            timed([sys.executable, "-c", "pass"], dict(os.environ), work, "") for _ in range(15)
        ]
    for name, runs in results.items():
        wall, cpu = (statistics.median(r[i] for r in runs) for i in (0, 1))
        print(
            f"{name:6} hook start → trigger written → exit: {wall:6.1f} ms wall, {cpu:6.1f} ms CPU"
        )
    wall, cpu = (statistics.median(r[i] for r in bare) for i in (0, 1))
    print(f"python -c pass: {wall:.1f} ms wall, {cpu:.1f} ms CPU; load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
