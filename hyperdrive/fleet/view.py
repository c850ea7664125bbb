"""`hd fleet status`: the squadrons (from presence) and each app on each squadron (from the
per-app state every squadron puts in KV at a deploy's outcome). No NATS here."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from hyperdrive.errors import FleetError

HEARTBEAT_S = 30.0  # a squadron says it is there this often; "last seen" is that fresh
STALE_AFTER_S = 3 * HEARTBEAT_S  # not seen for this long: shown as gone


def check_forgettable(
    name: str, entry: Mapping[str, Any] | None, now: float, *, force: bool
) -> None:
    """`hd fleet forget` is for a squadron gone for good: refused for one unknown, or seen
    within STALE_AFTER_S (it is up: its own `hd fleet leave` is the way), unless `force`."""
    if entry is None:
        raise FleetError(f"there is no squadron {name!r} in this fleet")
    ago = max(0.0, now - float(entry.get("seen") or 0))
    if ago < STALE_AFTER_S and not force:
        raise FleetError(
            f"{name} was seen {ago:.0f} s ago: it is up; run `hd fleet leave` there, "
            f"or `hd fleet forget {name} --force` if it is gone for good"
        )


def app_state(row: Mapping[str, Any]) -> dict[str, Any]:
    """What a squadron tells the fleet about one of its apps (a row of `hd status --json`)."""
    last = str(row.get("last_deploy") or "")
    if not row.get("ship"):
        health = "failed" if last.startswith("failed") else "none"
    else:
        health = "failed" if last.startswith("failed") else "healthy"
    return {
        "sha": row.get("sha"),
        "ship": row.get("ship"),
        "health": health,
        "last_deploy": last or None,
        "at": time.time(),
    }


def view(
    squadrons: Mapping[str, Mapping[str, Any]],
    apps: Iterable[tuple[str, str, Mapping[str, Any]]],
    now: float,
    rollouts: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """`{"squadrons": [{name, version, last_seen, seen_s_ago, state}], "apps": [{app,
    rollout, squadrons: {name: {sha, ship, health, rollout, …}}}]}`, sorted by name;
    `rollout` is the app's newest rollout (null: none), each squadron's part in it."""
    rows = []
    for name, entry in sorted(squadrons.items()):
        seen = float(entry.get("seen") or 0)
        ago = max(0.0, now - seen)
        rows.append(
            {
                "name": name,
                "version": entry.get("version"),
                "last_seen": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seen)),
                "seen_s_ago": round(ago, 1),
                "state": "up" if ago <= STALE_AFTER_S else "gone",
            }
        )
    table: dict[str, dict[str, Any]] = {}
    for squadron, app, state in apps:
        table.setdefault(app, {})[squadron] = {**state, "rollout": None}
    rollouts = rollouts or {}
    for app, shown in rollouts.items():
        for squadron, part in shown.get("squadrons", {}).items():
            if squadron in squadrons:  # a held squadron may have no state of that app yet
                table.setdefault(app, {}).setdefault(squadron, {"health": "none"})["rollout"] = part
    listed = [
        {"app": a, "rollout": rollouts.get(a), "squadrons": dict(sorted(on.items()))}
        for a, on in sorted(table.items())
    ]
    return {"squadrons": rows, "apps": listed}


def render(shown: Mapping[str, Any]) -> str:
    """The text of `hd fleet status`: squadrons, then apps × squadrons."""
    lines = ["SQUADRON      VERSION     LAST SEEN              STATE"]
    for sq in shown["squadrons"]:
        ago = f"{sq['last_seen']} ({sq['seen_s_ago']:.0f} s ago)"
        lines.append(f"{sq['name']:<13} {sq['version'] or '?':<11} {ago:<22} {sq['state']}")
    names = [sq["name"] for sq in shown["squadrons"]]
    width = max([3, *(len(row["app"]) for row in shown["apps"])])
    if shown["apps"]:
        lines += ["", f"{'APP':<{width}}" + "".join(f"  {n:<30}" for n in names).rstrip()]
    for row in shown["apps"]:
        cells = [_cell(row["squadrons"].get(n)) for n in names]
        lines.append(f"{row['app']:<{width}}" + "".join(f"  {c:<30}" for c in cells).rstrip())
    return "\n".join(lines)


def _cell(state: Mapping[str, Any] | None) -> str:
    if not state:
        return "-"
    cell = f"{state.get('sha') or '-'} {state.get('ship') or '-'} {state.get('health')}"
    return f"{cell} ({state['rollout']})" if state.get("rollout") else cell
