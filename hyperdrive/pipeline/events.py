"""Events: past-tense facts. Each becomes one line of events.jsonl named after its class."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Protocol


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class Event:
    """The contract's common fields; subclasses add their own."""

    app: str | None = None
    sha: str | None = None
    ship: str | None = None
    deploy: str | None = None
    ms: int | None = None
    message: str | None = None

    @property
    def name(self) -> str:
        return type(self).__name__

    # repr, == and hash as dataclasses write them, but one method each for all ~70 classes:
    # generated per class they were ~0.3 MB of every daemon (eq=False, repr=False above)
    def __repr__(self) -> str:
        shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in _field_names(type(self)))
        return f"{type(self).__qualname__}({shown})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in _field_names(type(self)))

    def record(self) -> dict[str, Any]:
        """The event-log record: its set fields, shallow (every field is text, a number or a
        tuple of text), as `asdict`'s deep copy cost a webhook delivery ~10 µs."""
        record: dict[str, Any] = {"event": self.name}
        for name in _field_names(type(self)):
            if (value := getattr(self, name)) is not None:
                record[name] = value
        return record


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    """An event class's field names in declaration order, looked up once per class."""
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


class Emitter(Protocol):
    """Whatever events are told to: the bus, a deploy's context, a test's list."""

    def emit(self, event: Event) -> None: ...


# -- daemon and inbox --
@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class DaemonStarted(Event):
    version: str = ""


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class DaemonStopping(Event):
    pass


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class TriggerRejected(Event):
    """A spool file that is not a trigger was quarantined to spool/rejected/."""

    file: str = ""


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class TriggerIgnored(Event):
    kind: str = ""


# -- a deploy, stage by stage --
@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class PushReceived(Event):
    ref: str | None = None
    admiral: str | None = None


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class DeployQueued(Event):
    source: str | None = None
    ref: str | None = None  # the pushed ref, when a push or webhook asked


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class DeployStarted(Event):
    pass


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class StageFinished(Event):
    stage: str = ""


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class BuildOutput(Event):
    """One line a build or the app printed, for people following a deploy."""

    stream: str = "build"


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class ShipAssembled(Event):
    pass


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class ShipBuilt(Event):
    pass


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class BuildFailed(Event):
    log: str | None = None


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class ReleaseFinished(Event):
    """The Procfile's `release:` exited 0 in the new ship (before its health check)."""


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class ReleaseFailed(Event):
    log: str | None = None


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class ShipStarted(Event):
    pass


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class ShipHealthy(Event):
    pass


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class HealthCheckFailed(Event):
    pass


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class TrafficSwapped(Event):
    previous: str | None = None


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class ShipDrained(Event):
    pass


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class ShipRetired(Event):
    pass


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class ShipDestroyed(Event):
    pass


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class DeployFinished(Event):
    url: str | None = None


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class DeployFailed(Event):
    stage: str | None = None
    log: str | None = None


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class DeploySuperseded(Event):
    by: str | None = None


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class RolledBack(Event):
    """Traffic went back to `ship`; from the guard, with its count of the new ship's answers."""

    requests: int | None = None
    errors: int | None = None  # of them 5xx
    percent: float | None = None
    failed_ship: str | None = None


# -- the processes of live ships (pipeline/conductor.py) --
@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class ProcessExited(Event):
    """A supervised process exited (its supervisor restarts it); message: its last lines."""

    process: str = ""
    code: int | None = None
    restarts: int = 0


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class ProcessCrashLooped(Event):
    process: str = ""


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class CronRan(Event):
    job: str = ""
    schedule: str = ""
    code: int | None = None  # None: killed at its limit, or could not start


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class CronSkipped(Event):
    job: str = ""


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class NginxConfigRejected(Event):
    pass


# -- healing: what broke around the daemon, and what it did about it --
@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class NginxRestarted(Event):
    """Our nginx master died (killed, OOM); a new one serves the config in force."""

    pid: int | None = None


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class TrafficTableRestored(Event):
    """Someone deleted or flushed our nft table; it was made again from the records."""

    cause: str = ""


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class ShipDied(Event):
    """A live ship stopped without us (lxc-stop -k, its init gone, the OOM killer)."""

    state: str = ""


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class ShipRevived(Event):
    """A live ship that died runs again (restarted, or the app rolled back to a kept ship)."""

    restarts: int | None = None


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class ShipCrashLooping(Event):
    """A live ship keeps dying: the next restart waits, longer each time."""

    restarts: int | None = None
    wait_s: float | None = None


