"""Each app's recent deploys, stage by stage, kept in memory from the event stream.

Built once from the stored log when the dashboard starts (in the background), then fed by a
live subscription, so a page never scans the log: it reads this, and one deploy's own events
through the event log's deploy index.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hyperdrive.eventlog import EventLog, Filter, event_time

log = logging.getLogger(__name__)

PER_APP = 30  # deploys kept per app
MAX_DEPLOYS = 20_000  # deploy ids remembered in all (which app each one is)
OUTCOMES = {
    "DeployFinished": "finished",
    "DeployFailed": "failed",
    "DeploySuperseded": "superseded",
    "TriggerIgnored": "ignored",
}
# events that end a stage, and the stage they end: the timeline's bars
STAGES = {
    "ShipAssembled": "assemble",
    "ShipBuilt": "build",
    "BuildFailed": "build",
    "ReleaseFinished": "release",
    "ReleaseFailed": "release",
    "ShipStarted": "start",
    "ShipHealthy": "health",
    "HealthCheckFailed": "health",
    "TrafficSwapped": "swap",
    "ShipDrained": "drain",
}


@dataclass
class Stage:
    name: str
    ms: int
    failed: bool = False


@dataclass
class DeployRun:
    """What one deploy did: who or what started it, its commit, stages and outcome."""

    id: str
    app: str
    started: float
    source: str = ""
    admiral: str = ""
    sha: str = ""
    ship: str = ""
    stages: list[Stage] = field(default_factory=list)
    outcome: str = ""  # "" while in flight
    message: str = ""
    failed_stage: str = ""
    ms: int | None = None
    rolled_back: bool = False

    @property
    def trigger(self) -> str:
        """`push by alice`, `webhook:github`, `rollback by alice`…"""
        who = f" by {self.admiral}" if self.admiral else ""
        return f"{self.source or 'deploy'}{who}"

    @property
    def total_ms(self) -> int:
        return max(1, sum(s.ms for s in self.stages))

    def feed(self, event: Mapping[str, Any]) -> None:
        name = str(event.get("event", ""))
        self._facts(event, name)
        ms = event.get("ms")
        stage = str(event["stage"]) if name == "StageFinished" and event.get("stage") else None
        stage = stage or STAGES.get(name)
        if stage and isinstance(ms, int) and not isinstance(ms, bool):
            self.stages.append(Stage(stage, ms, failed=name.endswith("Failed")))
        if name in OUTCOMES:
            self.outcome = OUTCOMES[name]
            self.message = str(event.get("message") or "")
            self.failed_stage = str(event.get("stage") or "") if name == "DeployFailed" else ""
            self.ms = ms if isinstance(ms, int) else self.ms

    def _facts(self, event: Mapping[str, Any], name: str) -> None:
        if name == "DeployQueued" and event.get("source"):
            self.source = str(event["source"])
        if name == "PushReceived":
            self.source = self.source or "push"
            self.admiral = str(event.get("admiral") or self.admiral)
        if event.get("admiral") and not self.admiral:
            self.admiral = str(event["admiral"])
        if name == "RolledBack":
            self.rolled_back = True
        if event.get("sha") and event.get("app"):
            self.sha = self.sha if name == "ShipDrained" else str(event["sha"])
        if event.get("ship") and name not in ("ShipDrained", "ShipRetired", "ShipDestroyed"):
            self.ship = str(event["ship"])


class DeployHistory:
    """The newest PER_APP deploys of each app, newest first; fed one event at a time."""

    def __init__(self, per_app: int = PER_APP, max_deploys: int = MAX_DEPLOYS) -> None:
        self.per_app = per_app
        self.max_deploys = max_deploys
        self._apps: dict[str, OrderedDict[str, DeployRun]] = {}
        self._owner: OrderedDict[str, str] = OrderedDict()  # deploy id -> app
        self.loaded = False
        self._task: asyncio.Task[None] | None = None

    def feed(self, event: Mapping[str, Any]) -> None:
        deploy = event.get("deploy")
        if not isinstance(deploy, str) or not deploy:
            return
        app = event.get("app") or self._owner.get(deploy)
        if not isinstance(app, str) or not app:
            return
        runs = self._apps.setdefault(app, OrderedDict())
        run = runs.get(deploy)
        if run is None:
            run = runs[deploy] = DeployRun(deploy, app, event_time(event))
            self._remember(deploy, app)
            while len(runs) > self.per_app:
                runs.popitem(last=False)
        run.feed(event)

    def _remember(self, deploy: str, app: str) -> None:
        self._owner[deploy] = app
        while len(self._owner) > self.max_deploys:
            self._owner.popitem(last=False)

    def of(self, app: str) -> list[DeployRun]:
        """The app's deploys, newest first."""
        runs = self._apps.get(app)
        return list(reversed(runs.values())) if runs is not None else []

    def run(self, app: str, deploy: str) -> DeployRun | None:
        runs = self._apps.get(app)
        return runs.get(deploy) if runs is not None else None

    def in_flight(self) -> list[DeployRun]:
        runs = (r for app in self._apps.values() for r in app.values() if not r.outcome)
        return sorted(runs, key=lambda r: r.started)

    def start(self, eventlog: EventLog) -> None:
        """Read the stored log, then follow it live, in a task of its own."""
        self._task = asyncio.create_task(self._follow(eventlog), name="dashboard history")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self, eventlog: EventLog) -> None:
        """Subscribed before the stored log is read: no event is lost between the two."""
        with eventlog.subscribe(Filter()) as live:
            last = 0
            try:
                async for event in eventlog.read(Filter()):
                    last = int(event.get("seq", 0))
                    self.feed(event)
            except OSError as err:
                log.warning("dashboard: the stored event log could not be read: %s", err)
            self.loaded = True
            async for event in live:
                if int(event.get("seq", last + 1)) > last:
                    self.feed(event)
