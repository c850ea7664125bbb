"""The plan: what an HQ change does to the fleet, app by app, with a short reason each."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from hyperdrive.config import UNITS
from hyperdrive.errors import OrdersRejected
from hyperdrive.headquarters.checks import describe
from hyperdrive.headquarters.includes import merge_env
from hyperdrive.headquarters.orders import Orders
from hyperdrive.headquarters.reader import Headquarters, printable
from hyperdrive.names import is_app_name


@dataclass(frozen=True)
class Plan:
    """What an HQ change does to the fleet; apps with rejected orders keep their ship."""

    added: tuple[str, ...] = ()
    changed: dict[str, str] = field(default_factory=dict)
    removed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    rejected: dict[str, OrdersRejected] = field(default_factory=dict)
    running: frozenset[str] = frozenset()

    def lines(self) -> list[str]:
        """One line per app, in name order: `api: redeploy (PORT 3000→3001)`."""
        said = dict.fromkeys(self.added, "deploy")
        said |= {app: f"redeploy ({why})" for app, why in self.changed.items()}
        said |= dict.fromkeys(self.removed, "retire")
        said |= dict.fromkeys(self.unchanged, "unchanged")
        for app, err in self.rejected.items():
            keeps = "keeps its current ship" if app in self.running else "not deployed"
            said[app] = f"rejected, {keeps} ({describe(err)})"
        return [f"{printable(app)}: {said[app]}" for app in sorted(said)]


def plan(
    old: Headquarters | None,
    new: Headquarters,
    includes_old: Mapping[str, str],
    includes_new: Mapping[str, str],
) -> Plan:
    """Diff two HQs (old None = first HQ) with the env each ship would get.

    An app disappears (retire) only when its folder is gone; rejected orders are not a
    removal. Apps the old HQ knew, ordered or rejected, may have a ship; others have none.
    """
    before = old or Headquarters()
    known = set(before.apps) | {app for app in before.rejected if is_app_name(app)}
    changed: dict[str, str] = {}
    unchanged: list[str] = []
    for app in sorted(set(new.apps) & set(before.apps)):
        was = _effective(before.apps[app], includes_old)
        now = _effective(new.apps[app], includes_new)
        if was == now:
            unchanged.append(app)
        else:
            changed[app] = _reason(was, now)
    return Plan(
        added=tuple(sorted(set(new.apps) - set(before.apps))),
        changed=changed,
        removed=tuple(sorted(known - set(new.apps) - set(new.rejected))),
        unchanged=tuple(unchanged),
        rejected=dict(sorted(new.rejected.items())),
        running=frozenset(known),
    )


def _effective(orders: Orders, includes: Mapping[str, str]) -> Orders:
    """Orders as the ship sees them: env merged over the squadron-wide includes."""
    return replace(orders, env=merge_env(includes, orders.env))


def _reason(was: Orders, now: Orders, limit: int = 3) -> str:
    """A short human reason for a redeploy; env values other than ports are never shown."""
    reasons = [*_field_reasons(was, now), *_env_reasons(was.env, now.env)]
    if len(reasons) > limit:
        reasons = [*reasons[:limit], f"{len(reasons) - limit} more"]
    return ", ".join(reasons) or "orders changed"


def _field_reasons(was: Orders, now: Orders) -> list[str]:
    """Reasons from everything but env; URLs may carry credentials, so they are not shown."""
    reasons: list[str] = []
    if was.autodeploy_url != now.autodeploy_url:
        reasons.append("autodeploy URL changed")
    pairs = [
        ("branch", was.branch or "(default)", now.branch or "(default)"),
        ("hull", was.hull, now.hull),
        ("healthcheck", was.healthcheck_path, now.healthcheck_path),
        ("healthcheck", f"{was.healthcheck_seconds:g}s", f"{now.healthcheck_seconds:g}s"),
        ("memory", _size(was.memory_bytes), _size(now.memory_bytes)),
        ("cpus", _num(was.cpus), _num(now.cpus)),
    ]
    reasons += [f"{name} {a}→{b}" for name, a, b in pairs if a != b]
    if was.servernames != now.servernames:
        gone = [f"-{h}" for h in was.servernames if h not in now.servernames]
        reasons.append(
            " ".join(
                [
                    "servername",
                    *[f"+{h}" for h in now.servernames if h not in was.servernames],
                    *gone,
                ]
            )
        )
    return reasons


def _env_reasons(was: Mapping[str, str], now: Mapping[str, str]) -> list[str]:
    """Env differences: ports with their values, every other key by name only."""
    reasons: list[str] = []
    for key in sorted(set(was) | set(now)):
        a, b = was.get(key), now.get(key)
        if a == b:
            continue
        if key in ("PORT", "PUBLISH_PORT"):
            reasons.append(f"{key} {a or '(none)'}→{b or '(none)'}")
        else:
            reasons.append(
                f"{key} {'added' if a is None else 'removed' if b is None else 'changed'}"
            )
    return reasons


def _size(value: int | None) -> str:
    """Bytes in the largest whole unit: 268435456 → 256M."""
    if value is None:
        return "(none)"
    for unit in "TGMK":
        if value % UNITS[unit.lower()] == 0:
            return f"{value // UNITS[unit.lower()]}{unit}"
    return str(value)


def _num(value: float | None) -> str:
    """A number without a useless `.0`."""
    return "(none)" if value is None else f"{value:g}"
