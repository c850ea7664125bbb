"""Events as people read them, in the seed's `stage: message` log style."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any


def when(epoch: float) -> str:
    """A moment as people read it, the same on every machine: `2026-11-25 14:02 UTC`."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(epoch))


STAGE = {
    "PushReceived": "git-push",
    "DeployQueued": "deploy",
    "DeployStarted": "deploy",
    "ShipAssembled": "ship-build",
    "ShipBuilt": "ship-build",
    "BuildFailed": "ship-build",
    "ShipStarted": "ship-launch",
    "ShipHealthy": "health",
    "HealthCheckFailed": "health",
    "TrafficSwapped": "traffic",
    "ShipDrained": "traffic",
    "ShipRetired": "retire",
    "ShipDestroyed": "retire",
    "DeployFinished": "deploy",
    "DeployFailed": "deploy",
    "DeploySuperseded": "deploy",
    "HullAssembled": "hull-build",
    "HullBuildStarted": "hull-build",
    "HullBuildProgress": "hull-build",
    "HullBuildFailed": "hull-build",
    "HullRetired": "hull-build",
    "RolledBack": "rollback",
    "NginxConfigRejected": "nginx",
    "TriggerIgnored": "deploy",
    "TriggerRejected": "spool",
    "DaemonStarted": "hyperdrive",
    "DaemonStopping": "hyperdrive",
    "HeadquartersSynced": "headquarters",
    "HeadquartersSyncFailed": "headquarters",
    "OrdersChanged": "headquarters",
    "OrdersRejected": "headquarters",
    "AppOrdered": "headquarters",
    "AppRetired": "headquarters",
    "AdmiralsChanged": "admirals",
    "AdmiralKeysRejected": "admirals",
}


def describe(event: Mapping[str, Any]) -> str:
    """`14:02:11 web ship-build: ship 'hyperdrive-web-1a2b3c4' ready (812 ms)`."""
    name = str(event.get("event", "?"))
    clock = str(event.get("ts", ""))[11:19]
    app = event.get("app") or "-"
    if name == "BuildOutput":
        return f"{clock} {app}        {event.get('message', '')}"
    stage = str(event.get("stage") or "") if name == "StageFinished" else STAGE.get(name, name)
    message = event.get("message") or _default_message(event)
    took = f" ({event['ms']} ms)" if event.get("ms") is not None else ""
    return f"{clock} {app} {stage}: {message}{took}"


def _default_message(event: Mapping[str, Any]) -> str:
    parts = [str(event.get("event"))]
    for key in ("ship", "sha"):
        if event.get(key):
            value = str(event[key])
            parts.append(f"{key} {value[:7] if key == 'sha' else value}")
    return ", ".join(parts)
