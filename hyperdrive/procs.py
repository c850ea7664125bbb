"""Running programs: argument lists, a timeout on every call, their own words in every error.

The child never outlives the call: on a timeout or a cancellation it is killed and reaped.
Its pipes are real pipes on any event loop (`spawn`).
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hyperdrive.errors import CommandFailed

PIPE, STDOUT, DEVNULL = (
    asyncio.subprocess.PIPE,
    asyncio.subprocess.STDOUT,
    asyncio.subprocess.DEVNULL,
)
LIMIT = 1 << 16  # asyncio's own default line limit of a StreamReader


def dying_with_us(*argv: str) -> list[str]:
    """argv for a follower that lives as long as the daemon (`nft monitor`, `lxc-monitor`):
    util-linux's setpriv asks the kernel to SIGKILL it when the daemon dies, SIGKILL
    included, then runs it; without setpriv, argv as it is."""
    setpriv = _setpriv()
    return [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else list(argv)


@functools.cache
def _setpriv() -> str | None:
    import shutil  # noqa: PLC0415 - a follower's first start only

    return shutil.which("setpriv")


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
    proc = await spawn(
        *args,
        stdin=DEVNULL if stdin is None else PIPE,
        stdout=PIPE,
        stderr=STDOUT if merge else PIPE,
        env=None if env is None else dict(env),
        cwd=cwd,
    )
    try:
        out, err = await asyncio.wait_for(communicate(proc, stdin), timeout)
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


async def spawn(
    *argv: str,
    stdin: Any = None,
    stdout: Any = None,
    stderr: Any = None,
    limit: int = LIMIT,
    pipe_owner: tuple[int, int] | None = None,
    **options: Any,
) -> asyncio.subprocess.Process:
    """`asyncio.create_subprocess_exec`, whose PIPEs are pipes on every loop. uvloop gives a
    child socket pairs instead, which a program cannot open as /dev/stdout or /dev/stderr
    (`echo x > /dev/stderr` in a script fails with ENXIO), so the pipes are made here.

    A pipe is its maker's, mode 0600: `pipe_owner` (uid, gid) gives it to whoever must reopen
    it through /dev/stderr, such as a ship's root, whose ids are not the host's root."""
    given: dict[str, Any] = {"stdin": stdin, "stdout": stdout, "stderr": stderr}
    ours: dict[str, int] = {}  # our end of each pipe, by stream
    for name, value in given.items():
        if value == PIPE:
            read, write = os.pipe()
            given[name], ours[name] = (read, write) if name == "stdin" else (write, read)
            if pipe_owner is not None:
                os.fchown(read, *pipe_owner)  # one inode for both ends
    if stderr == STDOUT and stdout == PIPE:
        given["stderr"] = given["stdout"]
    theirs = [given[name] for name in ours]
    try:
        proc = await asyncio.create_subprocess_exec(
            argv[0], *argv[1:], stdin=given["stdin"], stdout=given["stdout"],
            stderr=given["stderr"], **options,
        )  # fmt: skip
    except BaseException:
        for fd in ours.values():
            os.close(fd)
        raise
    finally:
        for fd in theirs:
            os.close(fd)
    await _streams(proc, ours, limit)
    return proc


class _PipeReader(asyncio.StreamReaderProtocol):
    """A pipe has no other half to keep open: its transport closes at EOF, on uvloop too."""

    def eof_received(self) -> bool:
        super().eof_received()
        return False


async def _streams(proc: asyncio.subprocess.Process, ours: dict[str, int], limit: int) -> None:
    """Our ends of the pipes as the process's `stdin` writer and `stdout`/`stderr` readers."""
    loop = asyncio.get_running_loop()
    for name, fd in ours.items():
        pipe = os.fdopen(fd, "wb" if name == "stdin" else "rb", buffering=0)
        if name == "stdin":
            transport, protocol = await loop.connect_write_pipe(
                asyncio.streams.FlowControlMixin, pipe
            )
            proc.stdin = asyncio.StreamWriter(transport, protocol, None, loop)
            continue
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        await loop.connect_read_pipe(functools.partial(_PipeReader, reader), pipe)
        setattr(proc, name, reader)


async def communicate(proc: asyncio.subprocess.Process, data: bytes | None) -> tuple[bytes, bytes]:
    """`Process.communicate` for a process from `spawn`: feed stdin, read stdout and stderr to
    their ends, wait. A program that stops reading its stdin is told by its status, not here."""

    async def feed(writer: asyncio.StreamWriter) -> None:
        try:
            if data and not writer.is_closing():
                writer.write(data)
                await writer.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            writer.close()

    async def read(reader: asyncio.StreamReader | None) -> bytes:
        return b"" if reader is None else await reader.read()

    feeding = feed(proc.stdin) if proc.stdin is not None else asyncio.sleep(0)
    _, out, err = await asyncio.gather(feeding, read(proc.stdout), read(proc.stderr))
    await proc.wait()
    return out, err


def _text(data: bytes | None) -> str:
    return (data or b"").decode(errors="replace")
