"""The one place where real adapters are wired into the bus (unit tests wire fakes instead)."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hyperdrive import __version__
from hyperdrive.api import Api, TokenStore
from hyperdrive.config import Config
from hyperdrive.eventlog import EventLog
from hyperdrive.lxc_async import Lxc
from hyperdrive.network import IpAllocator, bridge_address
from hyperdrive.nginx_reload import Nginx, Routes
from hyperdrive.pipeline import events as ev
from hyperdrive.pipeline.bus import CommandHandler, EventHandler, MessageBus
from hyperdrive.pipeline.commands import Assemble, Command, Deploy, Launch, Retire, Rollback
from hyperdrive.pipeline.fleet import Fleet
from hyperdrive.pipeline.handlers import Parts, Pipeline, Recovery
from hyperdrive.pipeline.hulls import Hulls
from hyperdrive.pipeline.inbox import Inbox
from hyperdrive.pipeline.model import Records
from hyperdrive.pipeline.ports import SystemClock
from hyperdrive.repos import GitRepos
from hyperdrive.spool import FileSpool
from hyperdrive.traffic import StablePorts, Traffic

Hook = Callable[[], Awaitable[None]]


@dataclass
class Daemon:
    """Everything `hd serve` runs, built but not started."""

    config: Config
    eventlog: EventLog
    spool: FileSpool
    bus: MessageBus
    inbox: Inbox
    api: Api
    pipeline: Pipeline
    starters: list[Hook] = field(default_factory=list)
    stoppers: list[Hook] = field(default_factory=list)


def daemon_status(
    config: Config, spool: FileSpool, bus: MessageBus, pipeline: Pipeline
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
        "headquarters": config.headquarters or "hosted here",
        "pending": len(spool.pending()),
        "inflight": bus.inflight,
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
                "since": app.since,
                "url": pipeline.url(name) if app.routed else None,
                "last_deploy": result or None,
                "orders": parts.fleet.rejected(name) or parts.fleet.summary(name)["orders"],
            }
        )
    return rows


def command_handlers(pipeline: Pipeline) -> dict[type[Command], CommandHandler]:
    """The command table: each command type to exactly one handler."""
    return {
        Deploy: pipeline.deploy,
        Retire: pipeline.retire,
        Rollback: pipeline.rollback,
        Assemble: pipeline.assemble,
        Launch: pipeline.launch,
    }


def event_handlers() -> dict[type[ev.Event], list[EventHandler]]:
    """The event table: facts to the listeners that react to them."""
    return {}


def pipeline_parts(config: Config) -> Parts:
    """The real adapters: LXC, nginx + nftables, git, the records on disk."""
    records = config.records_dir
    lxc = Lxc(config.containers_dir, config.data / "lxc" / "logs")
    bridge = f"{bridge_address(config.subnet)}/{config.subnet.prefixlen}"
    return Parts(
        config=config,
        runtime=lxc,
        routes=Routes(Nginx(config.nginx_dir), http_port=config.http_port, domain=config.domain),
        traffic=Traffic(config.name, bridge),
        ports=StablePorts(records / "ports.json"),
        ips=IpAllocator(records / "ips.json", config.subnet),
        repos=GitRepos(config.git_dir, config.var / "private_keys", config.var / "known_hosts"),
        records=Records(records / "apps"),
        fleet=Fleet(config.hull),
        hulls=Hulls(config.name, lxc, records / "hulls.json"),
        clock=SystemClock(),
        drain_s=config.drain_seconds,
    )


def build(config: Config) -> Daemon:
    eventlog = EventLog(config.events_file, max_bytes=config.eventlog_max_bytes)

    def rejected(name: str, why: str) -> None:
        event = ev.TriggerRejected(file=name, message=f"spool/rejected/{name}: {why}")
        eventlog.append(event.record())

    spool = FileSpool(config.spool_dir, on_rejected=rejected)
    pipeline = Pipeline(pipeline_parts(config))
    bus = MessageBus(
        command_handlers(pipeline), event_handlers(), eventlog, parallel=config.parallel_deploys
    )
    inbox = Inbox(spool, bus)

    def metrics() -> Mapping[str, float]:
        return {"deploys_inflight": bus.inflight, "triggers_handed_over": inbox.handed_over}

    api = Api(
        eventlog,
        spool,
        lambda: daemon_status(config, spool, bus, pipeline),
        TokenStore(config.var / "tokens.json"),
        metrics,
    )
    daemon = Daemon(config, eventlog, spool, bus, inbox, api, pipeline)

    async def recover() -> None:
        pipeline.p.records.load()
        await Recovery(pipeline, bus.emit).run()

    daemon.starters.append(recover)
    return daemon
