"""The Procfile, as Heroku and piku read it: `web:`, `release:`, any other process type, and
piku's `cron: <m> <h> <dom> <mon> <dow> <command>` lines.

* `web: <command>` answers HTTP on PORT; `release: <command>` runs once per deploy, after the
  build and before the health check; a type named `cron` or starting with `cron` (`cron`,
  `cron_nightly`) is a scheduled job (piku's rule); every other type is a process run beside
  `web:` under supervision.
* Blank lines and `#` comments are allowed. A bad line (no colon, an empty command, a type
  with other characters than letters, digits, `_` and `-`, a duplicate type, a cron field
  that cannot be read) is refused with its line number.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

TYPE_NAME = re.compile(r"[A-Za-z0-9_-]{1,63}")
# (lowest, highest, names) of minute, hour, day of month, month, day of week (0 and 7: Sunday)
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
FIELDS: tuple[tuple[int, int, tuple[str, ...]], ...] = (
    (0, 59, ()),
    (0, 23, ()),
    (1, 31, ()),
    (1, 12, MONTHS),
    (0, 7, DAYS),
)
FIELD_NAMES = ("minute", "hour", "day of month", "month", "day of week")
SEARCH_DAYS = 366 * 8  # Feb 29 on a Monday can be years away; beyond this nothing matches


class ProcfileError(ValueError):
    """A line of the Procfile that cannot mean anything; `line` is 1-based."""

    def __init__(self, line: int, why: str) -> None:
        super().__init__(f"Procfile line {line}: {why}")
        self.line = line


@dataclass(frozen=True)
class Schedule:
    """The five cron fields as sets of allowed values; `dom_any`/`dow_any`: the field was `*`
    (cron's rule: when both are restricted, a day matching either one is due)."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    dom_any: bool = True
    dow_any: bool = True

    def day_matches(self, day: datetime) -> bool:
        if day.month not in self.months:
            return False
        dom, dow = day.day in self.days, (day.isoweekday() % 7) in self.weekdays
        if self.dom_any or self.dow_any:
            return dom and dow
        return dom or dow

    def next_after(self, moment: datetime) -> datetime | None:
        """The first due minute strictly after `moment` (naive local time); None if never."""
        start = moment.replace(second=0, microsecond=0) + timedelta(minutes=1)
        day = start.replace(hour=0, minute=0)
        for _ in range(SEARCH_DAYS):
            if self.day_matches(day):
                found = self._first_time(day, start)
                if found is not None:
                    return found
            day += timedelta(days=1)
        return None

    def _first_time(self, day: datetime, start: datetime) -> datetime | None:
        for hour in sorted(self.hours):
            for minute in sorted(self.minutes):
                candidate = day.replace(hour=hour, minute=minute)
                if candidate >= start:
                    return candidate
        return None


@dataclass(frozen=True)
class CronJob:
    """One `cron…:` line: its type name, when it is due, what it runs, where it was written."""

    name: str
    schedule: Schedule
    spec: str  # the five fields as written
    command: str
    line: int


@dataclass(frozen=True)
class Procfile:
    """What a Procfile asks for; `processes` are the supervised ones, `web` first if any."""

    processes: Mapping[str, str] = field(default_factory=dict)
    release: str | None = None
    cron: tuple[CronJob, ...] = ()

    @property
    def web(self) -> str | None:
        return self.processes.get("web")

    @property
    def workers(self) -> dict[str, str]:
        return {k: v for k, v in self.processes.items() if k != "web"}


def parse(text: str) -> Procfile:
    """Read a Procfile; ProcfileError names the first bad line."""
    processes: dict[str, str] = {}
    release: str | None = None
    cron: list[CronJob] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        entry = _entry(number, raw)
        if entry is None:
            continue
        kind, command = entry
        if kind in seen:
            raise ProcfileError(number, f"`{kind}:` is there twice: give each type once")
        seen.add(kind)
        if kind == "release":
            release = command
        elif kind.startswith("cron"):
            cron.append(cron_job(kind, command, number))
        else:
            processes[kind] = command
    ordered = dict(sorted(processes.items(), key=lambda kv: kv[0] != "web"))
    return Procfile(ordered, release, tuple(cron))


def _entry(number: int, raw: str) -> tuple[str, str] | None:
    line = raw.strip()
    if not line or line.startswith("#"):
        return None
    kind, colon, command = line.partition(":")
    kind, command = kind.strip(), command.strip()
    if not colon:
        raise ProcfileError(number, f"{_shown(line)} has no `type:`: write `worker: <command>`")
    if not TYPE_NAME.fullmatch(kind):
        raise ProcfileError(
            number, f"{_shown(kind)} is not a process type: use letters, digits, _ and -"
        )
    if not command:
        raise ProcfileError(number, f"`{kind}:` has no command")
    return kind, command


def _shown(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


def cron_job(name: str, text: str, line: int = 1) -> CronJob:
    """`*/5 * * * * ./tick`: five fields then the command; ProcfileError when unreadable."""
    parts = text.split(None, 5)
    if len(parts) < 6:
        raise ProcfileError(
            line, f"`{name}:` needs five fields and a command: `{name}: */5 * * * * ./tick`"
        )
    fields = [_field(line, i, part) for i, part in enumerate(parts[:5])]
    weekdays = frozenset(d % 7 for d in fields[4])
    schedule = Schedule(
        fields[0], fields[1], fields[2], fields[3], weekdays,
        dom_any=parts[2] == "*", dow_any=parts[4] == "*",
    )  # fmt: skip
    return CronJob(name, schedule, " ".join(parts[:5]), parts[5].strip(), line)


def _field(line: int, index: int, text: str) -> frozenset[int]:
    low, high, names = FIELDS[index]
    values: set[int] = set()
    for item in text.split(","):
        try:
            values |= _item(item, low, high, names)
        except ValueError:
            why = f"cannot read the {FIELD_NAMES[index]} field {text!r} (allowed {low}-{high})"
            raise ProcfileError(line, why) from None
    return frozenset(values)


def _item(item: str, low: int, high: int, names: tuple[str, ...]) -> set[int]:
    """`*`, `5`, `1-5`, `*/15`, `10-50/10`, `mon`; ValueError for anything else."""
    span, _, step_text = item.partition("/")
    step = int(step_text) if step_text else 1
    if span == "*":
        first, last = low, high
    elif "-" in span:
        a, b = span.split("-", 1)
        first, last = _value(a, low, names), _value(b, low, names)
    else:
        first = _value(span, low, names)
        last = high if step_text else first
    if step < 1 or not low <= first <= last <= high:
        raise ValueError(item)
    return set(range(first, last + 1, step))


def _value(text: str, low: int, names: tuple[str, ...]) -> int:
    lowered = text.lower()
    if lowered in names:
        return names.index(lowered) + low
    if not text.isdigit():
        raise ValueError(text)
    return int(text)
