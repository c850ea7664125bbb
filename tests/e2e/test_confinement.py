"""An app's own code, run by a real daemon, tries what a hostile tester did as root, and fails.

The build script below is the attack from the security review: make a block device of the
host's disk and mount it, read host files, fork without bound. Ships are unprivileged (root in a
ship is an ordinary uid on the host), confined by LXC's seccomp and device rules, and limited in
processes; the build still runs, the app still serves, and `hd enter` still opens its ship.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyperdrive.idmap import for_ships
from tests.conftest import Daemon
from tests.e2e.squadron import AppRepo, http_get, make_squadron, teardown, wait_outcome

pytestmark = [pytest.mark.root, pytest.mark.lxc, pytest.mark.nginx, pytest.mark.slow]

PIDS = 64
DISK = os.stat("/").st_dev
ATTACK = f"""#!/bin/sh
echo "map: $(cat /proc/self/uid_map)"
mknod /tmp/hostdisk b {os.major(DISK)} {os.minor(DISK)} && echo DEVICE MADE
mkdir -p /mnt/h && mount -t ext4 /tmp/hostdisk /mnt/h && echo DISK MOUNTED
cat /proc/1/root/etc/shadow 2>/dev/null | head -c 20 && echo
sh -c 'i=0; while [ $i -lt 300 ]; do sleep 3 >/dev/null 2>&1 & i=$((i+1)); done' 2>/dev/null
set -- /proc/[0-9]*
echo "processes: $#"
echo built > /app/marker
"""


@pytest.fixture
def squadron(tmp_path: Path) -> Iterator[Daemon]:
    d = make_squadron(tmp_path / "hd", HYPERDRIVE_SHIP_PIDS=str(PIDS))
    try:
        d.start()
        yield d
    finally:
        teardown(d)


def test_a_hostile_build_is_contained_and_the_app_still_serves(
    squadron: Daemon, tmp_path: Path
) -> None:
    ids = for_ships()
    repo = AppRepo(squadron, "web", tmp_path / "web")
    sha = repo.commit(
        {
            "bin/build": ATTACK,
            "Procfile": "web: busybox httpd -f -p $PORT -h /app\n",
            "index.html": "still serving\n",
        }
    )
    outcome = wait_outcome(squadron, repo.push_trigger(sha))
    assert outcome["event"] == "DeployFinished", outcome
    log = Path(squadron.data / "lxc" / outcome["ship"] / "setup.log").read_text()
    assert log.split("map:")[1].split()[:3] == ["0", str(ids.uid), "65536"], log
    assert "DEVICE MADE" not in log
    assert "DISK MOUNTED" not in log
    assert "Operation not permitted" in log
    processes = int(log.split("processes:")[1].split()[0])
    assert processes <= PIDS, log
    assert http_get(squadron.http_port, "/web/") == (200, "still serving\n")
    made = (squadron.data / "lxc" / outcome["ship"] / "app" / "marker").stat()
    assert (made.st_uid, made.st_gid) == (ids.uid, ids.gid)

    entered = subprocess.run(
        [sys.executable, "-m", "hyperdrive", "enter", "web"],
        input="id -u; cat /proc/self/uid_map; exit\n",
        capture_output=True,
        text=True,
        timeout=30,
        env=squadron.env,
        check=False,
    )
    assert entered.returncode == 0, entered.stderr
    assert entered.stdout.split()[:4] == ["0", "0", str(ids.uid), "65536"], entered.stdout
