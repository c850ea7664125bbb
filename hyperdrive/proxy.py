"""The Proxy port for real: nginx routes each app to a stable address on the bridge, and the
nftables map (traffic.py) points that address at the app's live ship."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence

from hyperdrive.errors import ProxyError
from hyperdrive.https import CertificateKeeper
from hyperdrive.nginx_reload import AppRoute, Routes, Tls, app_hosts
from hyperdrive.pipeline.model import Route
from hyperdrive.traffic import StablePorts, Traffic


class NginxProxy:
    """Routes (nginx), Traffic (nft map), StablePorts (records/ports.json) and the apps'
    certificates (https.py) as one port."""

    def __init__(
        self,
        routes: Routes,
        traffic: Traffic,
        ports: StablePorts,
        address: str,
        *,
        keeper: CertificateKeeper | None = None,
        https_port: int = 443,
    ) -> None:
        self.routes = routes
        self.traffic = traffic
        self.ports = ports
        self.address = address  # the bridge's address: where the stable ports listen
        self.keeper = keeper
        self.https_port = https_port
        self._live: list[AppRoute] | None = None  # what nginx last accepted
        self._lock = asyncio.Lock()
        if keeper is not None:
            keeper.changed.append(self.refresh)
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
        async with self._lock:
            await self.routes.apply(upstreams, fresh=fresh, tls=self._tls(upstreams))
            self._live = upstreams
        # what nginx listens on is what ships may reach on the host: HTTP(S) and PUBLISH_PORTs
        offered = {self.routes.http_port, *(r.publish_port for r in routes if r.publish_port)}
        if self.keeper is not None:
            offered.add(self.https_port)
        await self.prepare()
        if offered != self._offered:  # a swap changes no port: no nft run (a heal offers anew)
            await self.traffic.offer(offered)
            self._offered = offered

    async def apply_offer(self) -> None:
        """The ports nginx listens on, offered to the ships again (a table made anew)."""
        await self.traffic.offer(self._offered or {self.routes.http_port})

    async def refresh(self) -> None:
        """Render the routes nginx serves again with the certificates there are now."""
        async with self._lock:
            if self._live is not None:
                await self.routes.apply(self._live, fresh=(), tls=self._tls(self._live))

    def _tls(self, upstreams: Sequence[AppRoute]) -> Tls:
        return tls_for(self.keeper, upstreams, self.routes.domain, self.https_port)

    def _upstream(self, route: Route) -> AppRoute:
        port = self.ports.port(route.app)
        return AppRoute(
            route.app,
            self.address,
            port,
            route.servernames,
            route.publish_port,
            route.check_path,
            route.https,
        )


def tls_for(
    keeper: CertificateKeeper | None, upstreams: Sequence[AppRoute], domain: str, port: int
) -> Tls:
    """The certificates for every name an app is served at over HTTPS (none: no keeper)."""
    if keeper is None:
        return Tls(port)
    names = [
        host for route in upstreams if route.https != "off" for host in app_hosts(route, domain)
    ]
    certs = keeper.want(names)
    return Tls(port, keeper.store.webroot, {name: cert.path for name, cert in certs.items()})
