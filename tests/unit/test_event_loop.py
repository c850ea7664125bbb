"""`hd serve` runs on the loop HYPERDRIVE_EVENT_LOOP names, and says which one it is on."""

from __future__ import annotations

import asyncio
import builtins
import signal
import subprocess
from typing import Any

import pytest

from hyperdrive.errors import ConfigError
from hyperdrive.server import loop_factory
from hyperdrive.status import running_loop


def on(name: str) -> str:
    """The loop `running_loop` reports inside a loop made by `loop_factory(name)`."""

    async def probe() -> str:
        return running_loop()

    with asyncio.Runner(loop_factory=loop_factory(name)) as runner:
        return runner.run(probe())


def test_each_loop_when_asked() -> None:
    assert on("uvloop") == "uvloop"
    assert on("asyncio") == "asyncio"
    assert running_loop() == "", "outside a loop there is none to name"


def test_a_missing_uvloop_is_a_clear_error_naming_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    real = builtins.__import__

    def no_uvloop(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "uvloop":
            raise ImportError("No module named 'uvloop'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_uvloop)
    with pytest.raises(ConfigError, match="HYPERDRIVE_EVENT_LOOP=asyncio"):
        loop_factory("uvloop")
    assert loop_factory("asyncio") is asyncio.new_event_loop


async def _signal_then_child() -> tuple[int, bytes]:
    """What the daemon relies on from its loop: a signal handler, a subprocess in its own
    session with a pipe, and a pidfd that turns readable when a process exits."""
    from hyperdrive.healing import exited  # noqa: PLC0415

    loop, got = asyncio.get_running_loop(), asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, got.set)
    proc = await asyncio.create_subprocess_exec(
        "sh", "-c", "kill -USR1 $PPID; echo out", stdout=asyncio.subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 10)
    await asyncio.wait_for(got.wait(), 10)
    sleeper = subprocess.Popen(["sleep", "0.05"])
    await asyncio.wait_for(exited(sleeper.pid), 10)
    sleeper.wait(5)
    return proc.returncode or 0, out


@pytest.mark.parametrize("name", ["uvloop", "asyncio"])
def test_signals_subprocesses_and_pidfds_work_on_either_loop(name: str) -> None:
    with asyncio.Runner(loop_factory=loop_factory(name)) as runner:
        assert runner.run(_signal_then_child()) == (0, b"out\n")
