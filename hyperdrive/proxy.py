"""The Proxy port for real: nginx routes each app to a stable address on the bridge, and the
nftables map (traffic.py) points that address at the app's live ship."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence

from hyperdrive.errors import ProxyError
from hyperdrive.nginx_reload import AppRoute, Routes
from hyperdrive.pipeline.model import Route
from hyperdrive.traffic import StablePorts, Traffic


class NginxProxy:
    """Routes (nginx), Traffic (nft map) and StablePorts (records/ports.json) as one port."""

    def __init__(self, routes: Routes, traffic: Traffic, ports: StablePorts, address: str) -> None:
        self.routes = routes
        self.traffic = traffic
        self.ports = ports
        self.address = address  # the bridge's address: where the stable ports listen
        self.ready = asyncio.Event()  # set once the table is made: from then on it is watched
        self._offered: set[int] = set()
        # the table vanished under a swap: restore it from the records first (healing.py)
        self.on_lost: Callable[[str], Awaitable[object]] | None = None

    @property
    def prepared(self) -> bool:
        """Whether the table was made by this daemon: only then is its absence a fault."""
        return self.ready.is_set()

    async def prepare(self) -> None:
        if not self.ready.is_set():
            await self.traffic.ensure_table()
            self.ready.set()

    def stable_url(self, app: str, path: str) -> str:
        return f"http://{self.address}:{self.ports.port(app)}{path}"

    async def point(self, app: str, ip: str, port: int) -> None:
        try:
            await self.traffic.point(self.ports.port(app), ip, port)
        except ProxyError:
            if self.on_lost is None or not await self.traffic.damage():
                raise
            await self.on_lost(f"found at the swap of {app}")
            await self.traffic.point(self.ports.port(app), ip, port)

    async def restore(self, live: Mapping[str, tuple[str, int]]) -> list[str]:
        """Make the table whole again and point each app of `live` (app -> ship address, port)
        whose stable port is missing from the map, in one transaction; those apps. An app a
        swap pointed meanwhile keeps what the swap gave it."""
        await self.traffic.ensure_table()
        current = await self.traffic.current()
        missing = [app for app in sorted(live) if self.ports.port(app) not in current]
        await self.traffic.point_all({self.ports.port(app): live[app] for app in missing})
        return missing

    async def unpoint(self, app: str) -> None:
        await self.traffic.remove(self.ports.port(app))

    async def apply_routes(self, routes: Sequence[Route], fresh: Collection[str]) -> None:
        upstreams = [self._upstream(route) for route in routes]
        await self.routes.apply(upstreams, fresh=fresh)
        # what nginx listens on is what ships may reach on the host: the HTTP and PUBLISH_PORTs
        offered = {self.routes.http_port, *(r.publish_port for r in routes if r.publish_port)}
        await self.prepare()
        await self.traffic.offer(offered)
        self._offered = offered

    async def apply_offer(self) -> None:
        """The ports nginx listens on, offered to the ships again (a table made anew)."""
        await self.traffic.offer(self._offered or {self.routes.http_port})

    def _upstream(self, route: Route) -> AppRoute:
        port = self.ports.port(route.app)
        return AppRoute(
            route.app,
            self.address,
            port,
            route.servernames,
            route.publish_port,
            route.check_path,
        )
