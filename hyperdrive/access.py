"""Who may do what over SSH: admirals everything, captains only their own apps.

A key in HQ's `authorized_keys/` (or the bootstrap file) is an admiral; a key in HQ's
`<app>/captains/` is a captain of that app (and of every other app that lists it). This is the
one place that decides; gitserver and admiral commands ask it before they act. A verb missing
from CAPTAIN_RIGHTS is an admiral's alone, so a new command is refused to captains until
someone decides otherwise here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from hyperdrive.errors import HyperdriveError
from hyperdrive.names import HEADQUARTERS
from hyperdrive.pipeline.events import AccessRefused


class Scope(Enum):
    """What a captain may do with a verb."""

    OWN_APP = "own app"  # names one app, which must be the captain's
    OWN_APPS = "own apps"  # shows the squadron cut down to the captain's apps


# The rights table (README "Admirals and captains" says the same for people).
CAPTAIN_RIGHTS: dict[str, Scope] = {
    "push": Scope.OWN_APP,  # git-receive-pack
    "fetch": Scope.OWN_APP,  # git-upload-pack (clone, fetch, ls-remote)
    "archive": Scope.OWN_APP,  # git-upload-archive
    "deploy": Scope.OWN_APP,
    "rollback": Scope.OWN_APP,
    "logs": Scope.OWN_APP,  # without an app it is the squadron's log: admirals only
    "enter": Scope.OWN_APP,
    "run": Scope.OWN_APP,  # a one-off ship of the app
    "status": Scope.OWN_APPS,
    "ps": Scope.OWN_APPS,  # the captain's apps' processes only
}
# Decided to be admirals' alone should they ever be served over SSH (they change the squadron);
# anything in neither table is refused to captains too.
ADMIRALS_ONLY = frozenset({"assemble", "launch", "headquarters", "token", "doctor", "retire"})
BURST = 20  # AccessRefused events written per captain an interval; the rest are summarised
INTERVAL_S = 60.0
GIT_ASKS = {"receive-pack": "push", "upload-pack": "fetch", "upload-archive": "archive"}
SAID = {"logs": "read the logs of", "rollback": "roll back", "archive": "fetch an archive of"}


@dataclass(frozen=True)
class Identity:
    """Who a logged-in key is: an admiral, or a captain of `apps`."""

    name: str
    admiral: bool = True
    apps: frozenset[str] = frozenset()

    @classmethod
    def captain(cls, name: str, apps: frozenset[str] | set[str]) -> Identity:
        return cls(name, admiral=False, apps=frozenset(apps))

    @property
    def who(self) -> str:
        """The name triggers and events carry: a captain is marked as one."""
        return self.name if self.admiral else f"captain:{self.name}"

    def commands(self, app: str) -> bool:
        """Whether this key has every right over `app`."""
        return self.admiral or app in self.apps


class NotAllowed(HyperdriveError):
    """A captain asked for what is not theirs; the message is the one line the client sees."""

    def __init__(self, identity: Identity, asked: str, app: str | None, why: str) -> None:
        if app:
            what = f"{SAID.get(asked, asked)} {app!r}"
        else:
            what = "read the squadron's logs" if asked == "logs" else f"run {asked!r}"
        super().__init__(f"captain {identity.name!r} may not {what}: {why}")
        self.identity, self.asked, self.app = identity, asked, app

    def event(self) -> AccessRefused:
        """The event of this refusal: who, what and which app (never the key)."""
        return AccessRefused(
            captain=self.identity.name, asked=self.asked, app=self.app, message=str(self)
        )


@dataclass
class _Window:
    started: float
    written: int = 0
    more: int = 0  # refusals counted, not written
    last: NotAllowed | None = None


class Refusals:
    """AccessRefused events, at most `burst` per captain an interval: the rest are counted and
    written as one summary (`more`) once that captain's interval is over, at the next refusal
    (no timer). A captain's script cannot wash out the event history; windows are per captain,
    so as many as HQ names."""

    def __init__(
        self,
        append: Callable[[Mapping[str, Any]], object],
        burst: int = BURST,
        interval: float = INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.append, self.burst, self.interval, self._clock = append, burst, interval, clock
        self._windows: dict[str, _Window] = {}
        self.refused = 0  # every refusal since start

    def __call__(self, err: NotAllowed) -> None:
        now = self._clock()
        self.refused += 1
        self._expire(now)
        window = self._windows.setdefault(err.identity.name, _Window(now))
        if window.written < self.burst:
            window.written += 1
            self.append(err.event().record())
        else:
            window.more, window.last = window.more + 1, err

    def _expire(self, now: float) -> None:
        for name, window in list(self._windows.items()):
            if now - window.started < self.interval:
                continue
            del self._windows[name]
            if window.last is not None:
                self.append(self._summary(window, window.last).record())

    def _summary(self, window: _Window, last: NotAllowed) -> AccessRefused:
        times = "refusal" if window.more == 1 else "refusals"
        said = f"{window.more} more {times} in {self.interval:g} s, the last: {last}"
        return replace(
            last.event(), more=window.more, message=f"captain {last.identity.name!r}: {said}"
        )


def check(identity: Identity, asked: str, app: str | None) -> None:
    """Raise NotAllowed unless `identity` may do `asked` (a verb of CAPTAIN_RIGHTS, or any
    other command) to `app` (None: the command names no app)."""
    if identity.admiral:
        return
    scope = CAPTAIN_RIGHTS.get(asked)
    if scope is None:
        raise NotAllowed(identity, asked, None, "admirals only")
    if scope is Scope.OWN_APPS:
        return
    if app is None:
        mine = " | ".join(f"{asked} {app}" for app in sorted(identity.apps)) or "none"
        raise NotAllowed(identity, asked, None, f"name your app ({mine})")
    if app == HEADQUARTERS:
        raise NotAllowed(identity, asked, app, "headquarters is for admirals only")
    if app not in identity.apps:
        raise NotAllowed(identity, asked, app, f"captain of {_listed(identity.apps)} only")


def check_git(identity: Identity, service: str, app: str) -> None:
    """`check` for a git service (receive-pack, upload-pack, upload-archive) of repo `app`."""
    check(identity, GIT_ASKS.get(service, service), app)


def _listed(apps: frozenset[str]) -> str:
    return ", ".join(repr(app) for app in sorted(apps)) or "no app"
