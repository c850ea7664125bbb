"""A trigger: something that asks for work (a push, a webhook, a CLI deploy, an HQ change).

Kept apart from the spool so that git's hooks can write one without loading the daemon's
event loop machinery: `write_incoming` is what bin/post-receive calls on every push.

One schema for every kind: a `TriggerKind`, the app it concerns (or none), and `data` whose
fields each kind names below; a ref that moved is always `ref`/`old`/`new` (a `RefUpdate`).
Triggers are made only by the typed constructors (`Trigger.push`, `Trigger.deploy`, …) or read
back by `Trigger.from_json`, which also reads the spool files of earlier versions.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from hyperdrive.errors import HyperdriveError, SpoolError
from hyperdrive.files import write_atomically
from hyperdrive.names import ZERO_SHA, check_ref, check_sha, sanitize_app_name

TRIGGER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_ZERO_SHAS = (ZERO_SHA, "0" * 64)  # the missing side of a ref, in SHA-1 and SHA-256 repos


class TriggerKind(StrEnum):
    """What a trigger asks for; the value is what a spool file says (`"kind": "push"`)."""

    PUSH = "push"  # git pushed a ref of an app's repo here (post-receive)
    HQ = "hq"  # git pushed a ref of the headquarters repo hosted here
    WEBHOOK = "webhook"  # a forge's push delivery, matched to the apps that follow it
    HQ_SYNC = "hq-sync"  # read HQ again: a forge's push to it, `hd headquarters sync`, includes
    DEPLOY = "deploy"  # `hd deploy`, `ssh … deploy`, or HQ changed what an app gets
    ROLLBACK = "rollback"
    RETIRE = "retire"
    ASSEMBLE = "assemble"  # with an app: build a ship, do not launch it; without: every hull
    LAUNCH = "launch"


REQUESTABLE = frozenset(
    {
        TriggerKind.DEPLOY,
        TriggerKind.ROLLBACK,
        TriggerKind.RETIRE,
        TriggerKind.ASSEMBLE,
        TriggerKind.LAUNCH,
        TriggerKind.HQ_SYNC,
    }
)
"""What an admiral may ask for through the admin API; pushes are said by git and forges."""


@dataclass(frozen=True)
class RefUpdate:
    """One ref moved by a push: `old` → `new`, either the zero sha when created or deleted."""

    ref: str
    old: str
    new: str

    def __post_init__(self) -> None:
        check_ref(self.ref)
        check_sha(self.old)
        check_sha(self.new)

    @property
    def deleted(self) -> bool:
        return self.new in _ZERO_SHAS

    @property
    def created(self) -> bool:
        return self.old in _ZERO_SHAS

    def to_json(self) -> dict[str, str]:
        return {"ref": self.ref, "old": self.old, "new": self.new}

    @classmethod
    def from_json(cls, obj: Any, where: str) -> RefUpdate:
        """Read `{ref, old, new}`; a SpoolError names `where` and what is wrong."""
        check_update(obj, where)
        return cls(obj["ref"], obj["old"], obj["new"])


def check_update(obj: Any, where: str) -> None:
    """What `RefUpdate.from_json` checks, without making the object (a trigger's own check)."""
    if not isinstance(obj, Mapping):
        raise SpoolError(f"{where} is not an object")
    if missing := [key for key in ("ref", "old", "new") if obj.get(key) is None]:
        raise SpoolError(f"{where} lacks {' and '.join(missing)}")
    try:
        check_ref(obj["ref"])
        check_sha(obj["old"])
        check_sha(obj["new"])
    except HyperdriveError as err:
        raise SpoolError(f"{where}: {err}") from err


@dataclass(frozen=True)
class Trigger:
    """Something that asks for work; checked when made, so a bad one never reaches the spool.

    `data` by kind (every field optional unless marked *):
      push: ref* old* new* admiral unfetched · hq: ref* old* new* admiral unfetched
            (unfetched: why this squadron could not get the pushed commits from the fleet)
      webhook: provider* repository ref old new (the first update) targets* {app: {ref old new}}
               deploys {app: deploy id}
      hq-sync: reason, and from a webhook provider repository ref old new
      deploy: sha admiral source ("cli" or "hq") fleet (bool) · rollback: admiral fleet
      retire: reason
      assemble: sha, or without an app fresh (bool) · launch: ship*
    """

    id: str
    kind: TriggerKind
    app: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    received: float = 0.0
    fingerprint: str = ""  # e.g. a hash of the webhook body: tells a replay from a clash

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not TRIGGER_ID.fullmatch(self.id):
            raise SpoolError(f"trigger has an invalid id: {self.id!r}")
        try:
            if type(self.kind) is not TriggerKind:  # the constructors pass the member itself
                object.__setattr__(self, "kind", TriggerKind(self.kind))
        except (ValueError, TypeError):
            known = ", ".join(TriggerKind)
            raise SpoolError(
                f"trigger {self.id} has the unknown kind {self.kind!r} (known: {known})"
            ) from None
        try:
            _check(self)
        except HyperdriveError as err:
            raise SpoolError(f"trigger {self.id} ({self.kind}): {err}") from err

    # -- the constructors: the only way triggers are made --
    @classmethod
    def push(cls, app: str, update: RefUpdate, admiral: str) -> Trigger:
        """git pushed `update` to the repo of `app` here (post-receive)."""
        data = {**update.to_json(), "admiral": admiral}
        return cls(new_trigger_id("push"), TriggerKind.PUSH, app, data, time.time())

    @classmethod
    def hq_push(cls, update: RefUpdate, admiral: str) -> Trigger:
        """git pushed `update` to the headquarters repo hosted here."""
        data = {**update.to_json(), "admiral": admiral}
        return cls(new_trigger_id("push"), TriggerKind.HQ, None, data, time.time())

    @classmethod
    def webhook(
        cls,
        delivery: str,
        *,
        provider: str,
        repository: str,
        targets: Mapping[str, RefUpdate],
        fingerprint: str,
        received: float,
    ) -> Trigger:
        """A forge's push delivery (its id is the trigger's): each app deploys the update it
        follows, under a deploy id of its own."""
        first = next(iter(targets.values()), None)
        data: dict[str, Any] = {"provider": provider, "repository": repository}
        data.update(first.to_json() if first else {})
        data["targets"] = {app: u.to_json() for app, u in targets.items()}
        data["deploys"] = {app: deploy_id(delivery, app) for app in targets}
        return cls(delivery, TriggerKind.WEBHOOK, None, data, received, fingerprint)

    @classmethod
    def hq_webhook(
        cls,
        delivery: str,
        *,
        provider: str,
        repository: str,
        update: RefUpdate,
        fingerprint: str,
        received: float,
    ) -> Trigger:
        """A forge's push delivery to the repo headquarters comes from."""
        data = {"reason": "webhook", "provider": provider, "repository": repository}
        data.update(update.to_json())
        return cls(delivery, TriggerKind.HQ_SYNC, None, data, received, fingerprint)

    @classmethod
    def hq_sync(cls, reason: str) -> Trigger:
        """Read HQ again (`hd headquarters sync`, a change to the includes)."""
        data = {"reason": reason}
        return cls(new_trigger_id("hq-sync"), TriggerKind.HQ_SYNC, None, data, time.time())

    @classmethod
    def deploy(
        cls,
        app: str,
        sha: str | None = None,
        admiral: str | None = None,
        *,
        source: str = "cli",
        tid: str | None = None,
        fleet: bool = False,
    ) -> Trigger:
        """Deploy `sha` (None: the tip of the deploy branch); source "hq" builds the same commit
        again because the orders changed. `tid` makes a replayed request one trigger; `fleet`
        asks every squadron of the fleet to do it (`hd deploy --fleet`)."""
        data = _given(sha=sha, admiral=admiral, source=source, fleet=fleet or None)
        tid = tid or new_trigger_id("deploy")
        return cls(tid, TriggerKind.DEPLOY, app, data, time.time())

    @classmethod
    def rollback(cls, app: str, admiral: str | None = None, *, fleet: bool = False) -> Trigger:
        data = _given(admiral=admiral, fleet=fleet or None)
        return cls(new_trigger_id("rollback"), TriggerKind.ROLLBACK, app, data, time.time())

    @classmethod
    def retire(cls, app: str, reason: str, *, tid: str | None = None) -> Trigger:
        tid = tid or new_trigger_id("retire")
        return cls(tid, TriggerKind.RETIRE, app, {"reason": reason}, time.time())

    @classmethod
    def assemble(
        cls, app: str | None = None, sha: str | None = None, fresh: bool = False
    ) -> Trigger:
        """With an app: build a ship of `sha` and do not launch it; without: every hull."""
        data = _given(sha=sha, fresh=fresh or None)
        return cls(new_trigger_id("assemble"), TriggerKind.ASSEMBLE, app, data, time.time())

    @classmethod
    def launch(cls, ship: str) -> Trigger:
        data = {"ship": ship}
        return cls(new_trigger_id("launch"), TriggerKind.LAUNCH, None, data, time.time())

    @classmethod
    def requested(cls, body: Any) -> Trigger:
        """What an admiral asked the admin API for (`{kind, app, data}`, see `request`), under
        a fresh id; only the REQUESTABLE kinds."""
        if not isinstance(body, Mapping):
            raise SpoolError("a trigger request is a JSON object")
        kind, app, data = body.get("kind"), body.get("app") or None, body.get("data") or {}
        if not isinstance(kind, str) or kind not in REQUESTABLE:
            allowed = ", ".join(sorted(REQUESTABLE))
            raise SpoolError(f"a {kind!r} trigger cannot be asked for: ask for {allowed}")
        return cls(new_trigger_id(str(kind)), TriggerKind(kind), app, data, time.time())

    def request(self) -> dict[str, Any]:
        """This trigger as the admin API is asked for it; the daemon gives it its id."""
        return {"kind": str(self.kind), "app": self.app, "data": dict(self.data)}

    # -- reading one --
    @property
    def update(self) -> RefUpdate | None:
        """The ref that moved (push, hq, a webhook's first, a webhook to HQ), else None."""
        return RefUpdate.from_json(self.data, "data") if "ref" in self.data else None

    @property
    def targets(self) -> dict[str, RefUpdate]:
        """A webhook's apps, each with the update it follows."""
        given = self.data.get("targets", {})
        return {app: RefUpdate.from_json(u, f"targets.{app}") for app, u in given.items()}

    @property
    def deploys(self) -> dict[str, str]:
        """A webhook's deploy id for each of its apps."""
        given = self.data.get("deploys", {})
        return {app: str(given.get(app) or deploy_id(self.id, app)) for app in self.targets}

    def text(self, key: str) -> str | None:
        """A text field of `data` (checked to be text when the trigger was made), or None."""
        value = self.data.get(key)
        return value if isinstance(value, str) else None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": str(self.kind),
            "app": self.app,
            "data": dict(self.data),
            "received": self.received,
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_json(cls, obj: Any) -> Trigger:
        """Validate untrusted JSON into a Trigger; raise SpoolError naming what is wrong.

        Spool files of earlier versions are read too: their webhook and hq-sync triggers said
        `before`/`after` where every trigger now says `old`/`new`.
        """
        if not isinstance(obj, dict):
            raise SpoolError("trigger is not a JSON object")
        tid, kind, data = obj.get("id", ""), obj.get("kind", ""), obj.get("data", {})
        if not isinstance(data, dict):
            raise SpoolError(f"trigger {tid!r}: data is not an object")
        received, fingerprint = obj.get("received", 0.0), obj.get("fingerprint", "")
        if not isinstance(received, int | float) or not isinstance(fingerprint, str):
            raise SpoolError(f"trigger {tid!r}: received or fingerprint has the wrong type")
        return cls(tid, kind, obj.get("app"), _upgrade(kind, data), float(received), fingerprint)


def _given(**fields: Any) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None}


