"""Running programs: argument lists, a timeout on every call, their own words in every error.

The child never outlives the call: on a timeout or a cancellation it is killed and reaped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hyperdrive.errors import CommandFailed


@dataclass(frozen=True)
class Completed:
    """What a program did: its status (None when it timed out) and what it said."""

    argv: list[str]
    returncode: int | None
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        """What to show a person: stderr if it said anything, else stdout."""
        return self.stderr.strip() or self.stdout.strip()


async def run(
    argv: Sequence[str],
    *,
    timeout: float,  # noqa: ASYNC109 - the program's limit: it is killed when it passes
    stdin: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    merge: bool = False,
) -> Completed:
    """Run argv to its end (or its timeout) and return what happened; never raises on status."""
    args = [str(a) for a in argv]
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if merge else asyncio.subprocess.PIPE,
        env=None if env is None else dict(env),
        cwd=cwd,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        return Completed(args, None, "", f"no answer within {timeout:g} s")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return Completed(args, proc.returncode, _text(out), _text(err))


async def check_output(
    argv: Sequence[str],
    *,
    timeout: float,  # noqa: ASYNC109 - the program's limit: it is killed when it passes
    stdin: bytes | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """stdout of a program that must succeed; CommandFailed carries its own words otherwise."""
    result = await run(argv, timeout=timeout, stdin=stdin, env=env)
    if result.returncode != 0:
        raise CommandFailed(result.argv, result.returncode, result.output)
    return result.stdout


def _text(data: bytes | None) -> str:
    return (data or b"").decode(errors="replace")
