"""Refused webhook deliveries, counted per source address so a flood cannot wash out history.

The first refusal from an address in an interval is written at once; the rest are counted and
written as one summary when that address's interval is over, at the next refusal from anyone
(no timer). Addresses are kept in the order their interval began, so expiry is a pop from the
front; at most `max_sources` are tracked (the oldest is summarised early to make room).
"""

from __future__ import annotations

import functools
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

INTERVAL_S = 60.0
MAX_SOURCES = 4096


@functools.lru_cache(maxsize=4096)  # every delivery asks; the same forges send most of them
def source_of(remote: str | None) -> str:
    """The address refusals are counted by: the TCP peer, an IPv6 one by its /64 (one host
    commonly holds a whole /64, so counting its addresses one by one would count nothing)."""
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return remote or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{address}/64", strict=False))
    return str(address)


@dataclass
class _Window:
    started: float
    status: int
    more: int = 0  # refusals counted, not written


@dataclass
class Summary:
    """What the receiver writes for a burst that ended: how many more, from where, how long."""

    source: str
    more: int
    interval: float
    status: int  # the HTTP status of the burst's last refusal

    @property
    def message(self) -> str:
        plural = "refusal" if self.more == 1 else "refusals"
        return f"{self.more} more {plural} from {self.source} in the last {self.interval:g} s"


class RefusalTally:
    """Which refusals to write as events; every refusal is counted for /metrics."""

    def __init__(
        self,
        interval: float = INTERVAL_S,
        max_sources: int = MAX_SOURCES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.max_sources = max_sources
        self._clock = clock
        self._windows: OrderedDict[str, _Window] = OrderedDict()
        self.refused = 0  # every refusal since start
        self.unwritten = 0  # refusals only counted, never an event of their own

    def refuse(self, source: str, status: int) -> tuple[bool, list[Summary]]:
        """Count one refusal: (write it as an event now?, summaries of bursts now over)."""
        now = self._clock()
        self.refused += 1
        summaries = self._expire(now)
        window = self._windows.get(source)
        if window is not None:
            window.more += 1
            window.status = status
            self.unwritten += 1
            return False, summaries
        while len(self._windows) >= self.max_sources:
            summaries += self._close(next(iter(self._windows)))
        self._windows[source] = _Window(now, status)
        return True, summaries

    def _expire(self, now: float) -> list[Summary]:
        """Close every window whose interval is over (they are in the order they began)."""
        summaries: list[Summary] = []
        while self._windows:
            source, window = next(iter(self._windows.items()))
            if now - window.started < self.interval:
                break
            summaries += self._close(source)
        return summaries

    def _close(self, source: str) -> list[Summary]:
        window = self._windows.pop(source)
        return [Summary(source, window.more, self.interval, window.status)] if window.more else []