UNSAFE_IN_ID = re.compile(r"[^A-Za-z0-9._:-]")


def deploy_id(trigger_id: str, app: str) -> str:
    """`<trigger id>:<app>`, kept inside the trigger id charset and length."""
    text = UNSAFE_IN_ID.sub("-", f"{trigger_id}:{app}")
    if not TRIGGER_ID.fullmatch(text):
        import hashlib  # noqa: PLC0415 - only for an over-long id; `hd` starts without it

        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        text = f"d-{digest}-{text[-100:]}"
    return text


# -- the old dialect --
def _renamed(update: Any) -> Any:
    """`before`/`after` (webhook triggers before one schema) as `old`/`new`."""
    if not isinstance(update, dict) or "new" in update or "after" not in update:
        return update
    moved = {k: v for k, v in update.items() if k not in ("before", "after")}
    return {**moved, "old": update.get("before", ZERO_SHA), "new": update["after"]}


def _upgrade(kind: Any, data: dict[str, Any]) -> dict[str, Any]:
    """A trigger's data as this version writes it, from what an earlier version wrote."""
    data = dict(_renamed(data))
    if kind == TriggerKind.WEBHOOK:
        targets = data.get("targets")
        if targets is None and isinstance(data.get("apps"), list):  # only the first update
            first = {k: data[k] for k in ("ref", "old", "new") if k in data}
            targets = dict.fromkeys(data["apps"], first)
        if isinstance(targets, dict):
            data = {**data, "targets": {a: _renamed(u) for a, u in targets.items()}}
        data.pop("apps", None)
    return data


