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
from hyperdrive.pipeline import events as ev
from hyperdrive.pipeline.bus import CommandHandler, EventHandler, MessageBus
from hyperdrive.pipeline.commands import Command
from hyperdrive.pipeline.inbox import Inbox
from hyperdrive.spool import FileSpool

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
    starters: list[Hook] = field(default_factory=list)
    stoppers: list[Hook] = field(default_factory=list)


def daemon_status(config: Config, spool: FileSpool, bus: MessageBus) -> dict[str, Any]:
    """What `hd status` shows about the squadron itself."""
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
        "apps": [],
    }


def command_handlers(config: Config) -> dict[type[Command], CommandHandler]:
    """The command table: each command type to exactly one handler."""
    return {}


def event_handlers(config: Config) -> dict[type[ev.Event], list[EventHandler]]:
    """The event table: facts to the listeners that react to them."""
    return {}


def build(config: Config) -> Daemon:
    eventlog = EventLog(config.events_file, max_bytes=config.eventlog_max_bytes)

    def rejected(name: str, why: str) -> None:
        event = ev.TriggerRejected(file=name, message=f"spool/rejected/{name}: {why}")
        eventlog.append(event.record())

    spool = FileSpool(config.spool_dir, on_rejected=rejected)
    bus = MessageBus(
        command_handlers(config), event_handlers(config), eventlog, parallel=config.parallel_deploys
    )
    inbox = Inbox(spool, bus)

    def metrics() -> Mapping[str, float]:
        return {"deploys_inflight": bus.inflight, "triggers_handed_over": inbox.handed_over}

    api = Api(
        eventlog,
        spool,
        lambda: daemon_status(config, spool, bus),
        TokenStore(config.var / "tokens.json"),
        metrics,
    )
    return Daemon(config, eventlog, spool, bus, inbox, api)
