"""Following queued work to its outcome: the one place that says what success is.

`hd deploy|rollback|assemble|launch|headquarters sync`, `ssh … deploy|rollback` and git's
post-receive all queue a durable trigger, then show its deploy's events until the outcome.
Light on purpose (no asyncio server, no aiohttp): git's hook imports it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

# What was asked for happened: a deploy (or rollback, assemble, launch) finished after its
# drain, headquarters were read, an app whose branch was deleted was retired.
SUCCESS = frozenset({"DeployFinished", "HeadquartersSynced", "AppRetired"})
FAILURE = frozenset({"DeployFailed", "HeadquartersSyncFailed"})
# Neither: a newer deploy took over, the trigger asked for nothing (a push to a branch
# that does not deploy), or a fleet's rollout stopped before this squadron's wave. Not an
# error for a pusher; `hd deploy` exits non-zero all the same.
OTHER = frozenset({"DeploySuperseded", "TriggerIgnored", "RolloutHeld"})
OUTCOMES = SUCCESS | FAILURE | OTHER

Show = Callable[[Mapping[str, Any]], None]


@dataclass(frozen=True)
class Outcome:
    """How one deploy ended; `event` is empty when the follow stopped before it ended."""

    deploy: str
    event: str = ""
    message: str = ""
    by: str | None = None  # the newer deploy, for DeploySuperseded

    @property
    def ok(self) -> bool:
        return self.event in SUCCESS

    @property
    def ended(self) -> bool:
        return self.event in OUTCOMES

    @property
    def exit_code(self) -> int:
        """0 only for success: `hd deploy` and `ssh … deploy` exit with this."""
        return 0 if self.ok else 1

    def hint(self, logs: str = "hd logs") -> str | None:
        """What to run next when the story goes on elsewhere (`logs`: how the reader asks)."""
        if self.event == "DeploySuperseded" and self.by:
            return f"{self.by} goes on from here: `{logs} -f --deploy {self.by}`"
        if not self.ended:
            return f"{self.deploy} goes on: `{logs} -f --deploy {self.deploy}`"
        return None


def outcome_of(deploy: str, event: Mapping[str, Any]) -> Outcome | None:
    """The outcome this event is for `deploy`, or None while the deploy goes on."""
    name = str(event.get("event", ""))
    if name not in OUTCOMES or event.get("deploy", deploy) != deploy:
        return None
    by = event.get("by")
    return Outcome(deploy, name, str(event.get("message") or ""), str(by) if by else None)


def follow(events: Iterable[Mapping[str, Any]], deploy: str, show: Show) -> Outcome:
    """Show each event of one deploy until its outcome (a blocking stream: hd, git's hook)."""
    for event in events:
        show(event)
        if (outcome := outcome_of(deploy, event)) is not None:
            return outcome
    return Outcome(deploy)


async def follow_async(
    events: AsyncIterable[Mapping[str, Any]], deploy: str, show: Show
) -> Outcome:
    """`follow` for a live subscription inside the daemon (`ssh … deploy`)."""
    async for event in events:
        show(event)
        if (outcome := outcome_of(deploy, event)) is not None:
            return outcome
    return Outcome(deploy)


class EventSource(Protocol):
    """What `follow_client` reads: the admin client's event stream (a fake in unit tests)."""

    def events(
        self, *, deploy: str | None = ..., follow: bool = ..., history: int | None = ...
    ) -> Iterable[dict[str, Any]]: ...


def follow_client(client: EventSource, deploy: str, show: Show) -> Outcome:
    """Follow one deploy through the daemon's admin API: its stored events, then live ones.

    The daemon seeks straight to the deploy's first event, so asking for all of them is cheap.
    """
    return follow(client.events(deploy=deploy, follow=True, history=None), deploy, show)


def follow_many(
    follow_one: Callable[[str], Outcome], deploys: Iterable[str], wait_s: float
) -> dict[str, Outcome]:
    """Follow several deploys at once (the refs of one push, the apps of one webhook) until
    each follow returns or `wait_s` passes; those still going are missing from the answer."""
    outcomes: dict[str, Outcome] = {}

    def run(deploy: str) -> None:
        outcomes[deploy] = follow_one(deploy)

    ids = list(deploys)
    threads = [threading.Thread(target=run, args=(d,), daemon=True) for d in ids]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + wait_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return {d: outcomes[d] for d in ids if d in outcomes}
