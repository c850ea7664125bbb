"""What the dashboard's pages show, built from the daemon's state: plain data for templates.

Everything shown that did not come from the event log (which masks as it reads) is masked
here with the squadron's mask: setup.log, commit subjects, the orders' values.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hyperdrive.gitremote import shown_url
from hyperdrive.headquarters import Orders
from hyperdrive.render import clean, describe

Mask = Callable[[str], str]
LOG_CHARS = 48_000  # of a deploy's events on its page (the page stays under 100 KB)
SETUP_LOG_CHARS = 24_000  # of a failed build's setup.log on the page
SETUP_LOG_DOWNLOAD = 1 << 20  # the last MiB of setup.log as text
SHIP = re.compile(r"[a-z0-9][a-z0-9-]{0,120}")


def tail_text(text: str, limit: int) -> tuple[str, bool]:
    """The last `limit` characters of `text`, from a line start, and whether it was cut."""
    if len(text) <= limit:
        return text, False
    cut = text[-limit:]
    return cut[cut.find("\n") + 1 :], True


def log_text(events: Iterable[Mapping[str, Any]]) -> str:
    """A deploy's events as `hd logs` prints them."""
    return "\n".join(describe(e) for e in events)


def read_tail(path: Path, limit: int, mask: Mask) -> str | None:
    """The masked end of a log file (at most `limit` bytes read), or None when it is not there."""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, 2)
            fh.seek(max(0, size - limit))
            raw = fh.read(limit)
    except OSError:
        return None
    text = raw.decode("utf-8", "replace")
    if size > limit:
        text = text[text.find("\n") + 1 :]
    return mask(clean(text))


def setup_log_path(ships_dir: Path, ship: str) -> Path | None:
    """`$DATA/lxc/<ship>/setup.log` for a ship name of ours (never a path from elsewhere)."""
    return ships_dir / ship / "setup.log" if SHIP.fullmatch(ship) else None


def orders_rows(orders: Orders, mask: Mask) -> list[tuple[str, str]]:
    """The orders in force as (directive, value) rows; every value masked."""
    rows: list[tuple[str, str]] = []
    if orders.autodeploy_url:
        rows.append(("autodeploy", shown_url(orders.autodeploy_url)))
    if orders.branch:
        rows.append(("branch", orders.branch))
    rows.append(("hull", orders.hull or "default"))
    rows.append(("healthcheck", f"{orders.healthcheck_path} {orders.healthcheck_seconds:g} s"))
    if orders.servernames:
        rows.append(("servername", " ".join(orders.servernames)))
    if orders.memory_bytes is not None:
        rows.append(("memory", f"{orders.memory_bytes // (1 << 20)}M"))
    if orders.cpus is not None:
        rows.append(("cpus", f"{orders.cpus:g}"))
    rows += [("export", f"{key}={value}") for key, value in sorted(orders.env.items())]
    return [(name, mask(clean(value))) for name, value in rows]


def took(ms: object) -> str:
    if not isinstance(ms, int | float) or isinstance(ms, bool):
        return ""
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.1f} s"


def moment(epoch: object) -> str:
    """`2026-12-01 14:02:11 UTC` (deliveries come seconds apart)."""
    if not isinstance(epoch, int | float) or not epoch:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


@dataclass(frozen=True)
class Bar:
    """One stage on a deploy's timeline: where it starts and how wide it is, of 1000."""

    name: str
    ms: int
    x: int
    width: int
    failed: bool


def timeline(stages: Iterable[Any]) -> list[Bar]:
    """Stages laid end to end over 1000 units, each at least 4 wide so a short one shows."""
    stages = list(stages)
    total = max(1, sum(s.ms for s in stages))
    bars, x = [], 0
    for stage in stages:
        width = max(4, round(1000 * stage.ms / total))
        bars.append(Bar(stage.name, stage.ms, min(x, 996), width, stage.failed))
        x += width
    return bars


class Subjects:
    """Commit subjects by (app, sha), read with dulwich from the app's repo, cached."""

    def __init__(self, git_dir: Path, mask: Mask, limit: int = 4096) -> None:
        self.git_dir = git_dir
        self.mask = mask
        self.limit = limit
        self._known: OrderedDict[tuple[str, str], str] = OrderedDict()

    def cached(self, app: str, sha: str) -> str | None:
        return self._known.get((app, sha))

    def load(self, wanted: Iterable[tuple[str, str]]) -> None:
        """Read the subjects not yet known (blocking: called in a worker thread)."""
        for app, sha in wanted:
            if (app, sha) not in self._known:
                self._known[(app, sha)] = self.mask(clean(self._read(app, sha)))
                while len(self._known) > self.limit:
                    self._known.popitem(last=False)

    def _read(self, app: str, sha: str) -> str:
        from dulwich.errors import NotGitRepository  # noqa: PLC0415 - only pages with commits
        from dulwich.repo import Repo  # noqa: PLC0415

        for path in (self.git_dir / f"{app}.git", self.git_dir / "mirrors" / f"{app}.git"):
            try:
                with Repo(str(path)) as repo:
                    message = getattr(repo[sha.encode()], "message", b"")
            except (OSError, KeyError, ValueError, NotGitRepository):
                continue  # not in this repo: try the next (a commit pruned away has no subject)
            lines = bytes(message).decode("utf-8", "replace").strip().splitlines()
            return lines[0][:200] if lines else ""
        return ""
