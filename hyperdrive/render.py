"""What people read: events in the seed's `stage: message` log style, and the status view.

One text per event (`headline`), laid out two ways: a log line with time and app (`hd logs`,
`ssh … logs`, `hd deploy`, `ssh … deploy`) and a line for the pusher, which git prefixes with
`remote:` (`pushed`). rich is imported only when a status view is drawn.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

    from rich.console import Console, ConsoleOptions, RenderableType
    from rich.segment import Segment

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # keeps tabs; no escapes reach terminals


def when(epoch: float) -> str:
    """A moment as people read it, the same on every machine: `2026-11-25 14:02 UTC`."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(epoch))


STAGE = {
    "PushReceived": "git-push",
    "DeployQueued": "deploy",
    "DeployStarted": "deploy",
    "ShipAssembled": "ship-build",
    "ShipBuilt": "ship-build",
    "BuildFailed": "ship-build",
    "ReleaseFinished": "release",
    "ReleaseFailed": "release",
    "ShipStarted": "ship-launch",
    "ShipHealthy": "health",
    "HealthCheckFailed": "health",
    "TrafficSwapped": "traffic",
    "ShipDrained": "traffic",
    "ShipRetired": "retire",
    "ShipDestroyed": "retire",
    "DeployFinished": "deploy",
    "DeployFailed": "deploy",
    "DeploySuperseded": "deploy",
    "HullAssembled": "hull-build",
    "HullBuildStarted": "hull-build",
    "HullBuildProgress": "hull-build",
    "HullBuildFailed": "hull-build",
    "HullRetired": "hull-build",
    "RolledBack": "rollback",
    "ProcessExited": "process",
    "ProcessCrashLooped": "process",
    "CronRan": "cron",
    "CronSkipped": "cron",
    "NginxConfigRejected": "nginx",
    "NginxRestarted": "nginx",
    "TrafficTableRestored": "traffic",
    "ShipDied": "ship-launch",
    "ShipRevived": "ship-launch",
    "ShipCrashLooping": "ship-launch",
    "TriggerIgnored": "deploy",
    "TriggerRejected": "spool",
    "DaemonStarted": "hyperdrive",
    "DaemonStopping": "hyperdrive",
    "HeadquartersSynced": "headquarters",
    "HeadquartersSyncFailed": "headquarters",
    "OrdersChanged": "headquarters",
    "OrdersRejected": "headquarters",
    "AppOrdered": "headquarters",
    "AppRetired": "headquarters",
    "AdmiralsChanged": "admirals",
    "AdmiralKeysRejected": "admirals",
    "AccessRefused": "access",
    "SignedIn": "dashboard",
    "SignedOut": "dashboard",
    "SignInRefused": "dashboard",
}
# what went wrong: the pusher sees these as ` !     ` lines
FAILURES = frozenset(
    {
        "DeployFailed",
        "BuildFailed",
        "ReleaseFailed",
        "HealthCheckFailed",
        "HullBuildFailed",
        "RolledBack",
    }
)
# the hook has already said what it queued: the pusher is not told again
QUIET_FOR_PUSHER = frozenset({"PushReceived", "DeployQueued"})


def clean(text: object) -> str:
    """Text from events without control characters: no escape sequence reaches a terminal."""
    return _CONTROL.sub("", str(text))


def describe(event: Mapping[str, Any]) -> str:
    """`14:02:11 web ship-build: ship 'hyperdrive-web-1a2b3c4' ready (812 ms)`."""
    name = str(event.get("event", "?"))
    clock = str(event.get("ts", ""))[11:19]
    app = clean(event.get("app") or "-")
    if name == "BuildOutput":
        return "\n".join(f"{clock} {app}        {line}" for line in _output_lines(event))
    stage = clean(event.get("stage") or "") if name == "StageFinished" else STAGE.get(name, name)
    return f"{clock} {app} {stage}: {headline(event)}"


def pushed(event: Mapping[str, Any]) -> str | None:
    """One event as the pusher sees it (git prefixes each line with `remote:`); None = quiet."""
    name = str(event.get("event", ""))
    if name in QUIET_FOR_PUSHER:
        return None
    if name == "BuildOutput":
        return "\n".join(f"       {line}" for line in _output_lines(event))
    if name in FAILURES:
        return f" !     {clean(event.get('app') or '')}: {headline(event)}"
    return f"-----> {headline(event)}"


def headline(event: Mapping[str, Any]) -> str:
    """What an event says, with its duration, without time or app column: the same in every
    view."""
    return HEADLINES.get(str(event.get("event", "")), _plain)(event)


