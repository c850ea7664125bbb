"""Programs run with a limit: their status and words come back; a hung one is killed."""

import asyncio
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import uvloop

from hyperdrive import procs
from hyperdrive.errors import CommandFailed
from hyperdrive.procs import PIPE, check_output, run, spawn


async def test_status_and_words_come_back() -> None:
    result = await run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10)
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert result.output == "err"


async def test_stdin_reaches_the_program() -> None:
    assert await check_output(["cat"], timeout=10, stdin=b"hello") == "hello"


async def test_failure_carries_the_program_words() -> None:
    with pytest.raises(CommandFailed, match="exited 2: no such thing"):
        await check_output(["sh", "-c", "echo no such thing >&2; exit 2"], timeout=10)


async def test_a_hung_program_is_killed_at_its_timeout() -> None:
    started = time.monotonic()
    result = await run(["sleep", "30"], timeout=0.2)
    assert result.returncode is None
    assert "no answer within 0.2 s" in result.output
    assert time.monotonic() - started < 5


async def test_cancelling_the_caller_kills_the_program(tmp_path) -> None:
    marker = tmp_path / "survived"
    task = asyncio.create_task(run(["sh", "-c", f"sleep 1; touch {marker}"], timeout=30))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(1.5)
    assert not marker.exists()


LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def on(loop: str, test: Callable[[], Awaitable[None]]) -> None:
    """Run `test` on one of the loops the daemon may run on (HYPERDRIVE_EVENT_LOOP)."""
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(test())  # type: ignore[arg-type]


@pytest.mark.parametrize("loop", LOOPS)
def test_a_program_may_open_its_own_stdout_and_stderr(loop: str) -> None:
    on(loop, _a_program_may_open_its_own_stdout_and_stderr)


async def _a_program_may_open_its_own_stdout_and_stderr() -> None:
    """What shell scripts in builds do; uvloop's own socket pairs refuse it (ENXIO)."""
    script = "echo out > /dev/stdout; echo err > /dev/stderr; cat /dev/stdin"
    result = await run(["sh", "-c", script], timeout=10, stdin=b"in\n")
    assert (result.returncode, result.stdout, result.stderr) == (0, "out\nin\n", "err\n")
    script = "echo a > /dev/stdout; echo b > /dev/stderr"
    assert (await run(["sh", "-c", script], timeout=10, merge=True)).stdout == "a\nb\n"


@pytest.mark.parametrize("loop", LOOPS)
def test_a_program_that_exits_without_reading_its_stdin_is_no_error(loop: str) -> None:
    on(loop, _a_program_that_exits_without_reading_its_stdin_is_no_error)


async def _a_program_that_exits_without_reading_its_stdin_is_no_error() -> None:
    for _ in range(20):  # the race: the program gone before its stdin is written
        result = await run(["true"], timeout=10, stdin=b"x" * 200_000)
        assert result.returncode == 0
    assert (await run(["cat"], timeout=10, stdin=b"")).returncode == 0


@pytest.mark.parametrize("loop", LOOPS)
def test_spawned_streams_are_what_the_caller_asked_for(loop: str) -> None:
    on(loop, _spawned_streams_are_what_the_caller_asked_for)


async def _spawned_streams_are_what_the_caller_asked_for() -> None:
    proc = await spawn("sh", "-c", "read line; echo got $line", stdin=PIPE, stdout=PIPE)
    assert proc.stdin is not None
    assert proc.stdout is not None
    assert proc.stderr is None
    proc.stdin.write(b"hello\n")
    await proc.stdin.drain()
    proc.stdin.close()
    assert await proc.stdout.readline() == b"got hello\n"
    assert await proc.wait() == 0
    with pytest.raises(FileNotFoundError):
        await spawn("/nonexistent/program", stdout=PIPE)


async def test_a_follower_dies_with_the_process_that_started_it_even_on_sigkill() -> None:
    """`nft monitor` and `lxc-monitor` must not outlive a daemon killed with SIGKILL."""
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c",
        "import subprocess, sys, time\n"
        f"child = subprocess.Popen({procs.dying_with_us('sleep', '60')!r})\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert parent.stdout is not None
    follower = int(await asyncio.wait_for(parent.stdout.readline(), 10))
    parent.kill()
    await parent.wait()
    for _ in range(500):  # bounded: the kernel signals the follower as its parent dies
        if not _running(follower):
            break
        await asyncio.sleep(0.01)
    assert not _running(follower)


def _running(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return False


async def test_until_said_returns_once_the_program_speaks_and_reaps_it_later(tmp_path) -> None:
    """nft --echo's case: the answer is the first output; the exit comes after, unwaited."""
    gate, exited = tmp_path / "gate", tmp_path / "exited"
    wait = f"i=0; while [ ! -e {gate} ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done"
    script = f'read line; echo "$line"; {wait}; touch {exited}'
    said = await procs.run_until_said(["sh", "-c", script], timeout=10, stdin=b"commit\n")
    assert said is None
    assert not exited.exists()  # still running: it cannot exit before the gate opens
    gate.touch()
    await asyncio.wait_for(asyncio.gather(*procs._reaping), 10)
    assert exited.exists()
    assert not procs._reaping


async def test_until_said_logs_a_failure_after_the_output(caplog) -> None:
    said = await procs.run_until_said(["sh", "-c", "echo ok; echo late >&2; exit 4"], timeout=10)
    assert said is None
    await asyncio.wait_for(asyncio.gather(*procs._reaping), 10)
    assert "exited 4 after its output: late" in caplog.text


async def test_until_said_gives_the_status_of_a_program_that_says_nothing() -> None:
    said = await procs.run_until_said(["sh", "-c", "echo refused >&2; exit 1"], timeout=10)
    assert said is not None
    assert (said.returncode, said.output) == (1, "refused")


async def test_until_said_kills_a_silent_program_at_its_timeout() -> None:
    said = await procs.run_until_said(["sleep", "30"], timeout=0.2)
    assert said is not None
    assert said.returncode is None
    assert "no answer within 0.2 s" in said.output


def test_a_loop_that_ends_waits_for_the_programs_still_being_reaped(tmp_path) -> None:
    exited = tmp_path / "exited"

    async def main() -> None:
        script = f"echo done; sleep 0.2; touch {exited}"
        assert await procs.run_until_said(["sh", "-c", script], timeout=10) is None

    asyncio.run(main())  # cancels the reaper, which still waits for the exit
    assert exited.exists()


async def test_a_thread_cancelled_from_its_caller_is_waited_for_to_its_end() -> None:
    started, wrote = threading.Event(), []

    def slow_write() -> str:
        started.set()
        time.sleep(0.3)
        wrote.append("all of it")
        return "done"

    caller = asyncio.create_task(procs.in_thread_to_its_end(slow_write))
    await asyncio.to_thread(started.wait, 5)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert wrote == ["all of it"]  # what comes after the cancellation finds the whole write
    assert await procs.in_thread_to_its_end(lambda: 7) == 7
