"""Dashboard sessions: an admiral token exchanged once for a session id, and CSRF tokens.

Sessions live in memory (a restart of the daemon signs everyone out) and keep only the
token's digest, never the token: each request checks that digest is still in tokens.json, so
revoking the token ends its sessions at once. Sign-in refusals are events, counted per source
address (hooks/refusals.py), so a flood of bad tokens cannot wash out the event history.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from hyperdrive.api import token_digest
from hyperdrive.hooks.refusals import RefusalTally
from hyperdrive.pipeline import events as ev

IDLE_S = 8 * 3600.0  # a session unused this long ends
MAX_AGE_S = 7 * 86400.0  # and every session ends after this, used or not
MAX_SESSIONS = 1000  # the oldest goes first when more are opened
MAX_TOKEN = 200  # characters: `hd token` makes 43; anything longer is not one


class Tokens(Protocol):
    """What sessions ask of the token store (api.TokenStore)."""

    def admiral_of_digest(self, digest: str) -> str | None: ...


@dataclass
class Session:
    """One signed-in browser: whose it is, its CSRF token, and when it was made and used."""

    id: str
    admiral: str
    digest: str
    csrf: str
    created: float
    seen: float


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def same(given: str, expected: str) -> bool:
    """Constant-time compare of a submitted token with the one we hold."""
    return bool(given) and hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode())


class Sessions:
    """Open, look up and end sessions; a session whose token was revoked is gone."""

    def __init__(
        self,
        tokens: Tokens,
        *,
        clock: Callable[[], float] = time.time,
        idle: float = IDLE_S,
        max_age: float = MAX_AGE_S,
        limit: int = MAX_SESSIONS,
    ) -> None:
        self.tokens = tokens
        self._clock = clock
        self.idle, self.max_age, self.limit = idle, max_age, limit
        self._open: OrderedDict[str, Session] = OrderedDict()

    def sign_in(self, token: str) -> Session | None:
        """A new session for a token in force, else None."""
        token = token.strip()
        if not token or len(token) > MAX_TOKEN:
            return None
        digest = token_digest(token)
        admiral = self.tokens.admiral_of_digest(digest)
        if admiral is None:
            return None
        now = self._clock()
        session = Session(new_secret(), admiral, digest, new_secret(), now, now)
        while len(self._open) >= self.limit:
            self._open.popitem(last=False)
        self._open[session.id] = session
        return session

    def get(self, sid: str | None) -> Session | None:
        """The live session of this id; expired or revoked ones are dropped on the way."""
        session = self._open.get(sid or "")
        if session is None:
            return None
        now = self._clock()
        expired = now - session.seen > self.idle or now - session.created > self.max_age
        if expired or self.tokens.admiral_of_digest(session.digest) is None:
            del self._open[session.id]
            return None
        session.seen = now
        return session

    def sign_out(self, sid: str) -> Session | None:
        return self._open.pop(sid, None)

    def __len__(self) -> int:
        return len(self._open)


class SignInRefusals:
    """SignInRefused events: the first from an address in an interval at once, the rest as
    one summary later (the webhook receiver's RefusalTally)."""

    def __init__(
        self, emit: Callable[[Mapping[str, Any]], object], tally: RefusalTally | None = None
    ) -> None:
        self._emit = emit
        self.tally = tally or RefusalTally()

    def __call__(self, source: str, why: str) -> None:
        write, summaries = self.tally.refuse(source, 401)
        for burst in summaries:
            said = f"dashboard sign-in: {burst.message}"
            summary = ev.SignInRefused(source=burst.source, more=burst.more, message=said)
            self._emit(summary.record())
        if write:
            refused = ev.SignInRefused(source=source, message=f"dashboard sign-in: {why}")
            self._emit(refused.record())
