"""Figures for headquarters, each printed beside its target.

(a) plan of a 100-app HQ change (parse + check + diff), from a checkout folder and out of a
    bare git commit (bench/hq_plan.py does the work): ≤ 1 s
(b) HQ push → admiral key live: from `git push` start (and from its end) until the new key's
    `ssh … status` has succeeded: ≤ 1 s
(c) HQ push → first DeployQueued: from the HQ trigger's write (the post-receive hook's trigger
    id carries its ms timestamp) and from the push's end, to the DeployQueued event's ts: ≤ 0.2 s

(b) and (c) run a real `hd serve` (root, busybox hull; the squadron is torn down after) and an
admiral pushing real HQ commits over SSH with `git push -o nowait` — the push ends once its
trigger is durable, so nothing hides the daemon's latency. Each round adds a fresh admiral
key and changes one app's orders; the round waits for that redeploy before the next one.

    .venv/bin/python bench/headquarters.py [--apps 100] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import hq_plan  # noqa: E402 - bench/ is the script's own folder

from tests.conftest import Daemon, open_for_ships, wait_for  # noqa: E402
from tests.e2e.squadron import GIT_ENV, make_squadron, teardown  # noqa: E402

SSH_OPTS = [
    "-F", "/dev/null", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
]  # fmt: skip


def run(*argv: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run a program; stop the bench with its output if it fails."""
    done = subprocess.run(
        [str(a) for a in argv],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode:
        raise SystemExit(f"{argv} exited {done.returncode}: {done.stdout}{done.stderr}")
    return done.stdout


def keygen(path: Path) -> Path:
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", path)
    return path


class Admiral:
    """A key and the real ssh/git clients pointed at the squadron."""

    def __init__(self, d: Daemon, key: Path) -> None:
        self.d, self.key = d, key

    def ssh_argv(self) -> list[str]:
        return ["ssh", *SSH_OPTS, "-i", str(self.key)]

    def env(self) -> dict[str, str]:
        return {**os.environ, **GIT_ENV, "GIT_SSH_COMMAND": shlex.join(self.ssh_argv())}

    def status_ok(self) -> bool:
        argv = [*self.ssh_argv(), "-p", str(self.d.ssh_port), "git@127.0.0.1", "status"]
        return subprocess.run(argv, check=False, capture_output=True, timeout=30).returncode == 0

    def git(self, *args: str, cwd: Path) -> str:
        return run("git", *args, cwd=cwd, env=self.env())


def ts(event: dict[str, object]) -> float:
    return datetime.fromisoformat(str(event["ts"]).replace("Z", "+00:00")).timestamp()


def trigger_written(trigger_id: str) -> float:
    """`push-<ms hex>-<random>`: when the post-receive hook made the trigger."""
    return int(trigger_id.split("-")[1], 16) / 1000


def plan_figures(apps: int, runs: int) -> None:
    import asyncssh  # noqa: PLC0415

    keys = [
        asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode() for _ in range(5)
    ]
    with tempfile.TemporaryDirectory() as name:
        open_for_ships(name)
        tmp = Path(name)
        old_root, new_root = hq_plan.changed_hq(tmp, apps, keys)
        old = hq_plan.read_headquarters(old_root, "debian")

        def folder_round() -> None:
            new = hq_plan.read_headquarters(new_root, "debian")
            assert hq_plan.check(new, bootstrap_keys_present=False) == []
            result = hq_plan.plan(old, new, {}, {})
            assert (len(result.changed), len(result.removed), len(result.added)) == (10, 5, 5)

        bare, sha = hq_plan.commit_folder(tmp, new_root)

        def git_round() -> None:
            new = hq_plan.read_headquarters_from_git(bare, sha, "debian")
            assert hq_plan.check(new, bootstrap_keys_present=False) == []
            hq_plan.plan(old, new, {}, {}).lines()

        folder_s, git_s = hq_plan.best(runs, folder_round), hq_plan.best(runs, git_round)
    print(f"(a) {apps}-app HQ change (10 redeploy, 5 retire, 5 deploy), best of {runs}:")
    print(f"    checkout folder: read + check + plan {folder_s * 1000:7.1f} ms  (target ≤ 1000 ms)")
    print(f"    bare git commit: read + check + plan {git_s * 1000:7.1f} ms  (target ≤ 1000 ms)")


class Squadron:
    """A running squadron with an HQ working copy and one hosted app, `site`."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.d = make_squadron(tmp / "hd")
        self.lead = Admiral(self.d, keygen(tmp / "lead"))
        (self.d.root / "admirals.pub").write_text(Path(f"{self.lead.key}.pub").read_text())
        self.keys: dict[str, str] = {"lead.pub": Path(f"{self.lead.key}.pub").read_text()}

    def start(self) -> None:
        self.d.start()
        self.hq = self._working_copy("headquarters")
        self.commit_hq("export ROUND=0\nhealthcheck / 10\n")
        self._push(self.hq)
        site = self._working_copy("site")
        (site / "index.html").write_text("bench\n")
        self.lead.git("add", "-A", cwd=site)
        self.lead.git("commit", "-q", "-m", "site", cwd=site)
        self.lead.git("push", "-q", "hyperdrive", "master", cwd=site)  # waits for the deploy

    def _working_copy(self, repo: str) -> Path:
        folder = self.tmp / repo
        folder.mkdir()
        self.lead.git("init", "-q", "-b", "master", cwd=folder)
        remote = f"ssh://git@127.0.0.1:{self.d.ssh_port}/{repo}"
        self.lead.git("remote", "add", "hyperdrive", remote, cwd=folder)
        return folder

    def commit_hq(self, orders: str) -> None:
        for name, text in self.keys.items():
            path = self.hq / "authorized_keys" / name
            path.parent.mkdir(exist_ok=True)
            path.write_text(text)
        (self.hq / "site").mkdir(exist_ok=True)
        (self.hq / "site" / "orders").write_text(orders)
        self.lead.git("add", "-A", cwd=self.hq)
        self.lead.git("commit", "-q", "-m", "hq", cwd=self.hq)

    def _push(self, folder: Path) -> None:
        self.lead.git("push", "-q", "-o", "nowait", "hyperdrive", "master", cwd=folder)

    def events(self) -> list[dict[str, object]]:
        return self.d.events()

    def round(self, number: int) -> tuple[float, float, float, float]:
        """(push start → key ok, push end → key ok, trigger → DeployQueued, end → queued)."""
        newcomer = Admiral(self.d, keygen(self.tmp / f"admiral{number}"))
        self.keys[f"admiral{number}.pub"] = Path(f"{newcomer.key}.pub").read_text()
        self.commit_hq(f"export ROUND={number}\nhealthcheck / 10\n")
        mark = len(self.events())
        start = time.time()
        self._push(self.hq)
        end = time.time()
        while not newcomer.status_ok():
            if time.time() - start > 30:
                raise SystemExit(f"admiral{number}'s key never went live: {self.d.log()}")
            time.sleep(0.01)
        live = time.time()
        queued = self._wait(mark, "DeployQueued", lambda e: str(e["deploy"]).startswith("hq-"))
        hq = self._wait(mark, "HeadquartersSynced", lambda e: True)
        self._wait(mark, "DeployFinished", lambda e: e.get("deploy") == queued["deploy"])
        written = trigger_written(str(hq["deploy"]))
        return live - start, live - end, ts(queued) - written, ts(queued) - end

    def _wait(
        self, mark: int, name: str, match: Callable[[dict[str, object]], bool]
    ) -> dict[str, object]:
        def found() -> dict[str, object] | None:
            for event in self.events()[mark:]:
                if event.get("event") == name and match(event):
                    return event
            return None

        return wait_for(found, 90, 0.02, f"{name}; log: {self.d.log()}")


def daemon_figures(rounds: int) -> None:
    with tempfile.TemporaryDirectory() as name:
        open_for_ships(name)
        squadron = Squadron(Path(name))
        try:
            squadron.start()
            figures = [squadron.round(n) for n in range(1, rounds + 1)]
        finally:
            teardown(squadron.d)
    columns = list(zip(*figures, strict=True))

    def show(label: str, values: tuple[float, ...], target: str) -> None:
        ms = sorted(v * 1000 for v in values)
        print(
            f"    {label}: median {statistics.median(ms):6.0f} ms, worst {ms[-1]:6.0f} ms "
            f"({', '.join(f'{v:.0f}' for v in ms)})  (target {target})"
        )

    print(f"(b) HQ push → new admiral key live (its `ssh status` succeeded), {rounds} rounds:")
    show("from push start", columns[0], "≤ 1000 ms")
    show("from push end  ", columns[1], "≤ 1000 ms")
    print(f"(c) HQ push → first DeployQueued, {rounds} rounds:")
    show("from trigger write", columns[2], "≤ 200 ms")
    show("from push end     ", columns[3], "≤ 200 ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--apps", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    plan_figures(args.apps, args.runs)
    daemon_figures(args.rounds)


if __name__ == "__main__":
    main()
