"""The one place where real adapters are wired into the bus (unit tests wire fakes instead)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyperdrive import __version__, systemd
from hyperdrive.admiral import AdmiralCommands
from hyperdrive.api import Api, TokenStore
from hyperdrive.config import KEYS, Config
from hyperdrive.eventlog import JsonlEventLog
from hyperdrive.gitserver import GitServer, package_hooks
from hyperdrive.hooks.webhook import Resolution, StaticResolver, WebhookReceiver
from hyperdrive.keyring import BootstrapKeys, KeyRing
from hyperdrive.lxc_async import Lxc
from hyperdrive.names import HEADQUARTERS
from hyperdrive.network import IpAllocator, bridge_address
from hyperdrive.nginx_reload import Nginx, Routes
from hyperdrive.pipeline import events as ev
from hyperdrive.pipeline.bus import CommandHandler, EventHandler, MessageBus
from hyperdrive.pipeline.commands import (
    Assemble,
    AssembleHulls,
    Command,
    Deploy,
    Launch,
    Retire,
    Rollback,
    SyncHeadquarters,
)
from hyperdrive.pipeline.fleet import Fleet
from hyperdrive.pipeline.handlers import Parts, Pipeline
from hyperdrive.pipeline.hqsync import HeadquartersSync
from hyperdrive.pipeline.hulls import Hulls
from hyperdrive.pipeline.inbox import Inbox
from hyperdrive.pipeline.model import Records
from hyperdrive.pipeline.ports import SystemClock
from hyperdrive.pipeline.recovery import Recovery
from hyperdrive.render import when
from hyperdrive.repos import GitRepos
from hyperdrive.spool import FileSpool
from hyperdrive.traffic import StablePorts, Traffic
from hyperdrive.triggers import Trigger, new_trigger_id
from hyperdrive.watch import FolderWatch

log = logging.getLogger(__name__)


def hooks_dir() -> Path:
    """git's hooks: package data (`hyperdrive/githooks`), so a wheel has them too."""
    return package_hooks()


Hook = Callable[[], Awaitable[None]]
Append = Callable[[Mapping[str, Any]], object]  # EventLog.append


@dataclass
class Daemon:
    """Everything `hd serve` runs, built but not started."""

    config: Config
    eventlog: JsonlEventLog
    spool: FileSpool
    bus: MessageBus
    inbox: Inbox
    api: Api
    pipeline: Pipeline
    headquarters: HeadquartersSync
    gitserver: GitServer
    starters: list[Hook] = field(default_factory=list)
    stoppers: list[Hook] = field(default_factory=list)


def daemon_status(
    config: Config, spool: FileSpool, bus: MessageBus, pipeline: Pipeline, hq: HeadquartersSync
) -> dict[str, Any]:
    """What `hd status` shows: the squadron itself and each app."""
    return {
        "version": __version__,
        "pid": os.getpid(),
        "name": config.name,
        "data": str(config.data),
        "ssh": str(config.ssh_listen),
        "api": str(config.api_listen),
        "http_port": config.http_port,
        "headquarters": hq.source.url or "hosted here",
        "headquarters_sha": pipeline.p.fleet.hq_sha,
        "admirals": hq.keyring.count(),
        "pending": len(spool.pending()),
        "inflight": bus.inflight,
        "hulls": pipeline.p.hulls.status(),
        "apps": app_rows(pipeline),
    }


def app_rows(pipeline: Pipeline) -> list[dict[str, Any]]:
    parts = pipeline.p
    names = sorted({a.name for a in parts.records.all()} | set(parts.fleet.names()))
    rows = []
    for name in names:
        app = parts.records.get(name)
        live, last = app.live_ship, app.last_deploy
        result = f"{last.get('result', '')} {last.get('ms', '')} ms".strip() if last else ""
        rows.append(
            {
                "app": name,
                "ship": live.name if live else None,
                "sha": live.sha[:7] if live else None,
                "since": _when(app.since),
                "url": pipeline.url(name) if app.routed else None,
                "last_deploy": result or None,
                "orders": parts.fleet.summary(name)["orders"],
            }
        )
    return rows


def _when(epoch: float | None) -> str | None:
    """A record's time as people read it: `2026-11-25 14:02 UTC`."""
    return None if epoch is None else when(epoch)


