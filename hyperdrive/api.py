"""HTTP: the public API (healthz, events, metrics) and the admin API on the unix socket.

Handlers here only read state or turn a request into a durable trigger; the pipeline does
the work. The admin socket is mode 0600 and trusted; the public /events needs a token.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from hyperdrive import __version__
from hyperdrive.accesslog import BUCKETS, AppTraffic
from hyperdrive.errors import FleetError, HyperdriveError, SpoolFull
from hyperdrive.eventlog import Event, EventLog, Filter, parse_since, tail
from hyperdrive.files import write_atomically
from hyperdrive.gitremote import shown_url
from hyperdrive.history import parse_history
from hyperdrive.names import sanitize_app_name
from hyperdrive.spool import FileSpool
from hyperdrive.triggers import Trigger

StatusSource = Callable[[], Mapping[str, Any]]
# every squadron's events (`?fleet=1`): set up, then read; FleetError when not in a fleet
FleetEvents = Callable[..., Awaitable[AsyncIterator[Event]]]
KEEPALIVE_S = 15.0


def _filter(request: web.Request) -> Filter:
    query = request.query
    try:
        app = sanitize_app_name(query["app"]) if query.get("app") else None
        since = parse_since(query.get("since"))
    except (HyperdriveError, ValueError) as err:
        raise web.HTTPBadRequest(text=f"{err}\n") from None
    return Filter(app=app, deploy=query.get("deploy") or None, since=since)


def _history(request: web.Request) -> int | None:
    """`history=N|all`, refused with a JSON error before the stream starts."""
    try:
        return parse_history(request.query.get("history", "100"))
    except ValueError as err:
        body = json.dumps({"error": f"history: {err}"})
        raise web.HTTPBadRequest(text=body, content_type="application/json") from None


async def _heartbeat(events: AsyncIterator[Event]) -> AsyncIterator[Event | None]:
    """Yield events, and None every KEEPALIVE_S of silence so dead clients are noticed."""
    iterator = aiter(events)
    pending: asyncio.Task[Event] | None = None
    try:
        while True:
            pending = pending or asyncio.ensure_future(anext(iterator))
            done, _ = await asyncio.wait({pending}, timeout=KEEPALIVE_S)
            if not done:
                yield None
                continue
            try:
                event = pending.result()
            except StopAsyncIteration:
                return
            pending = None
            yield event
    finally:
        if pending is not None:
            pending.cancel()


def token_digest(token: str) -> str:
    """What tokens.json keeps of a token: its SHA-256, hex."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