# -- hulls --
@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class HullBuildStarted(Event):
    hull: str | None = None


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class HullAssembled(Event):
    hull: str | None = None


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class HullRetired(Event):
    hull: str | None = None


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class HullBuildProgress(Event):
    """A step of a hull build, for progress bars: `percent` done, `step` under way."""

    hull: str | None = None
    percent: int = 0
    step: str = ""


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class HullBuildFailed(Event):
    hull: str | None = None
    log: str | None = None


# -- headquarters --
@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class HeadquartersSynced(Event):
    pass


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class HeadquartersSyncFailed(Event):
    pass


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class OrdersChanged(Event):
    pass


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class OrdersRejected(Event):
    file: str | None = None
    line: int | None = None


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class AppOrdered(Event):
    pass


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class AppRetired(Event):
    pass


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class AdmiralsChanged(Event):
    admirals: tuple[str, ...] = ()
    captains: tuple[str, ...] | None = None  # `app/name`, when HQ was read
    file: str | None = None  # set when HYPERDRIVE_ADMIRAL_KEYS changed
    keys: int | None = None
    fingerprints: tuple[str, ...] | None = None


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class AccessRefused(Event):
    """A captain asked over SSH for what is not theirs (`asked`: push, deploy, logs, …)."""

    captain: str = ""
    asked: str = ""
    more: int | None = None  # a summary: this many more of the same since the first


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class AdmiralKeysRejected(Event):
    """A line of HYPERDRIVE_ADMIRAL_KEYS that was not loaded (the message never quotes it)."""

    file: str = ""


# -- webhooks --
@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class WebhookEvent(Event):
    """What became of a delivery: the forge that sent it, and its spool id once it has one."""

    provider: str = ""
    delivery: str | None = None


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class WebhookReceived(WebhookEvent):
    """A push delivery is durable: one per app it deploys (`deploy`), or one for HQ."""


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class WebhookRedelivered(WebhookEvent):
    """The same delivery id and body again: answered `duplicate`, started nothing."""


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class WebhookIgnored(WebhookEvent):
    """A delivery that asks for nothing (another event, a deleted branch, no app follows it)."""


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class WebhookPinged(WebhookEvent):
    pass


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class WebhookRejected(WebhookEvent):
    """A delivery refused with HTTP `status`; the message is the reason the sender was given.
    One per source address per interval: `more` counts the refusals a summary stands for."""

    status: int = 400
    source: str | None = None
    more: int | None = None


# -- the dashboard (hyperdrive/web) --
@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class SignedIn(Event):
    """An admiral exchanged a token for a dashboard session (the token is never written)."""

    admiral: str = ""
    source: str | None = None


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class SignedOut(Event):
    admiral: str = ""


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class SignInRefused(Event):
    """A dashboard sign-in with a wrong or revoked token. One per source address per
    interval: `more` counts the refusals a summary stands for."""

    source: str | None = None
    more: int | None = None


# -- outbound deliveries: commit statuses and notify POSTs (hyperdrive/outbound) --
@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class DeliverySent(Event):
    pass


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class DeliveryDeferred(Event):
    """A try failed (5xx, no answer): tried again after the backoff."""


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class DeliveryAbandoned(Event):
    """Not sent: refused for good, out of tries, or no token or secret is kept."""


# -- a fleet's rollout in waves (hyperdrive/pipeline/rollout.py) --
@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class RolloutWaiting(Event):
    """This squadron's deploy waits for its wave: the squadrons of earlier waves first."""

    wave: int = 0
    waves: int = 0


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class RolloutWaveOpened(Event):
    """Every squadron of the earlier waves is healthy: this squadron deploys now."""

    wave: int = 0
    waves: int = 0


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class RolloutStopped(Event):
    """This squadron's part of a rollout failed: the later waves do not deploy."""

    wave: int = 0
    waves: int = 0


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class RolloutHeld(Event):
    """An outcome: the rollout stopped before this squadron's wave; its old ship serves."""

    wave: int = 0
    waves: int = 0


# -- certificates (https.py) --
@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class CertificateEvent(Event):
    """A name's certificate: who issued it and until when (ISO 8601, UTC)."""

    host: str = ""
    expires: str | None = None
    issuer: str | None = None


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class CertificateIssued(CertificateEvent):
    pass


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class CertificateRenewed(CertificateEvent):
    pass


@dataclass(frozen=True, kw_only=True, repr=False, eq=False)
class CertificateFailed(CertificateEvent):
    """The ACME server's error in `message`; `retry` is when it is tried again (ISO 8601)."""

    retry: str | None = None