def command_handlers(
    pipeline: Pipeline, headquarters: HeadquartersSync
) -> dict[type[Command], CommandHandler]:
    """The command table: each command type to exactly one handler."""
    return {
        Deploy: pipeline.deploy,
        Retire: pipeline.retire,
        Rollback: pipeline.rollback,
        Assemble: pipeline.assemble,
        AssembleHulls: pipeline.assemble_hulls,
        Launch: pipeline.launch,
        SyncHeadquarters: headquarters.sync,
    }


def event_handlers() -> dict[type[ev.Event], list[EventHandler]]:
    """The event table: facts to the listeners that react to them."""
    return {}


def nginx_for(config: Config) -> Nginx:
    """Our nginx master; under systemd in its own scope, so it outlives the service's restart."""
    scope = f"{config.name}-nginx" if systemd.booted() else None
    return Nginx(config.nginx_dir, scope=scope)


def pipeline_parts(config: Config) -> Parts:
    """The real adapters: LXC, nginx + nftables, git, the records on disk."""
    lxc = Lxc(config.containers_dir, config.lxc_logs_dir)
    bridge = f"{bridge_address(config.subnet)}/{config.subnet.prefixlen}"
    return Parts(
        config=config,
        runtime=lxc,
        routes=Routes(nginx_for(config), http_port=config.http_port, domain=config.domain),
        traffic=Traffic(config.name, bridge),
        ports=StablePorts(config.ports_record),
        ips=IpAllocator(config.ips_record, config.subnet),
        repos=GitRepos(config.git_dir, config.private_keys_dir, config.known_hosts_file),
        records=Records(config.apps_records_dir),
        fleet=Fleet(config.hull),
        hulls=Hulls(
            config.name,
            lxc,
            config.hulls_record,
            logs=config.ships_dir,
            mirror=config.apt_mirror,
        ),
        clock=SystemClock(),
        drain_s=config.drain_seconds,
    )


class FleetResolver:
    """Which apps (or HQ) a pushed repository and ref concern, from the orders in force."""

    def __init__(self, fleet: Fleet, headquarters: HeadquartersSync) -> None:
        self.fleet = fleet
        self.headquarters = headquarters
        self._cached: tuple[object, str, StaticResolver] | None = None

    def resolve(self, urls: Collection[str], ref: str, default_branch: str | None) -> Resolution:
        return self._table().resolve(urls, ref, default_branch)

    def _table(self) -> StaticResolver:
        source = self.headquarters.source
        hq_url = f"{source.url}#{source.branch}" if source.branch else source.url
        cached = self._cached  # rebuilt only when the HQ in force (an identity) or its URL moves
        if cached is None or cached[0] is not self.fleet.hq or cached[1] != hq_url:
            apps = {
                name: (orders.autodeploy_url, orders.branch)
                for name in self.fleet.names()
                if (orders := self.fleet.orders(name)).autodeploy_url is not None
            }
            cached = (self.fleet.hq, hq_url, StaticResolver(apps, hq_url or None))
            self._cached = cached
        return cached[2]


def hook_env(config: Config) -> dict[str, str]:
    """What git's hooks need: where the spool and socket are, and the config (no secrets)."""
    env = {
        key: str(getattr(config, attr)) for key, attr in KEYS.items() if attr != "webhook_secret"
    }
    env.update(HYPERDRIVE_SPOOL=str(config.spool_dir), HYPERDRIVE_SOCKET=str(config.socket_path))
    if config.source is not None:
        env["HYPERDRIVE_CONFIG"] = str(config.source)
    return env


def keyring_for(config: Config) -> KeyRing:
    keyring = KeyRing()
    loaded = keyring.reload_bootstrap(config.admiral_keys)
    if not loaded.fingerprints:
        log.warning("no bootstrap admiral keys at %s", config.admiral_keys)
    return keyring


async def watch_includes(config: Config, spool: FileSpool, stop: asyncio.Event) -> None:
    """A change to `$DATA/includes/*.env` re-reads HQ: the apps whose env changed redeploy."""
    folder = config.includes_dir
    folder.mkdir(parents=True, exist_ok=True)
    async with FolderWatch(folder, lambda name: name.endswith(".env")) as watch:
        async for _ in watch.changes(stop, settle=0.2):
            trigger = Trigger(new_trigger_id("includes"), "hq-sync", None, {}, time.time())
            await spool.put(trigger)


