"""The app repos the pipeline reads: hosted here (`git/<app>.git`) or mirrored from a remote.

dulwich reads refs; real git moves objects (`git archive`, `git fetch`), as measured faster.
"""

from __future__ import annotations

import asyncio
import os
import shlex
from pathlib import Path

from hyperdrive.errors import DeployError
from hyperdrive.gitremote import shown_url
from hyperdrive.heads import head_branch
from hyperdrive.names import check_sha, sanitize_app_name
from hyperdrive.procs import check_output

FETCH_TIMEOUT_S = 300.0
ARCHIVE_TIMEOUT_S = 300.0
ALLOWED_PROTOCOLS = "https:http:ssh:git:file"


async def run_git(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> str:  # noqa: ASYNC109
    """Run git; return stdout, or raise CommandFailed carrying git's own words."""
    return await check_output(argv, timeout=timeout, env=env)


class GitRepos:
    """Hosted repos under `git_root`, mirrors under `git_root/mirrors`."""

    def __init__(self, git_root: Path, private_keys: Path, known_hosts: Path) -> None:
        self.git_root = git_root
        self.private_keys = private_keys
        self.known_hosts = known_hosts

    def hosted(self, app: str) -> Path:
        return self.git_root / f"{sanitize_app_name(app)}.git"

    def mirror(self, app: str) -> Path:
        return self.git_root / "mirrors" / f"{sanitize_app_name(app)}.git"

    def repo_for(self, app: str, remote: bool) -> Path:
        return self.mirror(app) if remote else self.hosted(app)

    async def resolve(self, app: str, ref: str, remote: bool = False) -> str | None:
        """The commit `ref` points at (a branch name or full ref), or None."""
        path = self.repo_for(app, remote)
        return await asyncio.to_thread(resolve_ref, path, ref)

    async def default_branch(self, app: str, remote: bool = False) -> str:
        """The branch HEAD names in the repo: for a repo made here, the first branch pushed."""
        path = self.repo_for(app, remote)
        return await asyncio.to_thread(head_branch, path)

    async def export(self, app: str, sha: str, target: Path, remote: bool = False) -> None:
        """Write the tree of `sha` into `target` (git archive | tar -x)."""
        repo = self.repo_for(app, remote)
        await asyncio.to_thread(target.mkdir, parents=True, exist_ok=True)
        read, write = os.pipe()
        git = await asyncio.create_subprocess_exec(
            "git",
            f"--git-dir={repo}",
            "archive",
            "--format=tar",
            check_sha(sha),
            stdout=write,
            stderr=asyncio.subprocess.PIPE,
        )
        tar = await asyncio.create_subprocess_exec(
            "tar",
            "-x",
            "--no-same-owner",
            "-C",
            str(target),
            stdin=read,
            stderr=asyncio.subprocess.PIPE,
        )
        os.close(read)
        os.close(write)
        try:
            (_, git_err), (_, tar_err) = await asyncio.wait_for(
                asyncio.gather(git.communicate(), tar.communicate()), ARCHIVE_TIMEOUT_S
            )
        except TimeoutError:
            for proc in (git, tar):
                proc.kill()
            raise DeployError(
                "fetch", f"git archive {sha[:7]} took over {ARCHIVE_TIMEOUT_S} s"
            ) from None
        if git.returncode or tar.returncode:
            words = (git_err or tar_err).decode(errors="replace").strip()
            raise DeployError("fetch", f"could not export {sha[:7]} of {app}: {words}")

    async def fetch(self, app: str, url: str, ref: str) -> str:
        """Mirror `url` into `mirrors/<app>.git` and return the sha `ref` now points at."""
        mirror = self.mirror(app)
        env = self._fetch_env(app)
        if not (mirror / "HEAD").exists():
            mirror.parent.mkdir(parents=True, exist_ok=True)
            await run_git(["git", "init", "--bare", "-q", str(mirror)], 30, env)
        spec = f"+{ref}:{ref}" if ref.startswith("refs/") else f"+refs/heads/{ref}:refs/heads/{ref}"
        argv = ["git", f"--git-dir={mirror}", "fetch", "--quiet", "--no-tags", "--", url, spec]
        await run_git(argv, FETCH_TIMEOUT_S, env)
        sha = await self.resolve(app, ref, remote=True)
        if sha is None:
            raise DeployError("fetch", f"{shown_url(url)} has no {ref}")
        return sha

    async def remote_default_branch(self, app: str, url: str) -> str:
        """Ask the remote which branch its HEAD names (`git ls-remote --symref`)."""
        out = await run_git(
            ["git", "ls-remote", "--symref", "--", url, "HEAD"], 60, self._fetch_env(app)
        )
        for line in out.splitlines():
            if line.startswith("ref: refs/heads/") and line.endswith("\tHEAD"):
                return line[len("ref: refs/heads/") : -len("\tHEAD")]
        raise DeployError("fetch", f"{shown_url(url)} does not say which branch is its default")

    def _fetch_env(self, app: str) -> dict[str, str]:
        return git_ssh_env(self.git_root, self.known_hosts, self.private_keys / app)


def git_ssh_env(home: Path, known_hosts: Path, identity: Path) -> dict[str, str]:
    """The env git talks to remotes with (an app's repo, a remote HQ): never a prompt, only
    ALLOWED_PROTOCOLS, ssh in batch mode trusting a host at first sight and remembering it in
    `known_hosts`, and the deploy key `identity` (alone) when it exists."""
    ssh = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new"]
    ssh += ["-o", f"UserKnownHostsFile={known_hosts}"]
    if identity.is_file():
        ssh += ["-i", str(identity), "-o", "IdentitiesOnly=yes"]
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ALLOW_PROTOCOL": ALLOWED_PROTOCOLS,
        "HOME": str(home),
        "GIT_SSH_COMMAND": shlex.join(ssh),  # git hands it to a shell
    }


def resolve_ref(path: Path, ref: str) -> str | None:
    """The sha `ref` (a branch name or `refs/…`) points at in the repo at `path`, or None."""
    # dulwich (~3 MB) at the first read of a repo: a daemon with nothing to do never loads it
    from dulwich.errors import NotGitRepository  # noqa: PLC0415
    from dulwich.refs import Ref  # noqa: PLC0415
    from dulwich.repo import Repo  # noqa: PLC0415

    try:
        repo = Repo(str(path))
    except NotGitRepository:
        return None
    with repo:
        name = ref if ref.startswith("refs/") else f"refs/heads/{ref}"
        try:
            return repo.refs[Ref(name.encode())].decode()
        except KeyError:
            return None
