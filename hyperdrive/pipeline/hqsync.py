"""Reacting to headquarters: read it, plan, replace admiral and captain keys, queue deploys and
retirements.

HQ is hosted here (`git/headquarters.git`, a push is the change) or remote (fetched into
`$DATA/headquarters` on a webhook or `hd headquarters sync`). Nothing polls. An app whose
orders are rejected keeps its last good orders and its ship; the rest of the plan proceeds.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import pwd
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hyperdrive import authorized_keys
from hyperdrive.config import Config
from hyperdrive.errors import ConfigError, HyperdriveError
from hyperdrive.files import write_atomically
from hyperdrive.headquarters import (
    KEYS_DIR,
    Files,
    Headquarters,
    Plan,
    check,
    describe,
    headquarters_from_files,
    plan,
    read_files_from_git,
    read_includes,
)
from hyperdrive.keyring import BootstrapKeys, KeyRing, parse_keys
from hyperdrive.names import HEADQUARTERS, is_app_name
from hyperdrive.pipeline import events as ev
from hyperdrive.pipeline.bus import FAILED, FINISHED, Context
from hyperdrive.pipeline.commands import SyncHeadquarters
from hyperdrive.pipeline.fleet import Fleet
from hyperdrive.repos import git_ssh_env, run_git
from hyperdrive.spool import Spool
from hyperdrive.triggers import Trigger
from hyperdrive.watch import FolderWatch

log = logging.getLogger(__name__)
FETCH_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Source:
    """Where HQ comes from: the hosted repo, or a remote URL and branch."""

    url: str
    branch: str | None

    @classmethod
    def of(cls, config: Config) -> Source:
        url, _, branch = config.headquarters.partition("#")
        return cls(url, branch or None)

    @property
    def hosted(self) -> bool:
        return not self.url


Append = Callable[[Mapping[str, Any]], object]  # EventLog.append


class HeadquartersSync:
    """The SyncHeadquarters handler and the start-up load of the last good HQ."""

    def __init__(
        self,
        config: Config,
        fleet: Fleet,
        keyring: KeyRing,
        spool: Spool,
        has_commits: Callable[[str], Awaitable[bool]],
        *,
        running: Callable[[], Iterable[str]] = tuple,
    ) -> None:
        self.config = config
        self.fleet = fleet
        self.keyring = keyring
        self.spool = spool
        self.has_commits = has_commits
        self.running = running  # the apps that have a live ship
        self.record = config.headquarters_record
        self.source = Source.of(config)

    async def watch_includes(self, stop: asyncio.Event) -> None:
        """A change to `$DATA/includes/*.env` re-reads HQ: the apps whose env changed redeploy."""
        folder = self.config.includes_dir
        folder.mkdir(parents=True, exist_ok=True)
        async with FolderWatch(folder, lambda name: name.endswith(".env")) as watch:
            async for _ in watch.changes(stop, settle=0.2):
                await self.spool.put(Trigger.hq_sync("includes changed"))

    async def watch_admiral_keys(self, append: Append, stop: asyncio.Event) -> None:
        """HYPERDRIVE_ADMIRAL_KEYS applies live: a key added there (by `>>` or an editor's
        write-and-rename) logs in without a restart. The file and its folder may not exist yet."""
        path = self.config.admiral_keys
        async with FolderWatch(path.parent, lambda name: name == path.name) as watch:
            report_admirals(self.keyring.reload_bootstrap(path), append)  # a change before
            async for _ in watch.changes(stop, settle=0.05):
                report_admirals(self.keyring.reload_bootstrap(path), append)

    def set_source(self, url: str) -> None:
        """`hd headquarters set URL`: from now on HQ comes from there ('' = hosted here)."""
        url_part, _, branch = url.partition("#")
        self.source = Source(url_part, branch or None)

    @property
    def hosted_repo(self) -> Path:
        return self.config.git_dir / f"{HEADQUARTERS}.git"

    @property
    def checkout(self) -> Path:
        return self.config.headquarters_dir

    # -- start-up --
    async def load(self) -> None:
        """Put the includes and the last good HQ (by its recorded sha) in force before anything
        deploys; the includes apply to pushed apps whether or not HQ has a commit. The keys
        materialised under $VAR are in force first, even if that HQ cannot be read."""
        self.fleet.includes = self._includes()
        self._load_materialised()
        try:
            record = json.loads(self.record.read_text())
            sha = record["sha"]
            hq = headquarters_from_files(await self._files_at(sha, record), self.config.hull)
        except (OSError, ValueError, KeyError, TypeError, HyperdriveError) as err:
            log.info("no headquarters in force yet (%s)", err)
            return
        self.fleet.hq, self.fleet.hq_sha = hq, sha
        self._admirals(hq)

    async def _files_at(self, sha: str, record: Mapping[str, Any]) -> Files:
        """HQ's files at the recorded sha: the copy the sync recorded beside it (a start then
        reads no git, so an idle daemon needs no dulwich), else read from the source's repo."""
        kept = record.get("files")
        if isinstance(kept, dict) and record.get("source") == self._source_key():
            return {
                path: None if b64 is None else base64.b64decode(b64) for path, b64 in kept.items()
            }
        repo = self.hosted_repo if self.source.hosted else self.checkout / ".git"
        return await asyncio.to_thread(read_files_from_git, repo, sha)

    def _source_key(self) -> list[str | None]:
        return [self.source.url, self.source.branch]

    def _record(self, sha: str, files: Files) -> None:
        """HQ in force: its sha, where it came from and the files it was read from."""
        kept = {
            path: None if data is None else base64.b64encode(data).decode()
            for path, data in files.items()
        }
        record = {"sha": sha, "at": time.time(), "source": self._source_key(), "files": kept}
        write_atomically(self.record, json.dumps(record))

    def _includes(self) -> dict[str, str]:
        try:
            return read_includes(self.config.includes_dir)
        except ConfigError as err:
            log.warning("includes ignored: %s", err)
            return dict(self.fleet.includes)

    # -- the handler --
    async def sync(self, cmd: SyncHeadquarters, ctx: Context) -> str:
        try:
            repo, sha = await self._fetch(self.source)
        except HyperdriveError as err:
            ctx.emit(
                ev.HeadquartersSyncFailed(
                    deploy=cmd.deploy, message=f"{err}; the last good headquarters stays in force"
                )
            )
            return FAILED
        if sha is None:
            includes_old, self.fleet.includes = dict(self.fleet.includes), self._includes()
            lines = await self._redeploy_unordered(cmd, ctx, includes_old)
            summary = "; ".join(["headquarters is empty", *lines])
            ctx.emit(ev.HeadquartersSynced(deploy=cmd.deploy, message=summary))
            return FINISHED
        try:
            files = await asyncio.to_thread(read_files_from_git, repo, sha)
            new = headquarters_from_files(files, self.config.hull)
        except (HyperdriveError, ValueError) as err:
            ctx.emit(ev.HeadquartersSyncFailed(deploy=cmd.deploy, sha=sha, message=str(err)))
            return FAILED
        await self._apply(cmd, ctx, new, sha, files)
        return FINISHED

    async def _fetch(self, source: Source) -> tuple[Path, str | None]:
        """The repo to read and the commit to read in it.

        Hosted: the tip of the branch HEAD names (the first branch pushed), never the pushed
        sha a trigger names — only that branch passes the pre-receive check, so a push to
        another HQ branch must not become the HQ in force (and two quick pushes both read the
        newest).
        """
        if source.hosted:
            repo = self.hosted_repo
            return repo, await _resolve(repo, "HEAD")
        return await self._fetch_remote(source)

    async def _fetch_remote(self, source: Source) -> tuple[Path, str | None]:
        clone = self.checkout
        if not (clone / ".git").exists():
            clone.mkdir(parents=True, exist_ok=True)
            await run_git(["git", "init", "-q", str(clone)], 30)
        ref = f"refs/heads/{source.branch}" if source.branch else "HEAD"
        await run_git(
            [
                "git",
                "-C",
                str(clone),
                "fetch",
                "--quiet",
                "--",
                source.url,
                f"+{ref}:refs/remotes/hq/current",
            ],
            FETCH_TIMEOUT_S,
            self._git_env(),
        )
        sha = await _resolve(clone / ".git", "refs/remotes/hq/current")
        return clone / ".git", sha

    def _git_env(self) -> dict[str, str]:
        key = self.config.private_keys_dir / HEADQUARTERS
        return git_ssh_env(self.config.data, self.config.known_hosts_file, key)

    async def _apply(
        self, cmd: SyncHeadquarters, ctx: Context, new: Headquarters, sha: str, files: Files
    ) -> None:
        old, includes_old = self.fleet.hq, dict(self.fleet.includes)
        includes = self._includes()
        the_plan = plan(old, new, includes_old, includes)
        kept = self._keep_last_good(old, new)
        self.fleet.hq, self.fleet.hq_sha, self.fleet.includes = kept, sha, includes
        self._report(cmd, ctx, new, the_plan, sha)
        self._admirals(new, ctx, cmd.deploy)
        await self._queue(the_plan, sha)
        unordered = await self._redeploy_unordered(cmd, ctx, includes_old, the_plan.removed)
        # Recorded only once the triggers are durable: a crash before this line re-runs the
        # sync at the next start, which queues the same (deduplicated) trigger ids again.
        self._record(sha, files)
        await self._materialise(sha)
        # The outcome comes last: whoever follows the sync (a push, `hd headquarters sync`)
        # has seen every app's event, and the new keys are live, when it is told.
        summary = f"headquarters {sha[:7]}: " + "; ".join([*the_plan.lines(), *unordered])
        ctx.emit(ev.HeadquartersSynced(deploy=cmd.deploy, sha=sha, message=summary))

    def _keep_last_good(self, old: Headquarters | None, new: Headquarters) -> Headquarters:
        """Rejected apps keep the orders they had, so their ship is left alone."""
        if old is None:
            return new
        apps = dict(new.apps)
        for app in new.rejected:
            if app in old.apps:
                apps[app] = old.apps[app]
        return replace(new, apps=apps)

    def _report(
        self, cmd: SyncHeadquarters, ctx: Context, new: Headquarters, the_plan: Plan, sha: str
    ) -> None:
        """One event per app the plan touches, and one per rejected orders or key file."""
        for app in the_plan.added:
            ctx.emit(ev.AppOrdered(app=app, deploy=cmd.deploy, sha=sha, message=f"{app} ordered"))
        for app, why in the_plan.changed.items():
            ctx.emit(
                ev.OrdersChanged(
                    app=app, deploy=cmd.deploy, sha=sha, message=f"{app}: orders changed ({why})"
                )
            )
        for app, err in the_plan.rejected.items():
            ctx.emit(
                ev.OrdersRejected(
                    app=app if is_app_name(app) else None,
                    deploy=cmd.deploy,
                    file=err.path,
                    line=err.line,
                    message=describe(err),
                )
            )
        said = {describe(err) for err in the_plan.rejected.values()}
        for problem in [*new.key_errors, *self._collisions(new, said)]:
            ctx.emit(ev.OrdersRejected(deploy=cmd.deploy, message=problem))

    def _collisions(self, hq: Headquarters, said: set[str]) -> list[str]:
        """What a push check would refuse beyond bad files: ports and servernames claimed twice.

        A remote HQ has no push check: these become events (nginx refuses the clash itself,
        and the app keeps its ship).
        """
        config = self.config
        reserved = {
            config.http_port: "Hyperdrive's HTTP port",
            config.ssh_listen.port: "Hyperdrive's SSH port",
            config.api_listen.port: "Hyperdrive's API port",
            config.https_port: "Hyperdrive's HTTPS port",
        }
        problems = check(
            hq, bootstrap_keys_present=True, reserved_ports=reserved, domain=config.domain
        )
        return [p for p in problems if p not in said and p not in hq.key_errors]

    def _load_materialised(self) -> None:
        """The admirals and captains last in force (`$VAR/public_keys`, `$VAR/captains`)."""
        admirals = _read_keys(self.config.public_keys_dir)
        if admirals:
            self.keyring.replace(admirals)
        folder = self.config.captain_keys_dir
        apps = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
        self.keyring.replace_captains({app.name: _read_keys(app) for app in apps})

    def _captains(self, hq: Headquarters) -> tuple[str, ...]:
        """Put HQ's captains in force and materialise `$VAR/captains/<app>/<name>.pub`."""
        crews = hq.captain_lines()
        self.keyring.replace_captains(crews)
        root = self.config.captain_keys_dir
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.iterdir():
            if stale.name not in crews:
                _rm_tree_of_keys(stale)
        for app, crew in crews.items():
            _write_keys(root / app, crew)
        return tuple(f"{app}/{name}" for app in sorted(crews) for name in sorted(crews[app]))

    def _admirals(self, hq: Headquarters, ctx: Context | None = None, deploy: str = "") -> None:
        """Replace the live key sets and materialise `$VAR/public_keys` and `$VAR/captains`."""
        captains = self._captains(hq)
        keys = {name: [k.line for k in ks] for name, ks in hq.admirals.items()}
        if not keys and not self._bootstrap_keys():
            self._keep_admirals(ctx, deploy)
            return
        self.keyring.replace(keys)
        _write_keys(self.config.public_keys_dir, keys)
        self._admiral_user(keys)
        if ctx is not None:
            names = ", ".join(sorted(keys)) or "none (bootstrap keys only)"
            crew = f"; captains: {', '.join(captains)}" if captains else ""
            ctx.emit(
                ev.AdmiralsChanged(
                    admirals=tuple(sorted(keys)),
                    captains=captains,
                    message=f"admirals in force: {names}{crew}",
                )
            )

    def _bootstrap_keys(self) -> bool:
        """Whether HYPERDRIVE_ADMIRAL_KEYS holds a key now (it is read at each sync)."""
        try:
            text = self.config.admiral_keys.read_text(errors="replace")
        except OSError:
            return False
        keys, _ = parse_keys(text.splitlines(), str(self.config.admiral_keys))
        return bool(keys)

    def _keep_admirals(self, ctx: Context | None, deploy: str) -> None:
        """Lockout protection: an HQ with no key and no bootstrap key (a remote HQ; such a
        push is refused) leaves the admirals in `$VAR/public_keys` in force."""
        kept = _read_keys(self.config.public_keys_dir)
        self.keyring.replace(kept)
        if ctx is not None:
            names = ", ".join(sorted(kept)) or "none"
            message = (
                f"{KEYS_DIR}/: no valid admiral key and no bootstrap key; the admirals in "
                f"force ({names}) stay so nobody is locked out"
            )
            ctx.emit(ev.OrdersRejected(deploy=deploy, message=message))

    def _admiral_user(self, keys: dict[str, list[str]]) -> None:
        """HYPERDRIVE_ADMIRAL_USER: the seed's admiral SSH access to the server itself, as a
        managed block in that user's authorized_keys (the user's own keys stay)."""
        user = self.config.admiral_user
        if not user:
            return
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            log.warning("HYPERDRIVE_ADMIRAL_USER %s does not exist", user)
            return
        ssh = Path(entry.pw_dir) / ".ssh"
        try:
            authorized_keys.install(ssh, keys, entry.pw_uid, entry.pw_gid)
        except (OSError, HyperdriveError) as err:
            log.warning("HYPERDRIVE_ADMIRAL_USER %s: %s/authorized_keys kept: %s", user, ssh, err)

    async def _queue(self, the_plan: Plan, sha: str) -> None:
        """Durable deploy and retire triggers: a crash after the sync loses none of them."""
        tag = sha[:7]
        for app in [*the_plan.added, *the_plan.changed]:
            orders = self.fleet.orders(app)
            if orders.hosted_here and not await self.has_commits(app):
                continue
            tid = f"hq-{tag}-{app}-{self._digest(app)}"
            await self.spool.put(Trigger.deploy(app, source="hq", tid=tid))
        for app in the_plan.removed:
            tid = f"hq-{tag}-{app}-retire"
            await self.spool.put(Trigger.retire(app, "removed from headquarters", tid=tid))

    async def _redeploy_unordered(
        self,
        cmd: SyncHeadquarters,
        ctx: Context,
        includes_old: dict[str, str],
        retiring: tuple[str, ...] = (),
    ) -> list[str]:
        """Apps pushed here that HQ does not order get the includes too: each with a ship whose
        env they changed redeploys. The trigger id is the sync's own, so a replay queues one."""
        apps = {
            a: self.fleet.orders(a)
            for a in self.running()
            if self._unordered(a) and a not in retiring
        }
        pushed = Headquarters(apps=apps)
        changed = plan(pushed, pushed, includes_old, self.fleet.includes).changed
        tag = hashlib.sha256(cmd.deploy.encode()).hexdigest()[:12]
        for app, why in changed.items():
            message = f"{app}: env changed ({why})"
            ctx.emit(ev.OrdersChanged(app=app, deploy=cmd.deploy, message=message))
            # source "hq": the orders in force changed, so the same commit is built again
            await self.spool.put(Trigger.deploy(app, source="hq", tid=f"env-{tag}-{app}"))
        return [f"{app}: redeploy ({why})" for app, why in changed.items()]

    def _unordered(self, app: str) -> bool:
        return not self.fleet.ordered(app) and self.fleet.rejected(app) is None

    def _digest(self, app: str) -> str:
        """Short hash of what the ship will get (orders + merged env).

        Part of the deploy trigger's id: the same sync run twice (a crash, a replay) queues
        one deploy, while an includes change at the same HQ commit queues a new one.
        """
        orders = self.fleet.orders(app)
        seen = (sorted(self.fleet.env(app).items()), replace(orders, env={}, path=""))
        return hashlib.sha256(repr(seen).encode()).hexdigest()[:8]

    async def _materialise(self, sha: str) -> None:
        """Keep `$DATA/headquarters` a readable checkout of HQ at `sha` (the seed's path)."""
        target = self.checkout
        try:
            if self.source.hosted:
                if not (target / ".git").exists():
                    await run_git(["git", "clone", "-q", str(self.hosted_repo), str(target)], 60)
                await run_git(["git", "-C", str(target), "fetch", "-q", "origin"], 60)
            await run_git(["git", "-C", str(target), "checkout", "-q", "-f", "--detach", sha], 60)
        except HyperdriveError as err:
            log.warning("could not update %s: %s", target, err)


