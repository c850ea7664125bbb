"""The courier: deploy outcomes (events) become journalled deliveries, sent by a background task
that retries with backoff. An event handler only journals (in a thread) and wakes the sender;
nothing here is awaited by a deploy.

Each delivery carries the event log's masking (hyperdrive/masking.py) on its messages and no env
values; the forge token and the notify secret are read from `$VAR/private_keys` when sent.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from hyperdrive.errors import HyperdriveError
from hyperdrive.headquarters.orders import Orders
from hyperdrive.outbound import forges, keys
from hyperdrive.outbound.journal import NOTIFY, STATUS, Delivery, DeliveryJournal
from hyperdrive.outbound.signing import signed_headers
from hyperdrive.pipeline import events as ev
from hyperdrive.pipeline.ports import Clock

log = logging.getLogger(__name__)

BACKOFF_BASE_S, BACKOFF_CAP_S, MAX_ATTEMPTS = 1.0, 600.0, 12  # ≈ 1 h of retries in all
SEND_TIMEOUT_S = 10.0
PARALLEL = 4
FINAL = frozenset({400, 401, 403, 404, 405, 410, 422})  # a retry cannot help these
OUTCOMES = {
    "DeployQueued": ("deploy.queued", forges.PENDING),
    "DeployFinished": ("deploy.finished", forges.SUCCESS),
    "DeployFailed": ("deploy.failed", forges.FAILURE),
    "DeploySuperseded": ("deploy.superseded", forges.CANCELED),
}


def backoff(attempts: int) -> float:
    """Seconds before try number `attempts + 1`: 1, 2, 4, … capped at 10 minutes."""
    return float(min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** max(0, attempts - 1)))


@dataclass(frozen=True)
class Request:
    """What goes over the wire, secrets included: made at send time, never journalled."""

    url: str
    body: bytes
    headers: Mapping[str, str]


Send = Callable[[Request], Awaitable[int]]  # the HTTP status; raises on no answer
Followed = Callable[[str, Orders], Awaitable[str]]


async def http_send(request: Request) -> int:
    """POST with aiohttp, bounded by SEND_TIMEOUT_S (a forge that hangs is a failed try)."""
    timeout = aiohttp.ClientTimeout(total=SEND_TIMEOUT_S)
    headers = {"Content-Type": "application/json", "User-Agent": "hyperdrive", **request.headers}
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(request.url, data=request.body, headers=headers) as response,
    ):
        await response.read()
        return response.status


@dataclass(frozen=True)
class Links:
    """Where a status links to: the app (success) and the deploy's page on the dashboard
    (otherwise), on the daemon's API port."""

    domain: str
    http_port: int
    api_port: int

    def deploy(self, app: str, deploy: str) -> str:
        return f"http://{self._host()}:{self.api_port}/apps/{app}/deploys/{deploy}"

    def _host(self) -> str:
        return self.domain or socket.gethostname()


