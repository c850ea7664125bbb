"""Starting nginx's master: one that dies as it starts is said at once, not after the timeout."""

import asyncio
import contextlib
import subprocess
import time
from pathlib import Path

import pytest

from hyperdrive.nginx_reload import MasterDied, Nginx


def pid_file(tmp_path: Path, pid: int) -> Nginx:
    nginx = Nginx(tmp_path / "nginx", timeout=30.0)
    nginx.pid_file.parent.mkdir(parents=True)
    nginx.pid_file.write_text(f"{pid}\n")
    return nginx


def until_zombie(proc: subprocess.Popen[bytes]) -> None:
    for _ in range(500):
        state = Path(f"/proc/{proc.pid}/stat").read_text().rpartition(")")[2].split()[0]
        if state == "Z":
            return
        time.sleep(0.01)
    raise AssertionError(f"{proc.pid} did not exit")


async def test_a_new_master_that_died_before_it_was_seen_fails_the_start_at_once(
    tmp_path: Path,
) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()  # exited and reaped: no /proc entry left
    nginx = pid_file(tmp_path, gone.pid)
    began = time.monotonic()
    with pytest.raises(MasterDied, match=f"new master {gone.pid} died as it started"):
        await nginx._wait_for_master(before=1)
    assert time.monotonic() - began < 5  # not the 30 s timeout
    assert not nginx.started.is_set()


async def test_a_new_master_that_is_a_zombie_already_fails_the_start_at_once(
    tmp_path: Path,
) -> None:
    dead = subprocess.Popen(["true"])
    try:
        until_zombie(dead)  # exited, not reaped yet: its parent has not waited
        with pytest.raises(MasterDied):
            await pid_file(tmp_path, dead.pid)._wait_for_master(before=None)
    finally:
        dead.wait()


async def test_the_dead_masters_own_pid_is_not_mistaken_for_a_new_one(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    nginx = pid_file(tmp_path, gone.pid)  # still the killed master's: the new one is not up
    waiting = asyncio.create_task(nginx._wait_for_master(before=gone.pid))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
