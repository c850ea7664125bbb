"""The daemon's fleet: the managed node (if this squadron runs one) and the fleet link.

`hd fleet init/join/leave` arrive here over the admin socket. With no fleet, `start` does
nothing and nats is never imported; the link, the node, the outbox and the bundles are
loaded at their first use, so a squadron alone holds none of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import shutil
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from aiohttp import web

from hyperdrive import __version__, systemd
from hyperdrive.config import NATS_URL, Config, Listen, without_password
from hyperdrive.errors import FleetError
from hyperdrive.eventlog import Event, EventSink, Filter
from hyperdrive.fleet import state
from hyperdrive.gitserver import package_hooks
from hyperdrive.spool import FileSpool

if TYPE_CHECKING:
    from hyperdrive.fleet.link import FleetLink, Identity, RolloutBoard
    from hyperdrive.fleet.node import NatsNode, NodeSpec
    from hyperdrive.fleet.outbox import Outbox

log = logging.getLogger(__name__)

ROUTE = re.compile(r"nats://[A-Za-z0-9.:\[\]-]+:\d{1,5}")


def node_for(config: Config) -> NatsNode:
    """Our nats-server; under systemd in its own scope, so it outlives the service's restart."""
    from hyperdrive.fleet.node import NatsNode  # noqa: PLC0415 - see the top

    scope = f"{config.name}-nats" if systemd.booted() else None
    return NatsNode(config.nats_dir, scope=scope)