@dataclass(kw_only=True)
class Courier:
    """Deliveries from deploy events, through the journal, to the forges and notify URLs."""

    journal: DeliveryJournal
    private_keys: Path
    orders: Callable[[str], Orders]
    owner: Callable[[str], str]  # whose token and secret: a preview's app, else the app itself
    mask: Callable[[str], str]
    links: Links
    clock: Clock
    emit: Callable[[ev.Event], None]
    send: Send = http_send
    followed: Followed | None = None  # the branch an app deploys (Planner.branch)
    _shas: dict[str, str] = field(default_factory=dict)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _sending: set[str] = field(default_factory=set)  # chains with a delivery on the wire
    _slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(PARALLEL))
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    # -- from events to the journal --
    async def on_event(self, event: ev.Event) -> None:
        """An outcome of a deploy: journal its status and notify deliveries, wake the sender."""
        if event.app is None or event.deploy is None or event.name not in OUTCOMES:
            return
        orders = self.orders(event.app)
        if isinstance(event, ev.DeployQueued) and not await self._deploys(event, orders):
            return  # a push of a branch that is not deployed: nothing to tell
        sha = event.sha or self._shas.get(event.deploy)
        if event.sha and event.name == "DeployQueued":
            self._shas[event.deploy] = event.sha
        elif event.name != "DeployQueued":
            self._shas.pop(event.deploy, None)
        made = [*self._statuses(event, orders, sha), *self._notifies(event, orders, sha)]
        async with self._lock:
            for delivery in made:
                await asyncio.to_thread(self.journal.put, delivery)
        if made:
            self._wake.set()

    async def _deploys(self, event: ev.DeployQueued, orders: Orders) -> bool:
        """Whether a queued push deploys: its ref is the branch (or tag) its app follows, or the
        app is a preview. Anything unsure counts as deploying."""
        if event.ref is None or self.followed is None or event.app is None:
            return True
        if not (orders.forge or orders.notify) or self.owner(event.app) != event.app:
            return True
        try:
            branch = await self.followed(event.app, orders)
        except HyperdriveError:
            return True
        return event.ref in (f"refs/heads/{branch}", f"refs/tags/{branch}")

    def _statuses(self, event: ev.Event, orders: Orders, sha: str | None) -> list[Delivery]:
        forge = orders.forge
        if forge is None or sha is None or event.app is None or event.deploy is None:
            return []
        _, state = OUTCOMES[event.name]
        url = getattr(event, "url", None) if state == forges.SUCCESS else None
        status = forges.Status(
            sha=sha,
            state=state,
            target_url=url or self.links.deploy(event.app, event.deploy),
            description=self.mask(self._said(event, state)),
            context=f"hyperdrive/{event.app}",
        )
        target, body = forges.status_request(forge, status)
        return [self._delivery(event, STATUS, target, body, forge=forge.kind)]

    def _notifies(self, event: ev.Event, orders: Orders, sha: str | None) -> list[Delivery]:
        if event.app is None or event.deploy is None or not orders.notify:
            return []
        kind, state = OUTCOMES[event.name]
        data: dict[str, Any] = {
            "app": event.app,
            "deploy": event.deploy,
            "sha": sha,
            "state": state,
            "message": self.mask(event.message or ""),
            "link": self.links.deploy(event.app, event.deploy),
        }
        if (url := getattr(event, "url", None)) is not None:
            data["url"] = url
        if (owner := self.owner(event.app)) != event.app:
            data["preview_of"] = owner
        body = {"type": kind, "timestamp": _iso(self.clock.time()), "data": data}
        return [self._delivery(event, NOTIFY, url, body) for url in orders.notify]

    def _delivery(
        self, event: ev.Event, kind: str, url: str, body: dict[str, Any], forge: str = ""
    ) -> Delivery:
        """A delivery due now; a status is chained to the earlier ones of its commit and app."""
        app, deploy, now = str(event.app), str(event.deploy), self.clock.time()
        serial = f"{int(now * 1000):x}_{len(self.journal.pending)}"
        return Delivery(
            id=f"msg_{deploy}_{event.name}_{kind}_{serial}"[:200],
            app=self.owner(app),
            kind=kind,
            url=url,
            body=body,
            forge=forge,
            chain=f"{url} {body.get('context') or body.get('name') or body.get('key')}"
            if forge
            else "",
            deploy=deploy,
            created=now,
            due=now,
        )

    @staticmethod
    def _said(event: ev.Event, state: str) -> str:
        if state == forges.PENDING:
            return "deploy queued"
        return event.message or state

    # -- from the journal to the wire --
    async def run(self, stop: asyncio.Event) -> None:
        """Start what is due, sleep until the next is due (or a new one comes, or a try ends),
        until `stop`; a forge that hangs holds up only its own deliveries."""
        while not stop.is_set():
            self._wake.clear()
            self.start_due()
            waker = asyncio.create_task(self._wake.wait())
            stopper = asyncio.create_task(stop.wait())
            wait = self.next_due()
            await asyncio.wait({waker, stopper}, timeout=wait, return_when="FIRST_COMPLETED")
            for task in (waker, stopper):
                task.cancel()

    async def send_due(self) -> float | None:
        """Try every due delivery and wait for the tries; seconds until the next one is due."""
        await asyncio.gather(*self.start_due())
        return self.next_due()

    def start_due(self) -> list[asyncio.Task[None]]:
        """A task per due delivery (a few on the wire at once; one per chain, in order)."""
        now, started = self.clock.time(), []
        for delivery in sorted(self.journal.pending.values(), key=lambda d: d.created):
            key = delivery.chain or delivery.id
            if delivery.due > now or key in self._sending:
                continue
            self._sending.add(key)
            task = asyncio.create_task(self._attempt_in_slot(delivery, key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(lambda _: self._wake.set())
            started.append(task)
        return started

    def next_due(self) -> float | None:
        """Seconds until the earliest delivery not on the wire is due; None: nothing waits."""
        waiting = [
            d.due for d in self.journal.pending.values() if (d.chain or d.id) not in self._sending
        ]
        return max(0.0, min(waiting) - self.clock.time()) if waiting else None

    async def _attempt_in_slot(self, delivery: Delivery, key: str) -> None:
        try:
            async with self._slots:
                await self.attempt(delivery)
        finally:
            self._sending.discard(key)

    async def attempt(self, delivery: Delivery) -> None:
        """One try: done on 2xx or a final refusal, else again after the backoff."""
        request = self._request(delivery)
        if request is None:
            return await self._end(delivery, "abandoned", self._missing(delivery))
        t0 = self.clock.monotonic()
        error = await self._try(request)
        if error is None:
            ms = int((self.clock.monotonic() - t0) * 1000)
            return await self._end(delivery, "sent", f"{self._what(delivery)} sent", ms)
        return await self._retry(delivery, error)

    async def _try(self, request: Request) -> str | None:
        try:
            status = await self.send(request)
        except (OSError, aiohttp.ClientError, TimeoutError) as err:
            return f"no answer: {type(err).__name__} {err}".strip()
        if 200 <= status < 300:
            return None
        return f"HTTP {status}" + (" (final)" if status in FINAL else "")

    async def _retry(self, delivery: Delivery, error: str) -> None:
        if error.endswith("(final)") or delivery.attempts + 1 >= MAX_ATTEMPTS:
            why = f"{self._what(delivery)} abandoned after {delivery.attempts + 1} tries: {error}"
            return await self._end(delivery, "abandoned", why)
        due = self.clock.time() + backoff(delivery.attempts + 1)
        async with self._lock:
            await asyncio.to_thread(self.journal.tried, delivery, error, due)
        message = f"{self._what(delivery)}: {error}; retry in {backoff(delivery.attempts):g} s"
        self.emit(ev.DeliveryDeferred(app=delivery.app, deploy=delivery.deploy, message=message))
        return None

    async def _end(
        self, delivery: Delivery, result: str, message: str, ms: int | None = None
    ) -> None:
        async with self._lock:
            await asyncio.to_thread(self.journal.done, delivery, result)
        kind = ev.DeliverySent if result == "sent" else ev.DeliveryAbandoned
        self.emit(kind(app=delivery.app, deploy=delivery.deploy, ms=ms, message=message))

    def _request(self, delivery: Delivery) -> Request | None:
        """The POST with its token or signature, or None when that secret is not kept."""
        body = json.dumps(delivery.body, sort_keys=True).encode()
        if delivery.kind == STATUS:
            token = keys.load(self.private_keys, delivery.app, keys.FORGE_TOKEN)
            if token is None:
                return None
            return Request(delivery.url, body, forges.auth_headers(delivery.forge, token))
        secret = keys.load(self.private_keys, delivery.app, keys.NOTIFY_SECRET)
        if secret is None:
            return None
        stamp = int(self.clock.time())
        return Request(delivery.url, body, signed_headers(secret, delivery.id, stamp, body))

    def _missing(self, delivery: Delivery) -> str:
        kind = keys.FORGE_TOKEN if delivery.kind == STATUS else keys.NOTIFY_SECRET
        return f"{self._what(delivery)} not sent: no {kind} kept; run `hd {kind} {delivery.app}`"

    @staticmethod
    def _what(delivery: Delivery) -> str:
        if delivery.kind == STATUS:
            return f"{delivery.forge} status {delivery.body.get('state')} for {delivery.deploy}"
        return f"notify {delivery.body.get('type')} to {_host(delivery.url)}"


def _host(url: str) -> str:
    return url.split("://", 1)[-1].split("/", 1)[0]


def _iso(ts: float) -> str:
    stamp = dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")
