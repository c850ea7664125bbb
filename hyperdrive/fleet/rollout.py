"""Rollout in waves across a fleet: the frozen plan, whose turn it is, what status shows.

No NATS here (unit-tested as is): the link keeps plans and results in the KV bucket
`hd_rollouts`, the pipeline asks `turn` before a squadron starts its deploy.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# what a squadron reports for its part of a rollout
HEALTHY, FAILED, HELD, SUPERSEDED, IGNORED = "healthy", "failed", "held", "superseded", "ignored"
# what `turn` answers
GO, WAIT = "go", "wait"
SETTLED_OK = frozenset({HEALTHY, IGNORED})  # lets the next wave open


def waves(spec: Sequence[str], names: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    """The squadrons of each wave: `1 50% 100%` over five names gives 1, then up to 3
    (50% rounded up), then all 5; waves left empty by the rounding are dropped."""
    ordered = sorted(names)
    total, start, found = len(ordered), 0, []
    for word in spec or ("100%",):
        if word.endswith("%"):
            upto = math.ceil(total * int(word[:-1]) / 100)
        else:
            upto = min(total, int(word))
        if upto > start:
            found.append(tuple(ordered[start:upto]))
            start = upto
    if start < total:  # orders always end at 100%; a spec that does not still covers all
        found.append(tuple(ordered[start:]))
    return tuple(found)


def key(app: str, deploy: str) -> str:
    """The plan's KV key: `<app>.<digest of the deploy id>` (deploy ids hold `:`)."""
    return f"{app}.{hashlib.sha256(deploy.encode()).hexdigest()[:16]}"


@dataclass(frozen=True)
class Plan:
    """The squadrons of one app's rollout of one deploy, frozen when the trigger is taken."""

    app: str
    deploy: str
    waves: tuple[tuple[str, ...], ...]
    created: float

    @classmethod
    def make(cls, app: str, deploy: str, spec: Sequence[str], names: Sequence[str]) -> Plan:
        return cls(app, deploy, waves(spec, names), time.time())

    def to_json(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "deploy": self.deploy,
            "waves": [list(w) for w in self.waves],
            "created": self.created,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Plan:
        found = tuple(tuple(str(n) for n in w) for w in obj.get("waves") or ())
        return cls(str(obj["app"]), str(obj["deploy"]), found, float(obj.get("created") or 0))

    def wave_of(self, name: str) -> int:
        """1-based; a squadron that was not up when the plan was frozen comes after all."""
        for number, wave in enumerate(self.waves, start=1):
            if name in wave:
                return number
        return len(self.waves) + 1

    def before(self, number: int) -> list[str]:
        return [n for wave in self.waves[: number - 1] for n in wave]


@dataclass(frozen=True)
class Turn:
    """`go`, `wait` or `held`, for wave `wave` of `waves`; `why` is said to people."""

    state: str
    wave: int
    waves: int
    why: str = ""


def turn(plan: Plan, results: Mapping[str, str], me: str) -> Turn:
    """Whether `me` deploys now: its wave opens when every squadron of the waves before
    reported healthy; any other outcome there stops the rollout (`me` is held)."""
    number = plan.wave_of(me)
    count = max(number, len(plan.waves))
    earlier = plan.before(number)
    stopped = [n for n in earlier if results.get(n) not in (None, *SETTLED_OK)]
    if stopped:
        said = ", ".join(f"{n} {results[n]}" for n in stopped)
        return Turn(HELD, number, count, f"the rollout stopped before wave {number} ({said})")
    waiting = [n for n in earlier if n not in results]
    if waiting:
        return Turn(WAIT, number, count, f"waiting for {', '.join(waiting)} to be healthy")
    return Turn(GO, number, count, f"wave {number} of {count} open")


def state(plan: Plan, results: Mapping[str, str]) -> str:
    """The whole rollout: `stopped` (a failure), `done` (everyone healthy) or `rolling`."""
    everyone = [n for wave in plan.waves for n in wave]
    if any(results.get(n) in (FAILED, HELD, SUPERSEDED) for n in everyone):
        return "stopped"
    if all(results.get(n) in SETTLED_OK for n in everyone):
        return "done"
    return "rolling"


def cell(plan: Plan, results: Mapping[str, str], name: str) -> str:
    """One squadron's part, as `hd fleet status` shows it: `live`, `waiting wave 2`,
    `deploying wave 2`, `failed`, `held`, `superseded`."""
    result = results.get(name)
    if result in SETTLED_OK:
        return "live"
    if result is not None:
        return result
    now = turn(plan, results, name)
    if now.state == HELD:
        return "held"
    return f"{'deploying' if now.state == GO else 'waiting'} wave {now.wave}"


def shown(plan: Plan, results: Mapping[str, str]) -> dict[str, Any]:
    """The app's rollout in `hd fleet status --json`."""
    return {
        "deploy": plan.deploy,
        "waves": [list(w) for w in plan.waves],
        "state": state(plan, results),
        "squadrons": {n: cell(plan, results, n) for wave in plan.waves for n in wave},
    }


def result_of(outcome: str) -> str:
    """The bus's outcome word as a rollout result."""
    return {"finished": HEALTHY, "ignored": IGNORED, "superseded": SUPERSEDED}.get(
        outcome, FAILED if outcome == "failed" else outcome
    )
