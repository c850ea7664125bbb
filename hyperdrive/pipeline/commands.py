"""Commands: imperative requests the bus carries to exactly one handler."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hyperdrive.names import HEADQUARTERS
from hyperdrive.triggers import Trigger, TriggerKind


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
    preview_of: str | None = None  # routed to a preview of that app (pipeline/previews.py)


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
    return FROM_TRIGGER[trigger.kind](trigger)


def _hq(trigger: Trigger) -> list[Command]:
    update = trigger.update
    sha = update.new if update is not None and not update.deleted else None
    return [SyncHeadquarters(deploy=trigger.id, sha=sha)]


def _webhook(trigger: Trigger) -> list[Command]:
    """One Deploy per app, each of the ref and sha it matched (a delivery may move several);
    a deleted branch (matched only for an app's preview of it) retires that preview."""
    source, deploys = f"webhook:{trigger.text('provider') or '?'}", trigger.deploys
    return [
        Retire(deploy=deploys[app], app=app, reason=f"{update.ref} deleted", ref=update.ref)
        if update.deleted
        else Deploy(deploy=deploys[app], app=app, sha=update.new, ref=update.ref, source=source)
        for app, update in trigger.targets.items()
    ]


def _push(trigger: Trigger) -> list[Command]:
    """A pushed branch deploys; a deleted one retires the app if it is the branch it deploys."""
    update, app = trigger.update, _app(trigger)
    assert update is not None  # the schema requires one
    if update.deleted:
        reason = f"branch deleted: {update.ref}"
        return [Retire(deploy=trigger.id, app=app, reason=reason, ref=update.ref)]
    admiral = trigger.text("admiral")
    return [
        Deploy(
            deploy=trigger.id,
            app=app,
            sha=update.new,
            ref=update.ref,
            source="push",
            admiral=admiral,
        )
    ]


def _deploy(trigger: Trigger) -> list[Command]:
    source = "hq" if trigger.text("source") == "hq" else "cli"
    sha, admiral = trigger.text("sha"), trigger.text("admiral")
    return [Deploy(deploy=trigger.id, app=_app(trigger), sha=sha, admiral=admiral, source=source)]


def _assemble(trigger: Trigger) -> list[Command]:
    if trigger.app is None:
        return [AssembleHulls(deploy=trigger.id, fresh=trigger.data.get("fresh") is True)]
    return [Assemble(deploy=trigger.id, app=trigger.app, sha=trigger.text("sha"))]


def _rollback(trigger: Trigger) -> list[Command]:
    return [Rollback(deploy=trigger.id, app=_app(trigger))]


def _retire(trigger: Trigger) -> list[Command]:
    reason = trigger.text("reason") or ""
    return [Retire(deploy=trigger.id, app=_app(trigger), reason=reason)]


def _launch(trigger: Trigger) -> list[Command]:
    return [Launch(deploy=trigger.id, ship=str(trigger.text("ship")))]


def _app(trigger: Trigger) -> str:
    assert trigger.app is not None  # the schema requires one for this kind
    return trigger.app


FROM_TRIGGER: dict[TriggerKind, Callable[[Trigger], list[Command]]] = {
    TriggerKind.PUSH: _push,
    TriggerKind.HQ: _hq,
    TriggerKind.HQ_SYNC: _hq,
    TriggerKind.WEBHOOK: _webhook,
    TriggerKind.DEPLOY: _deploy,
    TriggerKind.ROLLBACK: _rollback,
    TriggerKind.RETIRE: _retire,
    TriggerKind.ASSEMBLE: _assemble,
    TriggerKind.LAUNCH: _launch,
}
"""Each kind of trigger to the commands it asks for."""