# -- the schema, kind by kind --
ONE, NONE, ANY = "one", "none", "any"  # how many apps a kind concerns


def _check(trigger: Trigger) -> None:
    """Raise a HyperdriveError naming the first field of `trigger` its kind does not allow."""
    apps, check = SCHEMA[trigger.kind]
    if trigger.app is not None:
        sanitize_app_name(trigger.app)
    if apps == ONE and trigger.app is None:
        raise SpoolError("names no app")
    if apps == NONE and trigger.app is not None:
        raise SpoolError(f"concerns no app, not {trigger.app}")
    if not isinstance(trigger.data, Mapping):
        raise SpoolError("data is not an object")
    check(trigger.data)


def _text(data: Mapping[str, Any], *keys: str, required: bool = False) -> None:
    for key in keys:
        value = data.get(key)
        if (value is not None or required) and not isinstance(value, str):
            raise SpoolError(f"{key} is {'missing' if value is None else 'not text'}")


def _sha(data: Mapping[str, Any]) -> None:
    if data.get("sha") is not None:
        check_sha(data["sha"])


def _update(data: Mapping[str, Any], required: bool = True) -> None:
    if required or any(k in data for k in ("ref", "old", "new")):
        check_update(data, "the ref update")


def _pushed(data: Mapping[str, Any]) -> None:
    _update(data)
    _text(data, "admiral", "unfetched")