class FleetService:
    """Alone, a managed node plus link, or a link to someone else's NATS."""

    def __init__(self, config: Config, spool: FileSpool) -> None:
        self.config = config
        self.spool = spool
        self.link: FleetLink | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.problem = ""  # why the fleet could not start (bad creds file, …)
        self.app_rows: Callable[[], list[dict[str, Any]]] | None = None  # set by bootstrap
        self.events: EventSink | None = None  # the event log, shared with the fleet (bootstrap)

    @functools.cached_property
    def node(self) -> NatsNode:
        """The managed nats-server: made at the first fleet step that needs it."""
        return node_for(self.config)

    @functools.cached_property
    def outbox(self) -> Outbox:
        """Triggers waiting for the fleet stream; only the link uses it."""
        from hyperdrive.fleet.outbox import Outbox  # noqa: PLC0415 - see the top

        return Outbox(self.config.spool_dir / "fleet-outbox.jsonl")

    def urls(self) -> tuple[str, ...]:
        return state.connect_urls(self.config, state.read_membership(self.config))

    async def start(self) -> None:
        """Start the managed node (adopting a running one) and the link; alone: nothing."""
        try:
            membership = state.read_membership(self.config)
            urls = state.connect_urls(self.config, membership)
            if not urls:
                return
            creds = state.read_creds(self.config.fleet_creds_file)
        except FleetError as err:
            self.problem = str(err)
            log.error("fleet: %s; serving alone until it is fixed", err)  # noqa: TRY400
            return
        if membership is not None and membership.node:
            self._supervisor = asyncio.create_task(self.node.supervise(), name="nats-server")
        from hyperdrive.fleet.bundles import Bundles  # noqa: PLC0415 - see the top
        from hyperdrive.fleet.link import FleetLink  # noqa: PLC0415 - only a fleet loads nats

        node = membership is not None and membership.node
        self.link = FleetLink(
            self._identity(membership),
            urls,
            creds,
            self.spool,
            self.outbox,
            answer_nodes=self._answer_nodes if node else None,
            code=Bundles(self.config.git_dir, package_hooks()),
            app_rows=self.app_rows,
            events=self.events,
            on_routes=self._keep_routes if node else None,
        )
        await self.link.start()

    async def stop(self) -> None:
        """Stop the link; the managed node keeps running for the other squadrons."""
        if self.link is not None:
            await self.link.stop()
            self.link = None
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
            self._supervisor = None

    def _identity(self, membership: state.Membership | None = None) -> Identity:
        """Who this squadron is; a node also says where the others reach it."""
        from hyperdrive.fleet.link import Identity  # noqa: PLC0415

        ident = state.instance_id(self.config)
        if membership is None or not membership.node or self.config.fleet:
            return Identity(self.config.name, ident, __version__)
        host = membership.advertise or _advertised(self.config)
        client = state.client_url(self.config.fleet_listen, host)
        route = self._route(membership.advertise)
        return Identity(self.config.name, ident, __version__, route=route, client=client)

    async def _keep_routes(self, routes: dict[str, str]) -> None:
        """Every node of the fleet in this node's config (read at its next start), so a
        restarted node rejoins all of them. A lone node stays standalone."""
        membership = state.read_membership(self.config)
        if membership is None or not membership.node or not membership.routes:
            return
        peers = state.peer_routes(routes, self.config.name)
        if not peers or peers == membership.routes:
            return
        creds = state.read_creds(self.config.fleet_creds_file)
        kept = replace(membership, routes=peers)
        await asyncio.to_thread(self._write_node, self._spec(creds, peers), creds, kept)
        log.info("fleet: this node's peers are now %s", ", ".join(peers))

    # -- hd fleet init / join / leave --
    def _refuse_if_member(self) -> None:
        if self.config.fleet:
            raise FleetError("HYPERDRIVE_FLEET is set: this squadron follows that NATS already")
        if state.read_membership(self.config) is not None:
            raise FleetError("this squadron is in a fleet already; `hd fleet leave` first")

    async def init(self, advertise: str) -> dict[str, Any]:
        """Make this squadron the fleet's first: a managed nats-server, new credentials."""
        self._refuse_if_member()
        self._need_nats_server()
        creds = state.new_creds()
        membership = state.Membership(node=True, advertise=advertise)
        await asyncio.to_thread(self._write_node, self._spec(creds, ()), creds, membership)
        await self.node.stop()  # a node a previous `leave` could not stop
        await self.node.start()
        await self._restart()
        url = state.client_url(self.config.fleet_listen, advertise or _advertised(self.config))
        return {"join": state.join_line(url, creds), "url": url}

    def _need_nats_server(self) -> None:
        if shutil.which(self.node.binary) is None:
            raise FleetError("nats-server is not installed (apt-get install nats-server)")

    def _spec(self, creds: state.Creds, routes: tuple[str, ...]) -> NodeSpec:
        from hyperdrive.fleet.node import NodeSpec  # noqa: PLC0415 - see the top

        c = self.config
        return NodeSpec(c.name, c.nats_dir, c.fleet_listen, c.fleet_cluster_listen, creds, routes)

    def _route(self, advertise: str) -> str:
        """This node's cluster URL as the others reach it."""
        host = advertise or _advertised(self.config)
        return f"nats://{Listen(host, self.config.fleet_cluster_listen.port)}"

    def _write_node(self, spec: NodeSpec, creds: state.Creds, membership: state.Membership) -> None:
        self.node.configure(spec)
        state.write_creds(self.config.fleet_creds_file, creds)
        state.write_membership(self.config, membership)

    async def join(
        self, url: str, secret: str, *, advertise: str = "", node: bool = True
    ) -> dict[str, Any]:
        """Join the fleet at `url`, checked first (secret, name): as a JetStream cluster node
        of its own (the default: three give R3), or without `node` as a member (a client)."""
        self._refuse_if_member()
        from hyperdrive.fleet import link  # noqa: PLC0415 - only a fleet loads nats

        creds, identity = state.Creds(state.FLEET_USER, secret), self._identity()
        await link.probe((url,), creds, identity)
        if not node:
            await asyncio.to_thread(self._write_member, url, creds)
            await self._restart()
            return {"url": url, "node": False}
        self._need_nats_server()
        route = self._route(advertise)
        routes = await link.ask_for_routes((url,), creds, identity, route)
        peers = tuple(r for r in routes if r != route)
        membership = state.Membership(node=True, advertise=advertise, routes=peers)
        await asyncio.to_thread(self._write_node, self._spec(creds, peers), creds, membership)
        await self.node.stop()
        await self.node.start()
        await self._restart()
        self._background(self._fit(), "fleet grow")
        return {"url": url, "node": True, "routes": list(peers)}

    async def _answer_nodes(self, body: dict[str, Any]) -> dict[str, Any]:
        """A squadron joins as a node: the routes to this node and its peers. A lone node
        (the fleet's first) turns into a cluster node with the joiner as its peer."""
        route = str(body.get("route") or "")
        if not ROUTE.fullmatch(route):
            raise FleetError(f"not a route URL: {route!r}")
        membership = state.read_membership(self.config)
        if membership is None or not membership.node:
            raise FleetError("this squadron runs no NATS node")
        routes = sorted({self._route(membership.advertise), *membership.routes, route})
        if not membership.routes:
            self._background(self._become_cluster(membership, route), "fleet cluster")
        elif route not in membership.routes:  # a cluster node: the joiner in its config now
            known = (*membership.routes, route)  # keys no squadron name can be
            await self._keep_routes({f"route:{i}": r for i, r in enumerate(known)})
        return {"routes": routes}

    async def _become_cluster(self, membership: state.Membership, route: str) -> None:
        await asyncio.sleep(0.5)  # the answer is on its way first
        creds = state.read_creds(self.config.fleet_creds_file)
        routes = (route,)
        grown = replace(membership, routes=routes)
        await asyncio.to_thread(state.write_membership, self.config, grown)
        await self.node.reborn(self._spec(creds, routes))
        log.info("fleet: this node is now a cluster node with %s", route)

    async def _fit(self) -> None:
        """R3 once three nodes are in, R1 below (bounded: a cluster still forming is asked
        again)."""
        for _ in range(30):
            await asyncio.sleep(2)
            with contextlib.suppress(Exception):  # not connected yet, a leader in election
                if self.link is not None and await self.link.fit():
                    return

    def _background(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _write_member(self, url: str, creds: state.Creds) -> None:
        state.write_creds(self.config.fleet_creds_file, creds)
        state.write_membership(self.config, state.Membership(node=False, urls=(url,)))

    async def leave(self, force: bool = False) -> dict[str, Any]:
        """Give up the name, stop the link and the managed node, forget the membership.

        The squadron running the fleet's only node does not leave while others use it; a
        cluster node may (the others go on while two of three remain)."""
        if self.config.fleet:
            raise FleetError("HYPERDRIVE_FLEET is set in main.conf: remove it to leave")
        membership = state.read_membership(self.config)
        if membership is None:
            raise FleetError("this squadron is not in a fleet")
        if membership.node and not membership.routes and not force:
            await self._refuse_if_others()  # the fleet's only node
        peers: tuple[str, ...] = ()
        if self.link is not None:
            try:
                if membership.node and membership.routes:
                    peers = await asyncio.wait_for(self.link.node_clients(), 10)
                await asyncio.wait_for(self.link.release_name(), 10)
            except Exception as err:  # noqa: BLE001 - leaving goes on; the name stays taken
                log.warning("fleet: could not free the name %s: %r", self.config.name, err)
        await self.stop()
        await self.node.stop()
        answer: dict[str, Any] = {"left": True}
        if peers:
            answer["peer_removed"] = await self._remove_own_peer(peers)
        await asyncio.to_thread(self._forget)
        return answer

    async def _remove_own_peer(self, peers: tuple[str, ...]) -> bool:
        """This node, stopped, out of the meta group; the rest shrink to R1 below three."""
        from hyperdrive.fleet import link  # noqa: PLC0415 - only a fleet loads nats

        creds = state.read_creds(self.config.fleet_creds_file)
        try:
            await asyncio.wait_for(link.remove_peer(peers, creds, self.config.name), 30)
            await asyncio.wait_for(link.fit_at(peers, creds, self.config.name), 30)
        except (FleetError, TimeoutError) as err:
            log.warning(
                "fleet: %s; `hd fleet forget %s` on another squadron", err, self.config.name
            )
            return False
        return True

    async def forget(self, name: str, force: bool = False) -> dict[str, Any]:
        """`hd fleet forget NAME`: a squadron gone for good leaves the fleet's records."""
        if name == self.config.name:
            raise FleetError("this is this squadron: `hd fleet leave` instead")
        if self.link is None:
            raise FleetError(self.problem or "this squadron is not in a fleet")
        try:
            return await asyncio.wait_for(self.link.forget(name, force=force), 60)
        except TimeoutError:
            raise FleetError("the fleet did not answer within 60 s") from None

    async def _refuse_if_others(self) -> None:
        if self.link is None:
            return
        others: list[str] = []
        with contextlib.suppress(FleetError, TimeoutError):  # unreachable: nobody to ask
            others = await asyncio.wait_for(self.link.others(), 5)
        if others:
            raise FleetError(
                f"{', '.join(others)} still use the NATS node this squadron runs: "
                "`hd fleet leave` there first, or `hd fleet leave --force`"
            )

    def _forget(self) -> None:
        state.membership_file(self.config).unlink(missing_ok=True)
        self.config.fleet_creds_file.unlink(missing_ok=True)
        self.node.conf.unlink(missing_ok=True)
        shutil.rmtree(self.config.nats_dir / "jetstream", ignore_errors=True)

    async def _restart(self) -> None:
        await self.stop()
        self.problem = ""
        await self.start()

    async def view(self) -> dict[str, Any]:
        """`hd fleet status`: every squadron and every app on each (from the fleet's KV)."""
        if self.link is None:
            alone = "this squadron is not in a fleet (see `hd fleet init`)"
            raise FleetError(self.problem or alone)
        try:
            return await asyncio.wait_for(self.link.fleet_view(), 10)
        except TimeoutError:
            raise FleetError("the fleet did not answer within 10 s") from None

    def board(self) -> RolloutBoard | None:
        """Where rollouts are kept (pipeline/rollout.py); None alone or while NATS is away."""
        link = self.link
        return link.board if link is not None and link.state == "connected" else None

    async def fleet_events(
        self, where: Filter, *, history: int | None, follow: bool
    ) -> AsyncIterator[Event]:
        """`hd logs --fleet`, `GET /events?fleet=1`: every squadron's events."""
        if self.link is None:
            raise FleetError(
                self.problem or "this squadron is not in a fleet (see `hd fleet init`)"
            )
        return await self.link.fleet_events(where, history=history, follow=follow)

    def status(self) -> dict[str, Any]:
        """What `hd status` and `hd doctor` say about the fleet."""
        urls = self.urls() if not self.problem else ()
        if self.problem:
            return {"state": "broken", "detail": self.problem}
        if self.link is None:
            return {"state": "alone"}
        shown = [without_password(u) for u in urls]
        node = {"managed": self._supervisor is not None, "pid": self.node.pid()}
        return {**self.link.status(), "urls": shown, "node": node}


def _advertised(config: Config) -> str:
    """The address others reach this node at: the listen host, or this machine's own address."""
    listen = config.fleet_listen
    if listen.host not in ("0.0.0.0", "::", ""):
        return listen.host
    import socket  # noqa: PLC0415

    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("192.0.2.1", 9))  # TEST-NET: no packet is sent, the route picks an address
        return str(sock.getsockname()[0])
    return socket.gethostname()


