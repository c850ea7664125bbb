"""Running programs: argument lists, a timeout on every call, their own words in every error.

The child never outlives the call: on a timeout or a cancellation it is killed and reaped.
The one exception is `run_until_said`, for a program whose work is done once it says so and
whose exit takes longer: a task of its own reaps it. Its pipes are real pipes on any event
loop (`spawn`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from hyperdrive.errors import CommandFailed

PIPE, STDOUT, DEVNULL = (
    asyncio.subprocess.PIPE,
    asyncio.subprocess.STDOUT,
    asyncio.subprocess.DEVNULL,
)
LIMIT = 1 << 16  # asyncio's own default line limit of a StreamReader
T = TypeVar("T")
log = logging.getLogger(__name__)
_reaping: set[asyncio.Task[None]] = set()  # children of run_until_said still exiting


async def in_thread_to_its_end(fn: Callable[..., T], *args: Any) -> T:
    """`asyncio.to_thread`, but a cancelled caller still waits for the thread to end: a thread
    that writes a ship's files goes on after a cancellation, and what runs next (a superseded
    deploy's scrap) must find all it wrote, not race it."""
    work = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await work
        raise


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


async def run_until_said(
    argv: Sequence[str],
    *,
    timeout: float,  # noqa: ASYNC109 - the program's limit: it is killed when it passes
    stdin: bytes | None = None,
) -> Completed | None:
    """Run argv until it writes to stdout: then None, and a task reaps it (a status other than
    0 is logged). A program that exits without writing anything gives its Completed, as `run`.

    For `nft --echo`: the kernel echoes a transaction once it is committed, and nft's exit
    then waits ~12 ms more in the kernel (its netlink socket's release flushes the freeing of
    what the transaction removed, an RCU grace period) with nothing left to do for us."""
    args = [str(a) for a in argv]
    proc = await spawn(*args, stdin=DEVNULL if stdin is None else PIPE, stdout=PIPE, stderr=PIPE)
    assert proc.stdout is not None
    assert proc.stderr is not None
    errors = asyncio.ensure_future(proc.stderr.read())
    handed = False
    try:
        async with asyncio.timeout(timeout):
            _, said = await asyncio.gather(_feed(proc.stdin, stdin), proc.stdout.read(LIMIT))
            if said:
                _reap_later(proc, args[0], errors, timeout)
                handed = True
                await asyncio.sleep(0)  # the reaper is under way: a loop that ends waits for it
                return None
            await proc.wait()
            return Completed(args, proc.returncode, "", _text(await errors))
    except TimeoutError:
        return Completed(args, None, "", f"no answer within {timeout:g} s")
    finally:
        if not handed and proc.returncode is None:
            errors.cancel()
            proc.kill()
            await proc.wait()


def _reap_later(
    proc: asyncio.subprocess.Process, name: str, errors: asyncio.Future[bytes], seconds: float
) -> None:
    """Read the rest of a child's output and wait for its exit, beside the caller."""

    async def reap() -> None:
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(seconds):
                await proc.stdout.read()
                code = await proc.wait()
        except TimeoutError:
            proc.kill()
            code = await proc.wait()
        except asyncio.CancelledError:  # the loop is ending: the child's exit is near, wait for it
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_exited(proc), seconds)
            raise
        if code != 0:
            said = _text(await errors).strip()
            log.warning("%s (pid %s) exited %s after its output: %s", name, proc.pid, code, said)

    task = asyncio.create_task(reap(), name=f"reap {proc.pid}")
    _reaping.add(task)
    task.add_done_callback(_reaping.discard)


async def _exited(proc: asyncio.subprocess.Process) -> None:
    """A child's stdout drained and its status reaped (killed if it does not end by itself);
    its stderr's reader is a task the ending loop cancels too."""
    assert proc.stdout is not None
    try:
        await asyncio.gather(proc.stdout.read(), proc.wait())
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


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

    async def read(reader: asyncio.StreamReader | None) -> bytes:
        return b"" if reader is None else await reader.read()

    feeding = _feed(proc.stdin, data)
    _, out, err = await asyncio.gather(feeding, read(proc.stdout), read(proc.stderr))
    await proc.wait()
    return out, err


async def _feed(writer: asyncio.StreamWriter | None, data: bytes | None) -> None:
    """Write `data` to a child's stdin and close it (one that stopped reading is no error)."""
    if writer is None:
        return
    try:
        if data and not writer.is_closing():
            writer.write(data)
            await writer.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        writer.close()


def _text(data: bytes | None) -> str:
    return (data or b"").decode(errors="replace")
