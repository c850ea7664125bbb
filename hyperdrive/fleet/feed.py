"""One view of the fleet's events: each squadron's events, tagged with its name, in the
JetStream stream `HD_EVENTS`. No NATS here (the link publishes and reads).

The events are the event log's records, already masked and redacted there: what a squadron
shares is what its own `hd logs` shows, never more.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

SUBJECT = "hd.event"  # hd.event.<squadron>.<app>; `_` for an event of no app
NO_APP = "_"


def subject(squadron: str, event: Mapping[str, Any]) -> str:
    """`hd.event.sq-b.site`: a reader of one app's events across the fleet filters on it."""
    app = event.get("app")
    return f"{SUBJECT}.{squadron}.{app if isinstance(app, str) and app else NO_APP}"


def app_subject(app: str | None) -> str:
    """What a reader subscribes to: one app's events on every squadron, or all of them."""
    return f"{SUBJECT}.*.{app}" if app else f"{SUBJECT}.>"


def tagged(squadron: str, event: Mapping[str, Any]) -> dict[str, Any]:
    """The event as the fleet sees it: with the squadron it happened on."""
    return {**event, "squadron": squadron}


def encode(squadron: str, event: Mapping[str, Any]) -> bytes:
    return json.dumps(tagged(squadron, event), separators=(",", ":"), default=str).encode()


def decode(data: bytes) -> dict[str, Any] | None:
    """A stored fleet event, or None for a message that is not one."""
    try:
        event = json.loads(data)
    except ValueError:
        return None
    if not isinstance(event, dict) or "event" not in event or "squadron" not in event:
        return None
    return event


def prefixed(event: Mapping[str, Any], text: str) -> str:
    """`[sq-b] …` on every line of what one squadron's event says."""
    tag = f"[{event.get('squadron') or '?'}] "
    return "\n".join(tag + line for line in text.split("\n"))
