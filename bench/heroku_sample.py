"""The Heroku sample (tests/fixtures/python-getting-started: Django, gunicorn, whitenoise) built
from a package index in a world namespace of its own: a cold build (empty pip cache) and a warm
rebuild (a one-line change; pip's cache in `$VAR/cache/<app>` is mounted in every ship).

Prints the build stage (`ShipBuilt` ms: venv, pip install, collectstatic), the whole deploy
(`DeployFinished` ms, the drain included) and the wheels the index handed out. The debian-13
hull is built (or copied from its kept tree) before the clock starts. No traffic leaves the
machine: the wheels come from `.ci/run`'s download. Run as root:
    .venv/bin/python bench/heroku_sample.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path
from tempfile import TemporaryDirectory

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import Daemon, open_for_ships
from tests.e2e.squadron import AppRepo, behind_world, git, wait_outcome
from tests.e2e.wheel_index import require_wheels

SAMPLE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "python-getting-started"
PROJECTS = ("django", "gunicorn", "whitenoise", "asgiref", "sqlparse", "packaging")


def push(d: Daemon, repo: AppRepo, note: str) -> dict[str, int]:
    """Commit the sample with `note` in a file of its own; the deploy's figures."""
    shutil.copytree(SAMPLE, repo.dir, dirs_exist_ok=True)
    (repo.dir / "NOTE").write_text(note)
    git("add", "-A", cwd=repo.dir)
    git("commit", "-q", "-m", note, cwd=repo.dir)
    deploy = repo.push_trigger(git("rev-parse", "HEAD", cwd=repo.dir))
    outcome = wait_outcome(d, deploy, timeout=900)
    assert outcome["event"] == "DeployFinished", outcome.get("message")
    mine = [e for e in d.events() if e.get("deploy") == deploy]
    built = next(e for e in mine if e["event"] == "ShipBuilt")
    return {"build": built["ms"], "total": outcome["ms"]}


def main(args: argparse.Namespace) -> None:
    wheels = require_wheels(*PROJECTS)
    with TemporaryDirectory(prefix="hd-bench-heroku-") as tmp:
        open_for_ships(tmp)
        root = Path(tmp)
        with behind_world(root, wheels, mirror=True, HYPERDRIVE_HULL="debian-13") as (d, world):
            assembled = d.hd("assemble", timeout=900)
            assert assembled.returncode == 0, assembled.stdout + assembled.stderr
            repo = AppRepo(d, "sample", root / "sample")
            cold = push(d, repo, "cold\n")
            downloads = sum(1 for r in world.requests() if r["path"].startswith("/files/"))
            warm = [push(d, repo, f"warm {i}\n") for i in range(args.rounds)]
            again = sum(1 for r in world.requests() if r["path"].startswith("/files/"))
    print(
        f"cold build (empty pip cache): build {cold['build'] / 1000:.1f} s, "
        f"deploy {cold['total'] / 1000:.1f} s, {downloads} wheels downloaded"
    )
    builds = [w["build"] / 1000 for w in warm]
    totals = [w["total"] / 1000 for w in warm]
    print(
        f"warm rebuild, median of {len(warm)}: build {statistics.median(builds):.1f} s, "
        f"deploy {statistics.median(totals):.1f} s, {again - downloads} wheels downloaded"
    )
    print(f"ratio cold/warm build: {cold['build'] / 1000 / statistics.median(builds):.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    main(parser.parse_args())
