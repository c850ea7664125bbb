"""The public HTTP listener's guards: idle and slow clients time out, connections are capped.

Anyone on the network reaches this port, so a client that sends nothing, or its headers a
byte at a time, must not hold a file descriptor for long, and a flood of them must neither
exhaust the daemon's descriptors nor lock out `/healthz` and the forges' webhooks.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import ssl

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger(__name__)

IDLE_TIMEOUT_S = 15.0  # a connection with no request under way closes after this long
MAX_CONNECTIONS = 4096
BACKLOG = 128
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 24\r\n\r\ntoo many connections now\n"
)


def connection_cap(limit: int = MAX_CONNECTIONS) -> int:
    """`limit`, or a quarter of the descriptors the process may open if that is less: the
    spool, git, nginx and SSH need the rest."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return limit
    return max(8, min(limit, soft // 4))


class _Busy(asyncio.Protocol):
    """A connection over the cap while every open one is serving: 503, then closed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(BUSY)
        transport.close()


def _live(handler: RequestHandler) -> bool:
    transport = handler.transport
    return transport is not None and not transport.is_closing()


def _idle(handler: RequestHandler) -> bool:
    """No request under way: waiting for (the rest of) its headers, or kept alive."""
    return not getattr(handler, "_request_in_progress", True)


class GuardedSite(web.BaseSite):
    """A TCP site that counts its connections: at the cap the oldest idle one is closed to
    make room, and only when all are serving a request is a newcomer answered 503."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        max_connections: int,
        tls: ssl.SSLContext | None = None,
    ):
        super().__init__(runner, backlog=min(BACKLOG, max_connections), ssl_context=tls)
        self._host, self._port, self._cap = host, port, max_connections
        self.evicted = self.refused = 0
        self._burst = 0

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://{self._host}:{self.bound_port}"

    @property
    def bound_port(self) -> int:
        assert isinstance(self._server, asyncio.Server)
        return int(self._server.sockets[0].getsockname()[1])

    def open_connections(self) -> int:
        """Connections open now and not closing."""
        server = self._runner.server
        return sum(map(_live, server.connections)) if isinstance(server, web.Server) else 0

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._accept,
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=True,
            ssl=self._ssl_context,
        )

    def _accept(self) -> asyncio.BaseProtocol:
        server = self._runner.server
        assert isinstance(server, web.Server)
        live = [handler for handler in server.connections if _live(handler)]
        if len(live) >= self._cap:
            idle = next((handler for handler in live if _idle(handler)), None)
            if idle is None:
                return self._refuse(len(live))
            assert idle.transport is not None
            idle.transport.close()
            self.evicted += 1
        self._burst_over()
        return server()

    def _refuse(self, open_now: int) -> asyncio.BaseProtocol:
        """503; the first refusal of a burst is logged, the burst's count when it ends."""
        self.refused += 1
        if not self._burst:
            log.warning("http: %d connections serving, refusing new ones with 503", open_now)
        self._burst += 1
        return _Busy()

    def _burst_over(self) -> None:
        if self._burst:
            log.warning("http: accepting again after refusing %d connections", self._burst)
            self._burst = 0


async def serve_public(
    app: web.Application,
    host: str,
    port: int,
    *,
    idle_timeout: float = IDLE_TIMEOUT_S,
    max_connections: int | None = None,
    tls: ssl.SSLContext | None = None,
) -> tuple[web.AppRunner, GuardedSite]:
    """Start `app` on host:port behind the guards; the runner to clean up and the site."""
    # aiohttp arms keepalive_timeout when a connection is made, so it bounds a client that
    # never completes its headers as well as one kept alive after a response
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1, keepalive_timeout=idle_timeout)
    await runner.setup()
    site = GuardedSite(runner, host, port, max_connections or connection_cap(), tls)
    await site.start()
    return runner, site