async def watch_admirals(
    config: Config, keyring: KeyRing, append: Append, stop: asyncio.Event
) -> None:
    """HYPERDRIVE_ADMIRAL_KEYS applies live: a key added there (by `>>` or an editor's
    write-and-rename) logs in without a restart. The file and its folder may not exist yet."""
    path = config.admiral_keys
    async with FolderWatch(path.parent, lambda name: name == path.name) as watch:
        report_admirals(keyring.reload_bootstrap(path), append)  # a change before the watch
        async for _ in watch.changes(stop, settle=0.05):
            report_admirals(keyring.reload_bootstrap(path), append)


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


def build(config: Config) -> Daemon:
    eventlog = JsonlEventLog(config.events_file, max_bytes=config.eventlog_max_bytes)

    def rejected(name: str, why: str) -> None:
        event = ev.TriggerRejected(file=name, message=f"spool/rejected/{name}: {why}")
        eventlog.append(event.record())

    spool = FileSpool(config.spool_dir, on_rejected=rejected)
    parts = pipeline_parts(config)
    pipeline = Pipeline(parts)
    keyring = keyring_for(config)

    async def has_commits(app: str) -> bool:
        branch = parts.fleet.orders(app).branch or await parts.repos.default_branch(app)
        return await parts.repos.resolve(app, branch) is not None

    def running() -> list[str]:
        return [app.name for app in parts.records.all() if app.live_ship is not None]

    headquarters = HeadquartersSync(
        config, parts.fleet, keyring, spool, has_commits, running=running
    )
    bus = MessageBus(
        command_handlers(pipeline, headquarters),
        event_handlers(),
        eventlog,
        parallel=config.parallel_deploys,
    )
    inbox = Inbox(spool, bus)

    def metrics() -> Mapping[str, float]:
        return {"deploys_inflight": bus.inflight, "triggers_handed_over": inbox.handed_over}

    def status() -> dict[str, Any]:
        return daemon_status(config, spool, bus, pipeline, headquarters)

    webhooks = WebhookReceiver(
        config.webhook_secret, spool, FleetResolver(parts.fleet, headquarters), eventlog.append
    )
    api = Api(
        eventlog,
        spool,
        status,
        TokenStore(config.tokens_file),
        metrics,
        set_headquarters=headquarters.set_source,
        public_routes=[webhooks.add_routes],
    )
    admiral = AdmiralCommands(eventlog, spool, status, config.containers_dir)
    listen = config.ssh_listen
    gitserver = GitServer(
        listen.host,
        listen.port,
        config.host_key_file,
        config.git_dir,
        keyring,
        hook_env(config),
        admiral,
        hooks_dir(),
    )
    daemon = Daemon(config, eventlog, spool, bus, inbox, api, pipeline, headquarters, gitserver)
    _lifecycle(daemon, keyring)
    return daemon


def _lifecycle(daemon: Daemon, keyring: KeyRing) -> None:
    """What runs at start (in order) and at stop (in reverse)."""
    stop_watch = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    async def recover() -> None:
        daemon.pipeline.p.records.load()
        await daemon.headquarters.load()
        await Recovery(daemon.pipeline, daemon.bus.emit).run()

    async def serve_ssh() -> None:
        if daemon.headquarters.source.hosted:  # clone, edit, push works from the first start
            await daemon.gitserver.ensure_repo(HEADQUARTERS)
        await daemon.gitserver.start()
        includes = watch_includes(daemon.config, daemon.spool, stop_watch)
        admirals = watch_admirals(daemon.config, keyring, daemon.eventlog.append, stop_watch)
        tasks.append(asyncio.create_task(_logged(includes, "includes watch")))
        tasks.append(asyncio.create_task(_logged(admirals, "admiral keys watch")))

    async def stop_ssh() -> None:
        stop_watch.set()
        await daemon.gitserver.close()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def prepare_hull() -> None:
        """The default hull, when it has no version yet, starts building now (not awaited):
        the first push then waits for what is left of it, not for all of it."""
        await daemon.pipeline.p.hulls.prepare(daemon.config.hull, daemon.bus)

    async def stop_hulls() -> None:
        await daemon.pipeline.p.hulls.close()

    daemon.starters += [recover, prepare_hull, serve_ssh]
    daemon.stoppers += [stop_hulls, stop_ssh]


async def _logged(work: Awaitable[None], what: str) -> None:
    """A watch that cannot run (a folder it may not read) is said in the log, not lost."""
    try:
        await work
    except OSError as err:
        log.warning("%s stopped: %s; changes there now need a restart", what, err)
