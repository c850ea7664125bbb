"""The dashboard's routes on the API port: sign-in, overview, apps, deploys, webhooks, live.

Every page but the sign-in page needs a session (a cookie made from an admiral token); every
POST carries the session's CSRF token. Rollback and Redeploy put the same triggers in the
spool that `hd rollback` and `hd deploy` do. Static assets are public.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from hyperdrive.api import _heartbeat
from hyperdrive.errors import HyperdriveError
from hyperdrive.eventlog import EventLog, Filter, tail
from hyperdrive.hooks.deliveries import Deliveries
from hyperdrive.hooks.refusals import source_of
from hyperdrive.hooks.webhook import FORGE_NAMES, PROVIDERS
from hyperdrive.names import sanitize_app_name
from hyperdrive.pipeline import events as ev
from hyperdrive.pipeline.fleet import Fleet
from hyperdrive.pipeline.model import App, Records
from hyperdrive.pipeline.ships import Ships
from hyperdrive.triggers import Trigger
from hyperdrive.web import views
from hyperdrive.web.history import DeployHistory
from hyperdrive.web.sessions import Session, Sessions, SignInRefusals, new_secret, same

COOKIE = "hd_session"
SIGNIN_COOKIE = "hd_signin"  # the sign-in form's own CSRF token (double submit)
STATIC = Path(__file__).parent / "static"
DEPLOY_EVENTS = 5000  # of one deploy, read for its page
MAX_FORM = 16 * 1024  # bytes: a token or a CSRF token, never more
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
Handler = Callable[[web.Request, Session], Awaitable[web.StreamResponse]]


async def _form(request: web.Request) -> Mapping[str, Any]:
    """The posted form; a body larger than any of our forms is refused before it is read."""
    if request.content_length is None or request.content_length > MAX_FORM:
        raise web.HTTPRequestEntityTooLarge(MAX_FORM, request.content_length or 0)
    return await request.post()


def see_other(location: str) -> web.Response:
    """303 to `location` (after a POST the browser GETs it: reloading repeats nothing)."""
    return web.Response(status=303, headers={**HEADERS, "Location": location})


class Spool(Protocol):
    async def put(self, trigger: Trigger) -> bool: ...

    def pending(self) -> list[Trigger]: ...


@dataclass
class Sources:
    """What the pages read: the daemon's state and logs."""

    eventlog: EventLog
    spool: Spool
    status: Callable[[], Mapping[str, Any]]
    records: Records
    fleet: Fleet
    ships_dir: Path
    git_dir: Path


