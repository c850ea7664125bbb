"""What `hd status` (and `ssh … status`) are told: the squadron itself and each app."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

from hyperdrive import __version__
from hyperdrive.config import Config
from hyperdrive.gitremote import shown_url
from hyperdrive.pipeline.fleet import Fleet
from hyperdrive.pipeline.golive import app_url
from hyperdrive.pipeline.hulls import Hulls
from hyperdrive.pipeline.model import Records
from hyperdrive.render import when


def squadron_status(
    *,
    config: Config,
    records: Records,
    fleet: Fleet,
    hulls: Hulls,
    headquarters: str,
    counts: dict[str, int],
    certificates: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The squadron, its hulls and apps; `counts` holds admirals, pending and inflight;
    `certificates` each HTTPS name's certificate and expiry (https.py)."""
    return {
        "version": __version__,
        "pid": os.getpid(),
        "event_loop": running_loop(),
        "name": config.name,
        "data": str(config.data),
        "ssh": str(config.ssh_listen),
        "api": str(config.api_listen),
        "http_port": config.http_port,
        "https_port": config.https_port,
        "certificates": certificates or [],
        "headquarters": shown_url(headquarters) if headquarters else "hosted here",
        "headquarters_sha": fleet.hq_sha,
        **counts,
        "hulls": hulls.status(),
        "apps": app_rows(config, records, fleet),
    }


def running_loop() -> str:
    """`uvloop` or `asyncio`: the loop this daemon really runs on (HYPERDRIVE_EVENT_LOOP)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return ""
    return type(loop).__module__.partition(".")[0]


def app_rows(config: Config, records: Records, fleet: Fleet) -> list[dict[str, Any]]:
    """One row per app a record or HQ names: live ship, since, URL, last deploy, orders."""
    names = sorted({a.name for a in records.all()} | set(fleet.names()))
    host = socket.gethostname()  # once, not a uname per app
    rows = []
    for name in names:
        app = records.get(name)
        live, last = app.live_ship, app.last_deploy
        result = f"{last.get('result', '')} {last.get('ms', '')} ms".strip() if last else ""
        rows.append(
            {
                "app": name,
                "ship": live.name if live else None,
                "sha": live.sha[:7] if live else None,
                "since": None if app.since is None else when(app.since),
                "url": app_url(config, name, host) if app.routed else None,
                "last_deploy": result or None,
                "orders": fleet.summary(name)["orders"],
            }
        )
    return rows
