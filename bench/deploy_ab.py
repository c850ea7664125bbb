"""Two source trees' daemons side by side: push accepted → new content served, and the daemon's
own CPU per deploy (its process and the programs it ran: lxc-*, nft, git), rounds alternating.

Run as root: .venv/bin/python bench/deploy_ab.py OTHER_TREE [--rounds 10]

OTHER_TREE is another checkout of Hyperdrive (e.g. `git archive main | tar -x -C /tmp/main`).
Each tree runs a real `hd serve` of its own (name, subnet, nginx; PYTHONPATH picks its package)
with one static app on the busybox hull; each round deploys to both, in alternating order, so
a shared machine's load hits both alike. Rounds are `trigger written` (bench/deploy.py's: the
daemon's part only) and `git push` over SSH (its post-receive hook is this venv's installed
package for both trees: the daemon gives git a clean environment). Printed: p50 of each figure
per tree and the p50 of the paired ratios (other ÷ this).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from tempfile import TemporaryDirectory

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from deploy import ssh_round, stages, trigger_round  # noqa: E402

from tests.conftest import Daemon, open_for_ships, wait_for  # noqa: E402
from tests.e2e.squadron import Admiral, AppRepo, keygen, make_squadron, teardown  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_ms(d: Daemon) -> float:
    """The daemon's CPU so far: its own and its reaped children's (utime, stime, cu, cs)."""
    assert d.proc is not None
    fields = Path(f"/proc/{d.proc.pid}/stat").read_text().rpartition(")")[2].split()
    return sum(int(v) for v in fields[11:15]) * 1000 / TICKS


def start_in(d: Daemon, tree: Path) -> None:
    """`hd serve` of `tree`'s package: `python -m` puts the working folder first on sys.path,
    so the daemon runs in the tree (and PYTHONPATH names it too)."""
    d.env["PYTHONPATH"] = str(tree)
    with d.log_path.open("ab") as log:
        argv = [sys.executable, "-m", "hyperdrive", "serve"]
        d.proc = subprocess.Popen(argv, env=d.env, stdout=log, stderr=log, cwd=tree)
    wait_for(d.healthy, 20, 0.05, f"hd serve of {tree} to answer /healthz (see {d.log_path})")


class Side:
    """One tree's squadron, its app repo (trigger rounds) and working copy (push rounds)."""

    def __init__(self, name: str, tree: Path, root: Path, drain: float) -> None:
        self.name = name
        self.d = make_squadron(root / "hd", HYPERDRIVE_DRAIN_SECONDS=str(drain))
        key = keygen(root / "admiral")
        (self.d.root / "admirals.pub").write_text(Path(f"{key}.pub").read_text())
        start_in(self.d, tree)
        self.admiral = Admiral(self.d, key)
        self.work = self.admiral.working_copy(root / "site", "site")
        self.repo = AppRepo(self.d, "direct", root / "direct")
        self.figures: dict[str, list[float]] = {}

    def measure(self, kind: str, round_: Callable[[], tuple[float, str]]) -> None:
        before = cpu_ms(self.d)
        served, sha = round_()
        got = stages(self.d, sha)
        self.note(f"{kind}: served", served * 1000)
        self.note(f"{kind}: daemon CPU", cpu_ms(self.d) - before)
        self.note(f"{kind}: queued → swapped", sum(got[s] for s in STAGES_TO_SWAP) + got["queue"])
        self.note(f"{kind}: overhead", got["overhead"])  # bench/deploy.py's: gaps included

    def note(self, figure: str, value: float) -> None:
        self.figures.setdefault(figure, []).append(value)


STAGES_TO_SWAP = ("export", "assemble", "build", "start", "health", "swap")


def main(args: argparse.Namespace) -> None:
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")
    with TemporaryDirectory(prefix="hd-bench-ab-") as tmp:
        open_for_ships(tmp)
        sides: list[Side] = []
        try:
            for name, tree in (("this", ROOT), ("other", args.other.resolve())):
                (Path(tmp) / name).mkdir()
                sides.append(Side(name, tree, Path(tmp) / name, args.drain))
            for side in sides:  # first deploys: hull, nginx routes, bridge
                ssh_round(side.d, side.admiral, side.work, -1)
                trigger_round(side.d, side.repo, 0)
            for i in range(1, args.rounds + 1):
                for side in sides if i % 2 else sides[::-1]:
                    side.measure("trigger", lambda s=side, n=i: trigger_round(s.d, s.repo, n))
                    side.measure("push", lambda s=side, n=i: ssh_round(s.d, s.admiral, s.work, n))
            report(sides)
        finally:
            for side in sides:
                teardown(side.d)
    print(f"load average {os.getloadavg()[0]:.1f}")


def report(sides: list[Side]) -> None:
    this, other = sides
    print(f"{'figure (p50)':34} {'this':>9} {'other':>9} {'other ÷ this':>13}")
    for figure, values in this.figures.items():
        theirs = other.figures[figure]
        ratios = [b / a for a, b in zip(values, theirs, strict=True) if a > 0]
        print(
            f"{figure:34} {statistics.median(values):7.0f} ms {statistics.median(theirs):7.0f} ms"
            f" {statistics.median(ratios):12.2f}x"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("other", type=Path)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--drain", type=float, default=1.0)
    main(parser.parse_args())