class TokenStore:
    """Admiral tokens for the public /events: only their SHA-256 is kept on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def create(self, admiral: str) -> str:
        token = secrets.token_urlsafe(32)
        tokens = self._load()
        tokens[token_digest(token)] = admiral
        write_atomically(self.path, json.dumps(tokens), mode=0o600)
        return token

    def admiral_for(self, token: str) -> str | None:
        return self.admiral_of_digest(token_digest(token))

    def admiral_of_digest(self, digest: str) -> str | None:
        """Whose token this digest is, while the token is in force (the dashboard's sessions
        keep only the digest, and end when the token is revoked)."""
        for known, admiral in self._load().items():
            if hmac.compare_digest(known, digest):
                return admiral
        return None


class Api:
    """Both HTTP faces of the daemon; `public()` and `admin()` build the aiohttp apps."""

    def __init__(
        self,
        eventlog: EventLog,
        spool: FileSpool,
        status: StatusSource,
        tokens: TokenStore,
        metrics: Callable[[], Mapping[str, float]],
        *,
        set_headquarters: Callable[[str], None] | None = None,
        public_routes: Sequence[Callable[[web.Application], None]] = (),
        admin_routes: Sequence[Callable[[web.Application], None]] = (),
        traffic: Callable[[], Mapping[str, AppTraffic]] = dict,
        fleet_events: FleetEvents | None = None,
    ) -> None:
        self.fleet_events = fleet_events
        self.eventlog = eventlog
        self.spool = spool
        self.status = status
        self.tokens = tokens
        self.metrics = metrics
        self.set_headquarters = set_headquarters
        self.public_routes = public_routes
        self.admin_routes = admin_routes
        self.traffic = traffic  # each app's requests, from nginx's request stream
        self.started = time.time()
        self._registry: Any = None

    def public(self) -> web.Application:
        app = web.Application(client_max_size=25 * 1024 * 1024)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/events", self.public_events)
        app.router.add_get("/metrics", self.metrics_text)
        for add_routes in self.public_routes:
            add_routes(app)
        return app

    def admin(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/status", self.status_json)
        app.router.add_get("/events", self.ndjson_events)
        app.router.add_post("/triggers", self.post_trigger)
        app.router.add_post("/tokens", self.post_token)
        app.router.add_post("/headquarters", self.post_headquarters)
        for add_routes in self.admin_routes:
            add_routes(app)
        return app

    async def healthz(self, request: web.Request) -> web.Response:
        uptime = round(time.time() - self.started, 1)
        return web.json_response({"status": "ok", "version": __version__, "uptime": uptime})

    async def status_json(self, request: web.Request) -> web.Response:
        return web.json_response(dict(self.status()))

    async def metrics_text(self, request: web.Request) -> web.Response:
        # prometheus_client is loaded at the first scrape: an idle daemon that is never
        # scraped does not hold it (about 1 MB of RSS)
        from prometheus_client import CollectorRegistry, generate_latest  # noqa: PLC0415

        if self._registry is None:
            self._registry = CollectorRegistry(auto_describe=False)
            self._registry.register(_Collector(self))
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})

    async def public_events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events for an admiral holding a token (header or ?token=)."""
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ").strip() or request.query.get("token", "")
        if not token or self.tokens.admiral_for(token) is None:
            raise web.HTTPUnauthorized(
                text="an admiral token is required: `hd token NAME` makes one\n",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await self._sse(request)

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        where, history = _filter(request), _history(request)
        follow = request.query.get("follow", "1") != "0"
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        stream = await self._stream(request, where, history, follow)
        await response.prepare(request)
        with contextlib.suppress(ConnectionResetError, FleetError):
            async for event in _heartbeat(stream):
                if event is None:
                    await response.write(b": keep-alive\n\n")
                    continue
                data = json.dumps(event, separators=(",", ":"))
                chunk = f"id: {event.get('seq', '')}\nevent: {event['event']}\ndata: {data}\n\n"
                await response.write(chunk.encode())
        return response

    async def ndjson_events(self, request: web.Request) -> web.StreamResponse:
        """The admin stream: one JSON object a line; `follow=1` keeps it open."""
        where, history = _filter(request), _history(request)
        follow = request.query.get("follow") == "1"
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        stream = await self._stream(request, where, history, follow)
        await response.prepare(request)
        with contextlib.suppress(ConnectionResetError, FleetError):
            async for event in _heartbeat(stream):
                line = b"\n" if event is None else json.dumps(event).encode() + b"\n"
                await response.write(line)
        return response

    async def _stream(
        self, request: web.Request, where: Filter, history: int | None, follow: bool
    ) -> AsyncIterator[Event]:
        """This squadron's events, or with `fleet=1` every squadron's (each with its
        `squadron`); a squadron not in a fleet, or NATS out of reach, is a 409."""
        if request.query.get("fleet") not in ("1", "true"):
            return tail(self.eventlog, where, history=history, follow=follow)
        if self.fleet_events is None:
            raise web.HTTPConflict(text="this squadron is not in a fleet\n")
        try:
            return await self.fleet_events(where, history=history, follow=follow)
        except FleetError as err:
            raise web.HTTPConflict(text=f"{err}\n") from None

    async def post_trigger(self, request: web.Request) -> web.Response:
        """`hd deploy`, `hd rollback`, …: a durable trigger, answered with its deploy id."""
        try:
            trigger = Trigger.requested(await request.json())
        except (ValueError, HyperdriveError) as err:
            raise web.HTTPBadRequest(text=f"bad trigger: {err}\n") from None
        try:
            await self.spool.put(trigger)
        except SpoolFull as err:
            raise web.HTTPInsufficientStorage(text=f"{err}\n") from None
        return web.json_response({"deploy": trigger.id}, status=202)

    async def post_headquarters(self, request: web.Request) -> web.Response:
        """`hd headquarters set URL`: HQ comes from URL from now on ('' = hosted here)."""
        body = await request.json()
        url = str(body.get("url", ""))
        if any(c.isspace() for c in url) or url.startswith("-") or "::" in url.partition("#")[0]:
            raise web.HTTPBadRequest(text=f"not a git URL: {shown_url(url)!r}\n")
        if self.set_headquarters is None:
            raise web.HTTPNotImplemented(text="headquarters cannot be changed here\n")
        self.set_headquarters(url)
        return web.json_response({"headquarters": shown_url(url) or "hosted here"})

    async def post_token(self, request: web.Request) -> web.Response:
        body = await request.json()
        admiral = str(body.get("admiral", ""))
        if not admiral.replace("-", "").replace("_", "").isalnum():
            raise web.HTTPBadRequest(text="admiral name: letters, digits, - and _\n")
        return web.json_response({"admiral": admiral, "token": self.tokens.create(admiral)})


class _Collector:
    """Prometheus metrics read from live state at scrape time."""

    def __init__(self, api: Api) -> None:
        self.api = api

    def collect(self) -> Any:
        from prometheus_client.core import (  # noqa: PLC0415 - see Api.metrics_text
            CounterMetricFamily,
            GaugeMetricFamily,
        )

        api = self.api
        yield GaugeMetricFamily("hyperdrive_up", "1 while the daemon serves", value=1)
        yield GaugeMetricFamily(
            "hyperdrive_uptime_seconds", "seconds since start", value=time.time() - api.started
        )
        yield CounterMetricFamily(
            "hyperdrive_events", "events appended since start", value=api.eventlog.appended
        )
        yield GaugeMetricFamily(
            "hyperdrive_event_subscribers", "live event readers", value=api.eventlog.subscribers
        )
        yield GaugeMetricFamily(
            "hyperdrive_triggers_pending",
            "triggers without an outcome",
            value=api.spool.pending_count(),
        )
        for name, value in api.metrics().items():
            yield GaugeMetricFamily(f"hyperdrive_{name}", name.replace("_", " "), value=value)
        yield from _traffic(api.traffic())


def _traffic(apps: Mapping[str, AppTraffic]) -> Any:
    """Each app's requests through nginx by status class, and their latency histogram."""
    from prometheus_client.core import (  # noqa: PLC0415 - see Api.metrics_text
        CounterMetricFamily,
        HistogramMetricFamily,
    )

    requests = CounterMetricFamily(
        "hyperdrive_app_requests", "requests nginx proxied to the app", labels=["app", "code"]
    )
    latency = HistogramMetricFamily(
        "hyperdrive_app_request_duration_seconds", "nginx's request time", labels=["app"]
    )
    for app, traffic in sorted(apps.items()):
        for code, count in sorted(traffic.classes.items()):
            requests.add_metric([app, code], count)
        buckets = [(f"{b:g}", n) for b, n in zip(BUCKETS, traffic.buckets, strict=True)]
        latency.add_metric([app], [*buckets, ("+Inf", traffic.count)], traffic.seconds)
    yield requests
    yield latency