def _webhook(data: Mapping[str, Any]) -> None:
    _text(data, "provider", required=True)
    _text(data, "repository")
    _update(data, required=False)
    targets, deploys = data.get("targets"), data.get("deploys", {})
    if not isinstance(targets, Mapping) or not isinstance(deploys, Mapping):
        raise SpoolError("targets and deploys must be objects")
    for app, update in targets.items():
        sanitize_app_name(app)
        check_update(update, f"targets.{app}")
    for app, deploy in deploys.items():
        if not isinstance(deploy, str) or not TRIGGER_ID.fullmatch(deploy):
            raise SpoolError(f"deploys.{app} is not a deploy id: {deploy!r}")


def _hq_sync(data: Mapping[str, Any]) -> None:
    _update(data, required=False)
    _text(data, "reason", "provider", "repository")


def _deploy(data: Mapping[str, Any]) -> None:
    _sha(data)
    _rollback(data)
    if data.get("source", "cli") not in ("cli", "hq"):
        raise SpoolError(f"source is {data['source']!r}, not 'cli' or 'hq'")


def _rollback(data: Mapping[str, Any]) -> None:
    _text(data, "admiral")
    if not isinstance(data.get("fleet", False), bool):
        raise SpoolError("fleet is not true or false")


def _assemble(data: Mapping[str, Any]) -> None:
    _sha(data)
    if not isinstance(data.get("fresh", False), bool):
        raise SpoolError("fresh is not true or false")


SCHEMA: dict[TriggerKind, tuple[str, Callable[[Mapping[str, Any]], None]]] = {
    TriggerKind.PUSH: (ONE, _pushed),
    TriggerKind.HQ: (NONE, _pushed),
    TriggerKind.WEBHOOK: (NONE, _webhook),
    TriggerKind.HQ_SYNC: (NONE, _hq_sync),
    TriggerKind.DEPLOY: (ONE, _deploy),
    TriggerKind.ROLLBACK: (ONE, _rollback),
    TriggerKind.RETIRE: (ONE, lambda data: _text(data, "reason")),
    TriggerKind.ASSEMBLE: (ANY, _assemble),
    TriggerKind.LAUNCH: (NONE, lambda data: _text(data, "ship", required=True)),
}
"""Each kind: how many apps it concerns, and the check of its data."""


def new_trigger_id(prefix: str = "t") -> str:
    """A fresh id that sorts by time: `<prefix>-<ms hex>-<random>`."""
    return f"{prefix}-{int(time.time() * 1000):x}-{os.urandom(4).hex()}"


def write_incoming(root: Path, trigger: Trigger) -> Path:
    """Durably drop a trigger into `root/incoming/` from another process (e.g. post-receive)."""
    final = root / "incoming" / f"{trigger.id}.json"
    write_atomically(final, json.dumps(trigger.to_json()))
    return final