def took(event: Mapping[str, Any]) -> str:
    """` (812 ms)`, ` (3.2 s)`, or nothing when the event ended no stage."""
    ms = event.get("ms")
    if not isinstance(ms, int | float) or isinstance(ms, bool):
        return ""
    return f" ({ms:.0f} ms)" if ms < 1000 else f" ({ms / 1000:.1f} s)"


def _output_lines(event: Mapping[str, Any]) -> list[str]:
    return [clean(line) for line in str(event.get("message") or "").splitlines()] or [""]


def _short(sha: Any) -> str:
    return str(sha)[:7] if sha else "?"


def _humanize(name: str) -> str:
    """`ShipHealthy` → `Ship healthy`."""
    return re.sub(r"(?<!^)([A-Z])", lambda m: " " + m.group(1).lower(), name)


def _plain(event: Mapping[str, Any]) -> str:
    """The event's own message; without one, its name and what it is about."""
    if event.get("message"):
        return clean(event["message"]) + took(event)
    app, sha = clean(event.get("app") or ""), event.get("sha")
    subject = event.get("ship") or (f"{app} at {_short(sha)}" if sha else app)
    text = " ".join(f"{_humanize(clean(event.get('event') or 'event'))} {subject}".split())
    return text + took(event)


def _started(event: Mapping[str, Any]) -> str:
    return f"Deploying {clean(event.get('app') or '')} at {_short(event.get('sha'))}{took(event)}"


def _finished(event: Mapping[str, Any]) -> str:
    """`web deployed (3.2 s): web 1a2b3c4 is live at http://…/web/` (the URL alone without a
    message); a ship made ready or hulls assembled are said as the event says them."""
    if not event.get("app") or not event.get("url"):
        return _plain(event)
    said = clean(event.get("message") or event["url"])
    return f"{clean(event['app'])} deployed{took(event)}: {said}"


def _failed(event: Mapping[str, Any]) -> str:
    name = _humanize(str(event.get("event"))).lower()
    stage = f" at {clean(event['stage'])}" if event.get("stage") else ""
    return f"{name}{stage}: {clean(event.get('message') or '')}{took(event)}"


def _superseded(event: Mapping[str, Any]) -> str:
    return f"superseded by a newer deploy ({clean(event.get('by') or 'unknown')}){took(event)}"


HEADLINES: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "DeployStarted": _started,
    "DeployFinished": _finished,
    "DeployFailed": _failed,
    "BuildFailed": _failed,
    "ReleaseFailed": _failed,
    "HealthCheckFailed": _failed,
    "DeploySuperseded": _superseded,
}


# -- the status view: `hd status` and `ssh … status` --

# Each app is a block of `label  value` lines: nothing has to share a line with a ship name,
# so at 80 columns (rich's width without a terminal) nothing is cut; a long value wraps.
APP_FIELDS = (
    ("ship", "ship"),  # `<name>-<app>-<sha7>`: the commit is in its name
    ("since", "since"),
    ("last deploy", "last_deploy"),
    ("orders", "orders"),
)


def status_text(status: Mapping[str, Any], width: int = 80, color: bool = False) -> str:
    """The status view drawn as text `width` columns wide (for an SSH channel)."""
    from rich.console import Console, Group  # noqa: PLC0415 - rich costs ~25 ms: only for people

    out = io.StringIO()
    console = Console(
        file=out, width=width, highlight=False, color_system="standard" if color else None
    )
    console.print(Group(*status_view(status)))  # one print: one per part cost ~0.05 ms each
    return out.getvalue()


def status_view(status: Mapping[str, Any]) -> list[RenderableType]:
    """What `hd status` and `ssh … status` show: the squadron, then one block per app."""
    from rich.text import Text  # noqa: PLC0415 - rich costs ~25 ms: only for people

    head = Text(f"{status['name']} {status['version']} (pid {status['pid']})", style="bold")
    parts: list[RenderableType] = [head, _grid(_squadron_rows(status))]
    apps = status.get("apps", [])
    if not apps:
        parts.append(Text("no apps yet: push one (see README, Your first app)"))
    for app in apps:
        parts += [Text(""), *_app_block(app)]
    return parts


def _hulls_line(hulls: Mapping[str, Any]) -> str:
    """`debian building 45% (installing …), busybox hdx-hull-busybox-1`: only the kinds that
    are built or being built."""
    parts = []
    for kind, row in sorted(hulls.items()):
        building = row.get("building")
        if building:
            parts.append(f"{kind} building {building['percent']}% ({building['step']})")
        elif row.get("current"):
            parts.append(f"{kind} {row['current']}{_runtimes(row.get('runtimes') or {})}")
    return ", ".join(parts)