def _read_keys(folder: Path) -> dict[str, list[str]]:
    """name → key lines of the `*.pub` files Hyperdrive materialised in `folder`."""
    return {p.stem: p.read_text().splitlines() for p in sorted(folder.glob("*.pub"))}


def _write_keys(folder: Path, keys: Mapping[str, list[str]]) -> None:
    """Make `folder` hold exactly one `<name>.pub` per entry of `keys`."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.pub"):
        if stale.stem not in keys:
            stale.unlink()
    for name, lines in keys.items():
        write_atomically(folder / f"{name}.pub", "\n".join(lines) + "\n")


def _rm_tree_of_keys(folder: Path) -> None:
    """Remove an app's materialised captain keys (only `.pub` files: nothing else is ours)."""
    for key in folder.glob("*.pub"):
        key.unlink()
    with contextlib.suppress(OSError):
        folder.rmdir()


async def _resolve(repo: Path, ref: str) -> str | None:
    try:
        out = await run_git(["git", f"--git-dir={repo}", "rev-parse", "--verify", "-q", ref], 10)
    except HyperdriveError:
        return None
    return out.strip() or None


def report_admirals(loaded: BootstrapKeys, append: Append) -> None:
    """Events for one read of the bootstrap keys: each refused line, then the set if it moved."""
    for problem in loaded.problems:
        append(ev.AdmiralKeysRejected(file=loaded.path, message=problem).record())
    if not loaded.changed:
        return
    count = len(loaded.fingerprints)
    shown = ", ".join(loaded.fingerprints) or "nobody can log in with a bootstrap key"
    event = ev.AdmiralsChanged(
        file=loaded.path,
        keys=count,
        fingerprints=loaded.fingerprints,
        message=f"{loaded.path}: {count} bootstrap admiral key(s) in force: {shown}",
    )
    append(event.record())
