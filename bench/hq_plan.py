"""Figure: parse + plan of a 100-app HQ change (target ≤ 1 s).

Builds a 100-app HQ in a temp dir, changes it (10 redeploys, 5 retirements, 5 new apps),
then times read_headquarters + check + plan from a checkout folder, and the same read out
of a bare git repo at a commit (what a pre-receive check does). Prints the best of N runs.

    .venv/bin/python bench/hq_plan.py [--apps 100] [--runs 5]
"""

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

import asyncssh

from hyperdrive.headquarters import check, plan, read_headquarters, read_headquarters_from_git

ORDERS = """\
# orders for {app}
autodeploy https://git.example.com/team/{app}.git#main
export PORT={port}
export PUBLISH_PORT={publish}
export DATABASE_URL="postgres://{app}@db/{app}"
export LOG_LEVEL=info FEATURE_FLAGS='a,b,c'
hull debian
healthcheck /healthz 30
servername {app}.example.com www.{app}.example.com
memory 512M
cpus 1.5
"""
GIT_ENV = {
    "PATH": os.environ["PATH"],
    "HOME": "/nonexistent",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.com",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.com",
}


def write_hq(root: Path, apps: range, port: int, keys: list[str]) -> None:
    """An HQ with one orders file per app and a few admirals."""
    (root / "authorized_keys").mkdir(parents=True, exist_ok=True)
    for number, key in enumerate(keys):
        (root / "authorized_keys" / f"admiral{number}.pub").write_text(key)
    for number in apps:
        app = f"app{number:03d}"
        (root / app).mkdir(exist_ok=True)
        text = ORDERS.format(app=app, port=port, publish=20000 + number)
        (root / app / "orders").write_text(text)


def git(*args: str, cwd: Path) -> str:
    """Run git quietly; fail loudly with its output."""
    done = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env=GIT_ENV,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode:
        raise SystemExit(f"git {args} failed: {done.stderr}")
    return done.stdout.strip()


def changed_hq(tmp: Path, apps: int, keys: list[str]) -> tuple[Path, Path]:
    """Old and new HQ checkouts: 10 PORT changes, 5 retired apps, 5 new apps."""
    old, new = tmp / "old", tmp / "new"
    write_hq(old, range(apps), 3000, keys)
    write_hq(new, range(10), 3001, keys)
    write_hq(new, range(10, apps - 5), 3000, keys)
    write_hq(new, range(apps, apps + 5), 3000, keys)
    return old, new


def commit_folder(tmp: Path, folder: Path) -> tuple[Path, str]:
    """A bare repo holding `folder` as one commit."""
    bare = tmp / "headquarters.git"
    git("init", "-q", "-b", "master", cwd=folder)
    git("add", "-A", cwd=folder)
    git("commit", "-q", "-m", "hq", cwd=folder)
    git("clone", "-q", "--bare", str(folder), str(bare), cwd=tmp)
    return bare, git("rev-parse", "HEAD", cwd=folder)


def best(runs: int, work) -> float:
    """Best wall time of `runs` calls, in seconds."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--apps", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    keys = [
        asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode() for _ in range(5)
    ]
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        old_root, new_root = changed_hq(tmp, args.apps, keys)
        old = read_headquarters(old_root, "debian")

        def folder_round() -> None:
            new = read_headquarters(new_root, "debian")
            assert check(new, bootstrap_keys_present=False) == []
            result = plan(old, new, {}, {})
            assert (len(result.changed), len(result.removed), len(result.added)) == (10, 5, 5)

        bare, sha = commit_folder(tmp, new_root)

        def git_round() -> None:
            new = read_headquarters_from_git(bare, sha, "debian")
            assert check(new, bootstrap_keys_present=False) == []
            plan(old, new, {}, {}).lines()

        folder_s, git_s = best(args.runs, folder_round), best(args.runs, git_round)
    print(f"{args.apps}-app HQ change (10 redeploy, 5 retire, 5 deploy), best of {args.runs}:")
    print(f"  checkout folder: read + check + plan  {folder_s * 1000:7.1f} ms  (target ≤ 1000 ms)")
    print(f"  bare git commit: read + check + plan  {git_s * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