class Dashboard:
    """`add_routes(app)` puts the dashboard on the public aiohttp app."""

    def __init__(
        self,
        sources: Sources,
        sessions: Sessions,
        deliveries: Deliveries,
        *,
        history: DeployHistory | None = None,
    ) -> None:
        self.src = sources
        self.sessions = sessions
        self.deliveries = deliveries
        self.history = history or DeployHistory()
        self.refusals = SignInRefusals(sources.eventlog.append)
        self.subjects = views.Subjects(sources.git_dir, sources.fleet.mask)
        self._templates: Any = None  # jinja2 loads at the first page: an idle daemon lacks it

    def add_routes(self, app: web.Application) -> None:
        r, page = app.router, self._signed_in
        r.add_get("/", page(self.overview))
        r.add_get("/sign-in", self.sign_in_page)
        r.add_post("/sign-in", self.sign_in)
        r.add_post("/sign-out", page(self.sign_out))
        r.add_get("/apps/{app}", page(self.app_page))
        r.add_get("/apps/{app}/deploys/{deploy}", page(self.deploy_page))
        r.add_get("/apps/{app}/deploys/{deploy}/setup.log", page(self.setup_log))
        r.add_get("/apps/{app}/rollback", page(self.confirm_rollback))
        r.add_post("/apps/{app}/rollback", page(self.rollback))
        r.add_post("/apps/{app}/redeploy", page(self.redeploy))
        r.add_get("/webhooks", page(self.webhooks))
        r.add_get("/live", page(self.live))
        r.add_static("/static", STATIC, append_version=False)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)

    async def _start(self, app: web.Application) -> None:
        self.history.start(self.src.eventlog)

    async def _stop(self, app: web.Application) -> None:
        await self.history.stop()

    # ─── sessions ────────────────────────────────────────────────────────────

    def _signed_in(self, handler: Handler) -> Callable[[web.Request], Awaitable[Any]]:
        """The session's page; without a session, the sign-in page; a POST without the
        session's CSRF token is refused and does nothing."""

        async def page(request: web.Request) -> web.StreamResponse:
            session = self.sessions.get(request.cookies.get(COOKIE))
            if session is None:
                if request.method != "GET":
                    return self._refused(403, "You are signed out", "Sign in, then try again.")
                ended = COOKIE in request.cookies  # it expired, was signed out or revoked
                response = see_other("/sign-in?ended=1" if ended else "/sign-in")
                response.del_cookie(COOKIE, path="/")
                return response
            if request.method == "POST":
                form = await _form(request)
                if not same(str(form.get("csrf", "")), session.csrf):
                    return self._refused(
                        403,
                        "This form is not from your session",
                        "It carried no valid CSRF token, so nothing was done. "
                        "Reload the page and try again.",
                        session,
                    )
            return await handler(request, session)

        return page

    async def sign_in_page(self, request: web.Request) -> web.StreamResponse:
        if self.sessions.get(request.cookies.get(COOKIE)) is not None:
            return see_other("/")
        return self._sign_in_form(request, 200)

    def _sign_in_form(self, request: web.Request, status: int, error: str = "") -> web.Response:
        csrf = request.cookies.get(SIGNIN_COOKIE) or new_secret()
        ended = "ended" in request.query and not error
        response = self._render("signin.html", status, None, csrf=csrf, error=error, ended=ended)
        self._cookie(request, response, SIGNIN_COOKIE, csrf, max_age=3600)
        return response

    async def sign_in(self, request: web.Request) -> web.StreamResponse:
        form = await _form(request)
        if not same(str(form.get("csrf", "")), request.cookies.get(SIGNIN_COOKIE, "")):
            return self._refused(
                403,
                "This sign-in form has expired",
                "It carried no valid CSRF token. Open the sign-in page again.",
            )
        source = source_of(request.remote)
        session = self.sessions.sign_in(str(form.get("token", "")))
        if session is None:
            self.refusals(source, "a wrong or revoked token")
            error = "That token is not valid: it is wrong, or it was revoked."
            return self._sign_in_form(request, 401, error)
        said = f"{session.admiral} signed in to the dashboard"
        self.src.eventlog.append(
            ev.SignedIn(admiral=session.admiral, source=source, message=said).record()
        )
        response = see_other("/")
        self._cookie(request, response, COOKIE, session.id)
        response.del_cookie(SIGNIN_COOKIE, path="/")
        return response

    async def sign_out(self, request: web.Request, session: Session) -> web.StreamResponse:
        self.sessions.sign_out(session.id)
        said = f"{session.admiral} signed out of the dashboard"
        self.src.eventlog.append(ev.SignedOut(admiral=session.admiral, message=said).record())
        response = see_other("/sign-in")
        response.del_cookie(COOKIE, path="/")
        return response

    @staticmethod
    def _cookie(
        request: web.Request,
        response: web.StreamResponse,
        name: str,
        value: str,
        max_age: int | None = None,
    ) -> None:
        """HttpOnly, SameSite=Strict, and Secure when the request came over TLS (or through
        a TLS proxy that says so)."""
        tls = request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"
        response.set_cookie(
            name, value, path="/", httponly=True, samesite="Strict", secure=tls, max_age=max_age
        )

    # ─── pages ───────────────────────────────────────────────────────────────

    async def overview(self, request: web.Request, session: Session) -> web.StreamResponse:
        status = self.src.status()
        apps = [self._app_row(row) for row in status.get("apps", [])]
        await self._subjects([(a["app"], a["full_sha"]) for a in apps if a["full_sha"]])
        for row in apps:
            row["subject"] = self.subjects.cached(row["app"], row["full_sha"] or "") or ""
        pending = [
            {"id": t.id, "kind": str(t.kind), "app": t.app or ""} for t in self.src.spool.pending()
        ]
        return self._render(
            "overview.html",
            200,
            session,
            live="/live",
            squadron=status,
            apps=apps,
            pending=pending,
            in_flight=self.history.in_flight(),
        )

    def _app_row(self, row: Mapping[str, Any]) -> dict[str, Any]:
        app = self.src.records.get(row["app"]) if self.src.records.known(row["app"]) else None
        live = app.live_ship if app else None
        last = app.last_deploy if app else {}
        return {
            **row,
            "full_sha": live.sha if live else None,
            "healthy": bool(live and live.healthy),
            "last": last,
            "last_ms": views.took(last.get("ms")),
            "rejected": self.src.fleet.rejected(row["app"]),
        }

    async def _subjects(self, wanted: list[tuple[str, str]]) -> None:
        missing = [w for w in wanted if self.subjects.cached(*w) is None]
        if missing:
            await asyncio.to_thread(self.subjects.load, missing)

    def _app(self, request: web.Request) -> App:
        try:
            name = sanitize_app_name(request.match_info["app"])
        except HyperdriveError:
            raise web.HTTPNotFound(text="no such app\n") from None
        if not self.src.records.known(name) and name not in self.src.fleet.names():
            raise web.HTTPNotFound(text=f"no app named {name}\n")
        return self.src.records.get(name)

    async def app_page(self, request: web.Request, session: Session) -> web.StreamResponse:
        app = self._app(request)
        runs = self.history.of(app.name)
        shas = {(app.name, s.sha) for s in app.ships} | {(app.name, r.sha) for r in runs if r.sha}
        await self._subjects(sorted(shas))
        orders = self.src.fleet.orders(app.name)
        return self._render(
            "app.html",
            200,
            session,
            live=f"/live?app={app.name}",
            app=app,
            ships=sorted(app.ships, key=lambda s: s.created, reverse=True),
            target=Ships.rollback_target(app),
            runs=runs,
            loaded=self.history.loaded,
            subject=lambda sha: self.subjects.cached(app.name, sha) or "",
            orders=self.src.fleet.summary(app.name),
            orders_rows=views.orders_rows(orders, self.src.fleet.mask),
            rejected=self.src.fleet.rejected(app.name),
            timeline=views.timeline,
        )

    async def _deploy_events(self, app: App, deploy: str) -> list[dict[str, Any]]:
        where = Filter(deploy=deploy)
        events = [e async for e in self.src.eventlog.read(where, last=DEPLOY_EVENTS)]
        if any(e.get("app") == app.name for e in events):
            return events
        if any(t.id == deploy and t.app == app.name for t in self.src.spool.pending()):
            return events  # queued, nothing done yet: the page follows it from the start
        raise web.HTTPNotFound(text=f"{app.name} has no deploy {deploy}\n")

    async def deploy_page(self, request: web.Request, session: Session) -> web.StreamResponse:
        app, deploy = self._app(request), request.match_info["deploy"]
        events = await self._deploy_events(app, deploy)
        run = self.history.run(app.name, deploy)
        text, cut = views.tail_text(views.log_text(events), views.LOG_CHARS)
        failed = [e for e in events if e.get("event") in ("DeployFailed", "HealthCheckFailed")]
        ship = next((str(e["ship"]) for e in reversed(events) if e.get("ship")), "")
        setup = None
        if any(e.get("event") in ("DeployFailed", "BuildFailed") for e in events) and ship:
            setup = await self._setup_log(ship, views.SETUP_LOG_CHARS)
        return self._render(
            "deploy.html",
            200,
            session,
            live=f"/live?deploy={deploy}",
            app=app,
            deploy=deploy,
            run=run,
            log=text,
            cut=cut,
            failures=failed,
            ship=ship,
            setup=setup,
            timeline=views.timeline,
        )

    async def _setup_log(self, ship: str, limit: int) -> str | None:
        path = views.setup_log_path(self.src.ships_dir, ship)
        if path is None:
            return None
        return await asyncio.to_thread(views.read_tail, path, limit, self.src.fleet.mask)

    async def setup_log(self, request: web.Request, session: Session) -> web.StreamResponse:
        app, deploy = self._app(request), request.match_info["deploy"]
        events = await self._deploy_events(app, deploy)
        ship = next((str(e["ship"]) for e in reversed(events) if e.get("ship")), "")
        text = await self._setup_log(ship, views.SETUP_LOG_DOWNLOAD) if ship else None
        if text is None:
            raise web.HTTPNotFound(text="this deploy left no setup.log\n")
        return web.Response(text=text, content_type="text/plain", headers=HEADERS)

    async def confirm_rollback(self, request: web.Request, session: Session) -> web.Response:
        app = self._app(request)
        return self._render(
            "confirm.html", 200, session, app=app, target=Ships.rollback_target(app)
        )

    async def rollback(self, request: web.Request, session: Session) -> web.StreamResponse:
        app = self._app(request)
        return await self._put(app, Trigger.rollback(app.name, session.admiral))

    async def redeploy(self, request: web.Request, session: Session) -> web.StreamResponse:
        app = self._app(request)
        sha = app.live_ship.sha if app.live_ship else None
        return await self._put(app, Trigger.deploy(app.name, sha, session.admiral))

    async def _put(self, app: App, trigger: Trigger) -> web.StreamResponse:
        """The same durable trigger `hd rollback` / `hd deploy` make; then watch it."""
        await self.src.spool.put(trigger)
        return see_other(f"/apps/{app.name}/deploys/{trigger.id}")

    async def webhooks(self, request: web.Request, session: Session) -> web.StreamResponse:
        forges = [(FORGE_NAMES[p], p, self.deliveries.recent(p)) for p in PROVIDERS]
        return self._render(
            "webhooks.html", 200, session, live="/live", forges=forges, moment=views.moment
        )

    # ─── live ────────────────────────────────────────────────────────────────

    async def live(self, request: web.Request, session: Session) -> web.StreamResponse:
        """Server-sent events for the page: which event happened to what (the page then
        fetches itself again); ends when the session does."""
        query = request.query
        try:
            app = sanitize_app_name(query["app"]) if query.get("app") else None
        except HyperdriveError:
            raise web.HTTPBadRequest(text="bad app name\n") from None
        where = Filter(app=app, deploy=query.get("deploy") or None)
        response = web.StreamResponse(headers={**HEADERS, "Content-Type": "text/event-stream"})
        await response.prepare(request)
        stream = tail(self.src.eventlog, where, history=0, follow=True)
        with contextlib.suppress(ConnectionResetError):
            async for event in _heartbeat(stream):
                if self.sessions.get(session.id) is None:
                    break
                if event is None:
                    await response.write(b": keep-alive\n\n")
                    continue
                if where.deploy is None and event.get("event") == "BuildOutput":
                    continue  # only a deploy's own page shows its output lines
                said = {k: event.get(k) for k in ("seq", "event", "app", "deploy")}
                await response.write(f"data: {json.dumps(said)}\n\n".encode())
        return response

    # ─── rendering ───────────────────────────────────────────────────────────

    def _render(
        self, name: str, status: int, session: Session | None, **context: Any
    ) -> web.Response:
        context.setdefault("live", "")
        text = self.templates().get_template(name).render(session=session, **context)
        return web.Response(text=text, status=status, content_type="text/html", headers=HEADERS)

    def templates(self) -> Any:
        if self._templates is None:
            import jinja2  # noqa: PLC0415 - see __init__

            self._templates = jinja2.Environment(
                loader=jinja2.PackageLoader("hyperdrive.web", "templates"),
                autoescape=True,
                trim_blocks=True,
                lstrip_blocks=True,
            )
            # text that is not from the event log (which masks as it reads) goes through this
            self._templates.filters["mask"] = lambda text: self.src.fleet.mask(str(text))
        return self._templates

    def _refused(
        self, status: int, title: str, why: str, session: Session | None = None
    ) -> web.Response:
        return self._render("refused.html", status, session, title=title, why=why)
