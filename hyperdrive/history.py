"""How many stored events a reader may ask for: one rule for `hd logs`, `ssh … logs` and
/events (a module of its own so `hd` checks it without loading the event log)."""

from __future__ import annotations

import re

MAX_HISTORY = 100_000  # stored events one read may ask for; more than that is `all`


def parse_history(text: str) -> int | None:
    """`N` (0 to MAX_HISTORY) or `all`: how many stored events a reader asks for; anything
    else is refused here, before a read is started, with a message for the person."""
    if text == "all":
        return None
    if not re.fullmatch(r"[0-9]{1,7}", text) or int(text) > MAX_HISTORY:
        raise ValueError(f"a count of events is 0 to {MAX_HISTORY} or 'all', not {text[:40]!r}")
    return int(text)
