"""The Proxy port for real: nginx routes each app to a stable address on the bridge, and the
nftables map (traffic.py) points that address at the app's live ship."""

from __future__ import annotations

from collections.abc import Collection, Sequence

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
        self._prepared = False

    async def prepare(self) -> None:
        if not self._prepared:
            await self.traffic.ensure_table()
            self._prepared = True

    def stable_url(self, app: str, path: str) -> str:
        return f"http://{self.address}:{self.ports.port(app)}{path}"

    async def point(self, app: str, ip: str, port: int) -> None:
        await self.traffic.point(self.ports.port(app), ip, port)

    async def unpoint(self, app: str) -> None:
        await self.traffic.remove(self.ports.port(app))

    async def apply_routes(self, routes: Sequence[Route], fresh: Collection[str]) -> None:
        upstreams = [self._upstream(route) for route in routes]
        await self.routes.apply(upstreams, fresh=fresh)
        # what nginx listens on is what ships may reach on the host: the HTTP and PUBLISH_PORTs
        offered = {self.routes.http_port, *(r.publish_port for r in routes if r.publish_port)}
        await self.prepare()
        await self.traffic.offer(offered)

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
