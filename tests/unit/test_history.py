"""How many stored events a reader may ask for: one bound for `hd logs`, `ssh … logs` and
/events, refused as a usage error (exit 2) before any read starts."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from hyperdrive.access import Identity
from hyperdrive.admiral import AdmiralCommands
from hyperdrive.history import MAX_HISTORY, parse_history

BAD = ["-5", "-1", "1e23", str(10**23), "１２", "²", "", " 5", "5 ", "0x10", str(MAX_HISTORY + 1)]


@pytest.mark.parametrize("text", BAD)
def test_bad_counts_are_refused_naming_the_bound(text: str) -> None:
    with pytest.raises(ValueError, match=f"0 to {MAX_HISTORY} or 'all'"):
        parse_history(text)


def test_good_counts() -> None:
    assert [parse_history(t) for t in ("0", "7", str(MAX_HISTORY), "all")] == [
        0,
        7,
        MAX_HISTORY,
        None,
    ]


@pytest.mark.parametrize("count", ["-5", str(10**23)])
def test_hd_logs_refuses_a_bad_count_as_a_usage_error(count: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hyperdrive", "logs", "-n", count],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert f"0 to {MAX_HISTORY} or 'all'" in done.stderr


class _Stream:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


class _Process:
    """Only what a refused command line touches of an SSH process."""

    def __init__(self) -> None:
        self.stdout, self.stderr = _Stream(), _Stream()


@pytest.mark.parametrize("count", ["-5", str(10**23)])
async def test_ssh_logs_refuses_a_bad_count_as_a_usage_error(count: str) -> None:
    refused: Any = None
    commands = AdmiralCommands(refused, refused, dict, refused)  # nothing is read
    process = _Process()
    status = await commands(Identity("alice"), ["logs", "-n", count], process)  # type: ignore[arg-type]
    assert status == 2
    assert f"0 to {MAX_HISTORY} or 'all'" in process.stderr.data.decode()
    assert process.stdout.data == b""
