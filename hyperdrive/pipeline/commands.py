"""Commands: imperative requests the bus carries to exactly one handler."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hyperdrive.names import HEADQUARTERS, ZERO_SHA
from hyperdrive.triggers import Trigger


@dataclass(frozen=True, kw_only=True)
class Command:
    """Every command carries the deploy id its events are filed under."""

    deploy: str

    @property
    def lane(self) -> str | None:
        """Commands with the same lane run one at a time; None runs freely."""
        return None


@dataclass(frozen=True, kw_only=True)
class AppCommand(Command):
    app: str

    @property
    def lane(self) -> str | None:
        return self.app


@dataclass(frozen=True, kw_only=True)
class Deploy(AppCommand):
    """Build `sha` (None: the tip of the app's deploy branch) and put it in service."""

    sha: str | None = None
    ref: str | None = None
    source: str = "cli"
    admiral: str | None = None


@dataclass(frozen=True, kw_only=True)
class Retire(AppCommand):
    """Take the app out of service: routes removed, ships stopped.

    With `ref` set (a deleted branch), only if that is the branch the app deploys.
    """

    reason: str = ""
    ref: str | None = None


@dataclass(frozen=True, kw_only=True)
class Rollback(AppCommand):
    """Swap back to the newest kept ship that was healthy."""


@dataclass(frozen=True, kw_only=True)
class Assemble(AppCommand):
    """Build a ship for `sha` but do not launch it."""

    sha: str | None = None


@dataclass(frozen=True, kw_only=True)
class Launch(Command):
    """Put an already assembled ship in service, in its app's lane (the inbox fills `app` in
    from the records: the trigger names only the ship)."""

    ship: str
    app: str | None = None

    @property
    def lane(self) -> str | None:
        return self.app


@dataclass(frozen=True, kw_only=True)
class SyncHeadquarters(Command):
    """HQ changed (a push, a webhook, `hd headquarters sync`): read it and reconcile."""

    sha: str | None = None

    @property
    def lane(self) -> str | None:
        return HEADQUARTERS


@dataclass(frozen=True, kw_only=True)
class AssembleHulls(Command):
    """`hd assemble` with no app: build a new version of every hull (`fresh`: Debian's from
    the mirror, not from the kept tree)."""

    fresh: bool = False

    @property
    def lane(self) -> str | None:
        return "hulls"


def from_trigger(trigger: Trigger) -> list[Command]:
    """Turn a durable trigger into the commands it asks for (an entry point holds no logic)."""
    if trigger.kind in ("hq", "hq-sync"):
        return [_hq(trigger)]
    if trigger.kind == "webhook":
        return _webhook(trigger)
    if trigger.kind == "assemble" and not trigger.app:
        return [AssembleHulls(deploy=trigger.id, fresh=trigger.data.get("fresh") is True)]
    if trigger.kind == "launch" and isinstance(trigger.data.get("ship"), str):
        return [Launch(deploy=trigger.id, ship=trigger.data["ship"])]
    build = APP_TRIGGERS.get(trigger.kind)
    return [build(trigger, trigger.app)] if build and trigger.app else []


def _hq(trigger: Trigger) -> Command:
    new = trigger.data.get("new") or trigger.data.get("after")
    return SyncHeadquarters(deploy=trigger.id, sha=new if new != ZERO_SHA else None)


def _webhook(trigger: Trigger) -> list[Command]:
    """One Deploy per app, each of the ref and sha it matched (a delivery may move several)."""
    data = trigger.data
    deploys, source = data.get("deploys", {}), f"webhook:{data.get('provider', '?')}"
    targets = data.get("targets", {})
    return [
        Deploy(
            deploy=str(deploys.get(app, f"{trigger.id}:{app}")),
            app=app,
            sha=targets.get(app, data).get("after"),
            ref=targets.get(app, data).get("ref"),
            source=source,
        )
        for app in data.get("apps", [])
    ]


def _cli_deploy(trigger: Trigger, app: str) -> Command:
    data = trigger.data
    source = "hq" if data.get("source") == "hq" else "cli"
    return Deploy(
        deploy=trigger.id, app=app, sha=data.get("sha"), admiral=data.get("admiral"), source=source
    )


def _assemble(trigger: Trigger, app: str) -> Command:
    return Assemble(deploy=trigger.id, app=app, sha=trigger.data.get("sha"))


def _rollback(trigger: Trigger, app: str) -> Command:
    return Rollback(deploy=trigger.id, app=app)


def _retire(trigger: Trigger, app: str) -> Command:
    return Retire(deploy=trigger.id, app=app, reason=str(trigger.data.get("reason", "")))


def _push(trigger: Trigger, app: str) -> Command:
    data = trigger.data
    if data.get("new") == ZERO_SHA:
        ref = data.get("ref")
        return Retire(deploy=trigger.id, app=app, reason=f"branch deleted: {ref}", ref=ref)
    return Deploy(
        deploy=trigger.id,
        app=app,
        sha=data.get("new"),
        ref=data.get("ref"),
        source="push",
        admiral=data.get("admiral"),
    )


APP_TRIGGERS: dict[str, Callable[[Trigger, str], Command]] = {
    "push": _push,
    "deploy": _cli_deploy,
    "rollback": _rollback,
    "retire": _retire,
    "assemble": _assemble,
}
