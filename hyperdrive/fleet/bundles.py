"""Code for the fleet: a git bundle of what a push to a repo hosted here brought, and its
fetch into the same repo on another squadron. No NATS here (the link stores the bundles).

A bundle holds `old..new` of the pushed ref and is stored with `old`; a squadron that lacks
`old` (it missed that push's bundle too) fetches the bundle of `old` first, and so on back,
so a squadron that was down catches up even when the squadron that took the pushes is gone.
A chain starts with a bundle of the whole history: for a new ref, and when the bundle of
`old` is gone from the store or its chain started so long ago that its start would expire
first (the link decides), so every chain in the store is whole.
"""

from __future__ import annotations

import logging
import secrets
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from hyperdrive.errors import FleetError
from hyperdrive.names import HEADQUARTERS, check_sha
from hyperdrive.procs import run
from hyperdrive.triggers import RefUpdate, Trigger, TriggerKind

log = logging.getLogger(__name__)

GIT_TIMEOUT_S = 120.0
MAX_BUNDLE_BYTES = 512 * 1024 * 1024  # a bigger push is not carried: those squadrons fail it
MAX_CHAIN = 100  # bundles fetched back in history for one push, at most
TEMP_REF = "refs/hyperdrive/bundle"  # git bundles refs, not bare commits: a ref for the while

Fetch = Callable[[str], Awaitable[tuple[bytes, str] | None]]
"""A bundle by key, with the `old` of its push; None when the store does not have it."""


def carries_code(trigger: Trigger) -> bool:
    """A push to a repo hosted here (an app's or HQ's): its commits travel as a bundle."""
    return trigger.kind in (TriggerKind.PUSH, TriggerKind.HQ)


def repo_name(trigger: Trigger) -> str:
    return trigger.app or HEADQUARTERS


def bundled_ref(bundle: bytes) -> str:
    """The one ref a bundle of ours holds (its header: `# v2 git bundle` (v3: and `@…`
    capabilities), `-<sha>` lines for what it needs, then `<sha> <ref>`)."""
    header = bundle.split(b"\n\n", 1)[0].decode(errors="replace").splitlines()
    if not header or header[0] not in ("# v2 git bundle", "# v3 git bundle"):
        raise FleetError("the fleet's bundle is not a git bundle")
    heads = [line.split() for line in header[1:] if line[:1] not in ("-", "@")]
    refs = [fields[1] for fields in heads if len(fields) == 2]
    if len(refs) != 1 or not refs[0].startswith(f"{TEMP_REF}/"):
        raise FleetError("the fleet's bundle does not hold one pushed commit")
    return refs[0]


def key(repo: str, sha: str) -> str:
    """The object's name in the store: `<app>/<sha>` (HQ's: `headquarters/<sha>`)."""
    return f"{repo}/{sha}"


class Bundles:
    """Makes bundles from and fetches them into the repos under `git_dir`."""

    def __init__(self, git_dir: Path, hooks_dir: Path) -> None:
        self.git_dir = git_dir
        self.hooks_dir = hooks_dir

    def repo(self, name: str) -> Path:
        return self.git_dir / f"{name}.git"

    async def make(self, trigger: Trigger, *, whole: bool = False) -> bytes:
        """The bundle of what the push brought (`old..new`), or with `whole` all of `new`."""
        update = _update(trigger)
        if update.deleted:
            raise FleetError(f"trigger {trigger.id} deleted {update.ref}: no commits to carry")
        repo = self.repo(repo_name(trigger))
        temp = f"{TEMP_REF}/{check_sha(update.new)}-{secrets.token_hex(4)}"  # one per push
        await _git(repo, "update-ref", temp, update.new)
        try:
            with tempfile.TemporaryDirectory(prefix="hd-bundle-") as tmp:
                out = Path(tmp) / "push.bundle"
                since = [] if whole or update.created else [f"^{update.old}"]
                await _git(repo, "bundle", "create", "--quiet", str(out), temp, *since)
                size = out.stat().st_size
                if size > MAX_BUNDLE_BYTES:
                    raise FleetError(f"the bundle is too big to carry ({size} bytes)")
                return out.read_bytes()
        finally:
            await _git(repo, "update-ref", "-d", temp)

    async def apply(self, trigger: Trigger, fetch: Fetch) -> None:
        """Put the pushed commits into this squadron's repo and move the ref as the push did;
        FleetError says what is missing."""
        update, name = _update(trigger), repo_name(trigger)
        repo = await self._ensure_repo(name)
        if update.deleted:
            if await _has(repo, update.ref):
                await _git(repo, "update-ref", "-d", update.ref)
            return
        if not await _has(repo, update.new):
            await self._fetch_chain(repo, name, update.new, fetch)
        await _git(repo, "update-ref", update.ref, update.new)
        from hyperdrive.heads import adopt_pushed_branch  # noqa: PLC0415 - may load dulwich

        adopt_pushed_branch(repo, [(update.ref, update.new)])

    async def _ensure_repo(self, name: str) -> Path:
        """The repo as the git server makes it at a first push (hooks, options)."""
        from hyperdrive.gitserver import create_repo  # noqa: PLC0415 - the server's own way

        repo = self.repo(name)
        if not (repo / "HEAD").is_file():
            await create_repo(repo, self.hooks_dir)
        return repo

    async def _fetch_chain(self, repo: Path, name: str, sha: str, fetch: Fetch) -> None:
        """The bundle of `sha`, after those of the commits it needs that the repo lacks."""
        chain: list[tuple[str, bytes]] = []
        commit: str | None = sha
        while commit is not None:
            if len(chain) >= MAX_CHAIN:
                raise FleetError(f"{name}: more than {MAX_CHAIN} pushes missed; push again")
            found = await fetch(key(name, commit))
            if found is None:
                raise FleetError(
                    f"the commits of {commit[:7]} are not in the fleet's bundle store "
                    "(older than its retention, or too big to carry): push again"
                )
            bundle, old = found
            chain.append((commit, bundle))
            needed = bool(old.strip("0")) and not await _has(repo, old)
            commit = old if needed else None
        for tip, bundle in reversed(chain):
            await self._fetch_one(repo, tip, bundle)

    async def _fetch_one(self, repo: Path, commit: str, bundle: bytes) -> None:
        with tempfile.NamedTemporaryFile(prefix=".hd-", suffix=".bundle", dir=repo) as file:
            file.write(bundle)
            file.flush()
            await _git(
                repo, "fetch", "--quiet", "--no-write-fetch-head", file.name, bundled_ref(bundle)
            )
        if not await _has(repo, commit):
            raise FleetError(f"the fleet's bundle of {commit[:7]} does not hold it")


def _update(trigger: Trigger) -> RefUpdate:
    update = trigger.update
    if update is None:
        raise FleetError(f"trigger {trigger.id} moved no ref")
    return update


async def _has(repo: Path, rev: str) -> bool:
    done = await run(
        ["git", f"--git-dir={repo}", "rev-parse", "--verify", "-q", f"{rev}^{{commit}}"],
        timeout=GIT_TIMEOUT_S,
    )
    return done.returncode == 0


async def _git(repo: Path, *args: str) -> None:
    done = await run(["git", f"--git-dir={repo}", *args], timeout=GIT_TIMEOUT_S)
    if done.returncode != 0:
        raise FleetError(f"git {args[0]} in {repo.name}: {done.output or 'failed'}")
