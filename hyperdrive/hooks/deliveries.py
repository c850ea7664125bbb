"""The answer the receiver gave each recent webhook delivery, per forge, in memory.

Refusals are written to the event log at most once per source address per interval
(refusals.py), so the log alone cannot say what each delivery was told; this bounded ring can.
It is what the dashboard's webhook page shows, and it starts empty when the daemon starts.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

PER_FORGE = 100


@dataclass(frozen=True)
class Delivery:
    """One delivery and its answer: `answer` is queued, duplicate, ignored, pong or rejected."""

    at: float
    provider: str
    delivery: str
    status: int
    answer: str
    reason: str = ""
    deploys: tuple[tuple[str, str], ...] = ()  # (app, deploy id) a queued delivery started
    source: str = ""


class Deliveries:
    """The newest `per_forge` deliveries of each forge, newest first."""

    def __init__(self, per_forge: int = PER_FORGE, clock: Callable[[], float] = time.time) -> None:
        self.per_forge = per_forge
        self._clock = clock
        self._rings: dict[str, deque[Delivery]] = {}

    def answered(
        self, provider: str, delivery: str, status: int, body: Mapping[str, Any], source: str
    ) -> Delivery:
        """Remember what `provider`'s delivery was told (the JSON body of the answer)."""
        deploys = body.get("deploys")
        started = tuple(sorted(deploys.items())) if isinstance(deploys, dict) else ()
        said = Delivery(
            at=self._clock(),
            provider=provider,
            delivery=delivery,
            status=status,
            answer=str(body.get("status", "")),
            reason=str(body.get("reason", "")),
            deploys=tuple([(str(a), str(d)) for a, d in started]),
            source=source,
        )
        ring = self._rings.setdefault(provider, deque(maxlen=self.per_forge))
        ring.appendleft(said)
        return said

    def recent(self, provider: str) -> list[Delivery]:
        return list(self._rings.get(provider, ()))