def _runtimes(runtimes: Mapping[str, str]) -> str:
    """` (Python 3.11.2, Node 18.19.0)`: what a hull carries; nothing for busybox."""
    names = {"python": "Python", "node": "Node"}
    shown = [f"{names.get(k, k)} {v}" for k, v in sorted(runtimes.items(), reverse=True)]
    return f" ({', '.join(shown)})" if shown else ""


def _squadron_rows(status: Mapping[str, Any]) -> list[tuple[str, str]]:
    hq = str(status["headquarters"])
    sha = status.get("headquarters_sha")
    hq += f" at {str(sha)[:7]}" if sha else ", nothing in force yet"
    ports = f"ssh {status['ssh']}, api {status['api']}, http :{status['http_port']}"
    if status.get("certificates"):
        ports += f", https :{status.get('https_port')}"
    pending = f"{status['pending']} triggers, {status['inflight']} deploys in flight"
    rows = [("listening", ports), ("headquarters", hq), ("pending", pending)]
    if hulls := _hulls_line(status.get("hulls", {})):
        rows.append(("hulls", hulls))
    if fleet := fleet_line(status.get("fleet") or {}):
        rows.append(("fleet", fleet))
    rows += [("https", certificate_line(c)) for c in status.get("certificates") or []]
    return rows


def certificate_line(cert: Mapping[str, Any]) -> str:
    """`www.example.com until 2027-03-01T10:00:00Z (R11)`, or why there is none yet."""
    line = f"{cert['name']} "
    if cert.get("expires"):
        line += f"until {cert['expires']} ({cert.get('issuer') or '?'}"
        line += ", an admiral's own)" if cert.get("own") else ")"
    else:
        line += "no certificate yet"
    if cert.get("error"):
        line += f"; FAILED: {cert['error']}, retry {cert.get('retry') or 'later'}"
    return line


def fleet_line(fleet: Mapping[str, Any]) -> str:
    """`connected to nats://…, 2 unpublished`, `UNREACHABLE (…)`; "" for a squadron alone."""
    state = str(fleet.get("state", "alone"))
    if state == "alone":
        return ""
    where = ", ".join(fleet.get("urls") or [])
    shown = state.upper() if state in ("unreachable", "refused", "broken") else state
    line = f"{shown} ({where})" if where else shown
    if state != "connected" and fleet.get("detail"):
        line += f": {fleet['detail']}"
    if fleet.get("unpublished"):
        line += f"; {fleet['unpublished']} triggers not published yet (kept until NATS is back)"
    return line


def _app_block(app: Mapping[str, Any]) -> list[RenderableType]:
    from rich.text import Text  # noqa: PLC0415 - rich costs ~25 ms: only for people

    title = Text(str(app["app"]), style="bold")
    title.append(f"  {app.get('url') or 'not served'}", style="")
    rows = [(label, str(app.get(key) or "-")) for label, key in APP_FIELDS]
    return [title, _grid(rows)]


def _grid(rows: list[tuple[str, str]]) -> Rows:
    """Two columns, labels and values; a value too long for the line wraps (or folds)."""
    return Rows(rows)


class Rows:
    """`label  value` lines laid out as a two-column grid would be (values wrap, or fold, under
    their column), drawn line by line: a rich Table per app cost ~2 ms each in `hd status`."""

    GAP = 2

    def __init__(self, rows: list[tuple[str, str]]) -> None:
        self.rows = [(f"  {label}", value) for label, value in rows]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Segment]:
        from rich.cells import cell_len  # noqa: PLC0415 - rich costs ~25 ms: only for people
        from rich.segment import Segment  # noqa: PLC0415
        from rich.style import Style  # noqa: PLC0415
        from rich.text import Text  # noqa: PLC0415

        column = max((len(label) for label, _ in self.rows), default=0) + self.GAP
        width = max(options.max_width - column, 1)
        dim = Style(dim=True)
        for label, value in self.rows:
            text = Text(value, overflow="fold")
            fits = "\n" not in value and cell_len(value) <= width
            lines = [text] if fits else text.wrap(console, width, overflow="fold")
            for n, line in enumerate(lines or [Text("")]):
                yield Segment(label.ljust(column), dim) if n == 0 else Segment(" " * column)
                yield from line.render(console)
                yield Segment.line()
