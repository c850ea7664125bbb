"""The default `debian` hull starts building when the daemon first starts: `hd status` shows it,
a push that arrives meanwhile waits for that same build (and its pusher sees it), and a daemon
stopped mid-build leaves no half-made hull and builds it at its next start.

The build is held at a known point by taking the kept Debian tree's lock (the copy, or on a
host without a kept tree the full build's last step, waits for it), so nothing here depends on
how fast the build is.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from hyperdrive.hull_debian import Seed
from tests.conftest import Daemon, wait_for
from tests.e2e.squadron import Admiral, admiral_squadron, containers, http_get, make_squadron
from tests.e2e.squadron import teardown as teardown_squadron

pytestmark = [pytest.mark.root, pytest.mark.lxc, pytest.mark.nginx, pytest.mark.slow]

BUILD_S = 900  # a host with no kept tree yet makes a full build (minutes)


@contextlib.contextmanager
def seed_held() -> Iterator[IO[str]]:
    """The kept tree's lock, held exclusively: a Debian hull build cannot finish meanwhile."""
    seed = Seed.in_cache(None)
    lock = seed.folder.with_name(seed.folder.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield handle


def building(d: Daemon) -> dict | None:
    status = json.loads(d.hd("status", "--json").stdout)
    return status["hulls"]["debian"]["building"]


def hull_events(d: Daemon, deploy: str | None) -> list[dict]:
    return [e for e in d.events() if e["event"].startswith("Hull") and e.get("deploy") == deploy]


@pytest.mark.timeout(BUILD_S + 300)
def test_first_start_builds_the_default_hull_and_a_push_waits_for_that_build(
    tmp_path: Path,
) -> None:
    with (
        seed_held() as lock,
        admiral_squadron(tmp_path, HYPERDRIVE_HULL="debian") as (d, admiral),
    ):
        name = d.env["HYPERDRIVE_NAME"]
        hull = f"{name}-hull-debian-1"
        started = d.wait_event("HullBuildStarted", hull=hull)
        assert started.get("deploy") is None, "built at start-up, not for a deploy"
        assert "in the background" in started["message"]
        assert building(d) is not None
        assert building(d)["hull"] == hull  # type: ignore[index]
        shown = [line.split() for line in d.hd("status").stdout.splitlines()]
        assert any(words[:3] == ["hulls", "debian", "building"] for words in shown)

        push = pushing(admiral, tmp_path / "site")
        joined = wait_for(
            lambda: next((e for e in d.events() if "waiting for it" in e.get("message", "")), None),
            60,
            0.1,
            "the push's deploy to wait for the hull build",
        )
        fcntl.flock(lock, fcntl.LOCK_UN)
        out, _ = push.communicate(timeout=BUILD_S)
        assert push.returncode == 0, out
        assert "waiting for it" in out, out
        assert f"hull '{hull}' ready in" in out, "the pusher sees the build it waited for"
        assert "site deployed" in out, out
        assert http_get(d.http_port, "/site/") == (200, "on the first hull\n")

        ours = hull_events(d, joined["deploy"])
        assert ours[0]["event"] == "HullBuildStarted"
        assert ours[-1]["event"] == "HullAssembled"
        starts = [e for e in d.events() if e["event"] == "HullBuildStarted"]
        assert [e["hull"] for e in starts] == [hull, hull], "one build, joined by the deploy"
        record = json.loads((d.data / "records" / "hulls.json").read_text())
        assert record.keys() == {"debian"}
        assert record["debian"]["version"] == 1
        runtimes = record["debian"]["runtimes"]
        assert runtimes["python"].startswith("3.11."), "bookworm's Python, measured"
        assert runtimes["node"].startswith("18."), "bookworm's Node, measured"
        assert json.loads(d.hd("status", "--json").stdout)["hulls"]["debian"] == {
            "current": hull,
            "building": None,
            "runtimes": runtimes,
        }


def pushing(admiral: Admiral, folder: Path) -> subprocess.Popen[str]:
    """`git push` of a static site, left running (it shows the deploy until it ends)."""
    work = admiral.working_copy(folder, "site")
    admiral.commit(work, {"index.html": "on the first hull\n"})
    return subprocess.Popen(
        ["git", "push", "hyperdrive", "master"],
        cwd=work,
        env=admiral.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.timeout(BUILD_S + 300)
def test_a_daemon_stopped_mid_build_cleans_up_and_builds_at_next_start(tmp_path: Path) -> None:
    d = make_squadron(tmp_path / "hd", HYPERDRIVE_HULL="debian")
    try:
        with seed_held():
            d.start()
            hull = f"{d.env['HYPERDRIVE_NAME']}-hull-debian-1"
            d.wait_event("HullBuildStarted", hull=hull)
            assert d.stop(signal.SIGTERM) == 0
        failed = d.wait_event("HullBuildFailed", hull=hull)
        assert "stopped with the daemon" in failed["message"]
        assert containers(d) == set(), "no half-made hull is left"
        assert not (d.data / "records" / "hulls.json").exists()

        d.start()
        assembled = d.wait_event("HullAssembled", timeout=BUILD_S, hull=hull)
        assert assembled.get("deploy") is None
        assert containers(d) == {hull}
        record = json.loads((d.data / "records" / "hulls.json").read_text())
        assert record["debian"]["version"] == 1
        assert d.stop() == 0
    finally:
        teardown_squadron(d)
