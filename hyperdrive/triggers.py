"""A trigger: something that asks for work (a push, a webhook, a CLI deploy, an HQ change).

Kept apart from the spool so that git's hooks can write one without loading the daemon's
event loop machinery: `write_incoming` is what bin/post-receive calls on every push.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyperdrive.errors import HyperdriveError, SpoolError
from hyperdrive.files import write_atomically
from hyperdrive.names import sanitize_app_name

TRIGGER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


@dataclass(frozen=True)
class Trigger:
    """Something that asks for work: a push, a webhook, a CLI deploy, an HQ change."""

    id: str
    kind: str
    app: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    received: float = 0.0
    fingerprint: str = ""  # e.g. a hash of the webhook body: tells a replay from a clash

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "app": self.app,
            "data": dict(self.data),
            "received": self.received,
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_json(cls, obj: Any) -> Trigger:
        """Validate untrusted JSON into a Trigger; raise SpoolError naming what is wrong."""
        if not isinstance(obj, dict):
            raise SpoolError("trigger is not a JSON object")
        tid, kind, app, data = obj.get("id"), obj.get("kind"), obj.get("app"), obj.get("data", {})
        if not isinstance(tid, str) or not TRIGGER_ID.fullmatch(tid):
            raise SpoolError(f"trigger has an invalid id: {tid!r}")
        if not isinstance(kind, str) or not kind:
            raise SpoolError(f"trigger {tid} has no kind")
        if not isinstance(data, dict):
            raise SpoolError(f"trigger {tid}: data is not an object")
        if app is not None:
            try:
                sanitize_app_name(app)
            except HyperdriveError as err:
                raise SpoolError(f"trigger {tid}: {err}") from err
        received, fingerprint = obj.get("received", 0.0), obj.get("fingerprint", "")
        if not isinstance(received, int | float) or not isinstance(fingerprint, str):
            raise SpoolError(f"trigger {tid}: received or fingerprint has the wrong type")
        return cls(tid, kind, app, data, float(received), fingerprint)


def new_trigger_id(prefix: str = "t") -> str:
    """A fresh id that sorts by time: `<prefix>-<ms hex>-<random>`."""
    return f"{prefix}-{int(time.time() * 1000):x}-{secrets.token_hex(4)}"


def write_incoming(root: Path, trigger: Trigger) -> Path:
    """Durably drop a trigger into `root/incoming/` from another process (e.g. post-receive)."""
    final = root / "incoming" / f"{trigger.id}.json"
    write_atomically(final, json.dumps(trigger.to_json()))
    return final
