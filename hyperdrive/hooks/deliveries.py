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


# What the ring keeps of an answer until it is shown: (at, delivery, status, body, source)
Answered = tuple[float, str, int, Mapping[str, Any], str]


class Deliveries:
    """The newest `per_forge` deliveries of each forge, newest first. An answer is kept as it
    was given and made a `Delivery` only when read: most are never shown."""

    def __init__(self, per_forge: int = PER_FORGE, clock: Callable[[], float] = time.time) -> None:
        self.per_forge = per_forge
        self._clock = clock
        self._rings: dict[str, deque[Answered]] = {}

    def answered(
        self, provider: str, delivery: str, status: int, body: Mapping[str, Any], source: str
    ) -> None:
        """Remember what `provider`'s delivery was told (the JSON body of the answer, which
        the receiver does not change once sent)."""
        ring = self._rings.get(provider)
        if ring is None:
            ring = self._rings[provider] = deque(maxlen=self.per_forge)
        ring.appendleft((self._clock(), delivery, status, body, source))

    def recent(self, provider: str) -> list[Delivery]:
        return [_delivery(provider, kept) for kept in self._rings.get(provider, ())]


def _delivery(provider: str, kept: Answered) -> Delivery:
    at, delivery, status, body, source = kept
    deploys = body.get("deploys")
    started = sorted(deploys.items()) if isinstance(deploys, dict) else ()
    return Delivery(
        at=at,
        provider=provider,
        delivery=delivery,
        status=status,
        answer=str(body.get("status", "")),
        reason=str(body.get("reason", "")),
        deploys=tuple((str(a), str(d)) for a, d in started),
        source=source,
    )