def fleet_routes(fleet: FleetService) -> Callable[[web.Application], None]:
    """`POST /fleet` on the admin socket: `{"action": "init"|"join"|"leave", …}`; `GET
    /fleet`: what `hd fleet status` shows."""

    async def post_fleet(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            answer = await _act(fleet, body if isinstance(body, dict) else {})
        except ValueError:
            raise web.HTTPBadRequest(text="the body must be a JSON object\n") from None
        except FleetError as err:
            raise web.HTTPConflict(text=f"{err}\n") from None
        return web.json_response(answer)

    async def get_fleet(request: web.Request) -> web.Response:
        try:
            return web.json_response(await fleet.view())
        except FleetError as err:
            raise web.HTTPConflict(text=f"{err}\n") from None

    def add(app: web.Application) -> None:
        app.router.add_post("/fleet", post_fleet)
        app.router.add_get("/fleet", get_fleet)

    return add


async def _act(fleet: FleetService, body: dict[str, Any]) -> dict[str, Any]:
    action = body.get("action")
    if action == "init":
        return await fleet.init(str(body.get("advertise") or ""))
    if action == "join":
        url, secret = str(body.get("url") or ""), str(body.get("secret") or "")
        if not NATS_URL.fullmatch(url) or not secret:
            raise FleetError("join needs a NATS URL (nats://HOST:PORT) and the fleet's --secret")
        advertise, node = str(body.get("advertise") or ""), body.get("node", True) is not False
        return await fleet.join(url, secret, advertise=advertise, node=node)
    if action == "leave":
        return await fleet.leave(force=bool(body.get("force")))
    if action == "forget":
        name = str(body.get("name") or "")
        if not name:
            raise FleetError("forget needs the name of a squadron")
        return await fleet.forget(name, force=bool(body.get("force")))
    raise FleetError(f"unknown fleet action {action!r} (init, join, leave, forget)")
