"""Programs run with a limit: their status and words come back; a hung one is killed."""

import asyncio
import time

import pytest

from hyperdrive.errors import CommandFailed
from hyperdrive.procs import check_output, run


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
