"""Helpers for driving the real `git` and `ssh` clients against a git server on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

CLIENT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def require(*programs: str) -> None:
    """Integration tests fail (never skip) when a real program is missing."""
    missing = [p for p in programs if shutil.which(p) is None]
    assert not missing, f"integration tests need these programs installed: {missing}"


async def run(
    *argv: str | Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
    timeout: float = CLIENT_TIMEOUT_S,
) -> Result:
    """Run a program without blocking the event loop the server lives on."""
    proc = await asyncio.create_subprocess_exec(
        *map(str, argv), cwd=cwd, env=env,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{argv} timed out after {timeout} s") from None
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


async def check(*argv: str | Path, **kwargs: object) -> Result:
    """Like run(), but a non-zero exit fails the test with the program's own output."""
    result = await run(*argv, **kwargs)  # type: ignore[arg-type]
    assert result.returncode == 0, f"{argv} exited {result.returncode}: {result.output}"
    return result


async def make_key(path: Path) -> Path:
    """A fresh ed25519 client key pair made by ssh-keygen; returns the private key's path."""
    await check("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", path)
    return path


def ssh_argv(key: Path, port: int, *extra: str) -> list[str]:
    """The OpenSSH client, isolated from the user's config, agent and known hosts."""
    return [
        "ssh", "-F", "/dev/null", "-i", str(key), "-p", str(port),
        "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10", *extra,
    ]  # fmt: skip


def git_env(key: Path, port: int, *extra: str) -> dict[str, str]:
    """Environment for git: our ssh command, a throwaway identity, no user or system config."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "GIT_SSH_COMMAND": shlex.join(ssh_argv(key, port, *extra)),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_AUTHOR_NAME": "Test",
        "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "Test",
        "GIT_COMMITTER_EMAIL": "test@example.invalid",
    }


async def work_tree(path: Path, env: dict[str, str], files: dict[str, bytes]) -> str:
    """A new repo at `path` on branch master with one commit of `files`; returns its sha."""
    await check("git", "init", "-q", "-b", "master", path, env=env)
    return await commit(path, env, files)


async def commit(path: Path, env: dict[str, str], files: dict[str, bytes]) -> str:
    for name, content in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(content)
    await check("git", "add", "-A", cwd=path, env=env)
    await check("git", "commit", "-q", "-m", f"change {len(files)} files", cwd=path, env=env)
    return (await check("git", "rev-parse", "HEAD", cwd=path, env=env)).stdout.strip()


def triggers(spool: Path) -> list[dict[str, object]]:
    """The trigger files the hook dropped into the spool's incoming folder."""
    incoming = spool / "incoming"
    if not incoming.is_dir():
        return []
    files = sorted(p for p in incoming.iterdir() if p.suffix == ".json")
    return [json.loads(p.read_text()) for p in files]


class FakeDaemon:
    """Answers `GET /events?deploy=…&follow=1` on a unix socket like the admin API does.

    It replays `script` for whichever deploy is asked for, holding the last (terminal) event
    until `finish` is set, and remembers who asked and whether they hung up.
    """

    def __init__(self, socket_path: Path, script: list[dict[str, object]]) -> None:
        self.socket_path = socket_path
        self.script = script
        self.asked: list[str] = []
        self.finish = asyncio.Event()
        self.hung_up = asyncio.Event()
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/events", self._events)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.UnixSite(self._runner, str(self.socket_path)).start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _events(self, request: web.Request) -> web.StreamResponse:
        deploy = request.query["deploy"]
        assert request.query.get("follow") == "1"
        self.asked.append(deploy)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        try:
            for index, event in enumerate(self.script):
                if index == len(self.script) - 1:
                    await asyncio.wait_for(self.finish.wait(), 30)
                await response.write(json.dumps({**event, "deploy": deploy}).encode() + b"\n")
            await response.write_eof()
        except ConnectionError:
            self.hung_up.set()
        return response
