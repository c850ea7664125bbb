"""DNS for the ships: a small forwarder on the bridge address, port 53 (UDP and TCP).

A ship cannot use the host's resolver (often 127.0.0.53, the host's own loopback), so the
daemon answers for it: the apps' `servername`s (and `<app>.<domain>`) with the bridge address,
where nginx serves them, and everything else by asking the host's resolvers (those
/etc/resolv.conf names, or HYPERDRIVE_SHIP_DNS). Bounded: timeouts, and a cap on queries in
flight; what it cannot answer in time gets SERVFAIL, and the ship's resolver asks again.
The answers themselves are `hyperdrive.dnswire`'s, loaded at the first query.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PORT = 53
MAX_INFLIGHT = 256
TCP_IDLE_S = 10.0
RESOLV_CONF = Path("/etc/resolv.conf")

Names = Callable[[], Iterable[str]]


def host_resolvers(path: Path = RESOLV_CONF) -> list[str]:
    """The `nameserver` lines of the host's resolv.conf (127.0.0.53 is fine: we run on the host)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    words = (line.split() for line in lines)
    return [w[1] for w in words if len(w) >= 2 and w[0] == "nameserver"]


class ShipDns:
    """Answers the ships' queries on `address`:53; `names()` are the names served here."""

    def __init__(
        self, address: str, names: Names, upstreams: Sequence[str] = (), port: int = PORT
    ) -> None:
        self.address, self.port, self.names = address, port, names
        self.configured = list(upstreams)
        self.armed = False
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._slots = asyncio.Semaphore(MAX_INFLIGHT)
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def listening(self) -> bool:
        return self._udp is not None

    @property
    def busy(self) -> bool:
        """As many queries in flight as allowed: new UDP ones are dropped (clients retry)."""
        return len(self._tasks) >= MAX_INFLIGHT

    @property
    def upstreams(self) -> list[str]:
        """HYPERDRIVE_SHIP_DNS, else the host's resolv.conf as it is now (DHCP may change it)."""
        return self.configured or host_resolvers()

    async def start(self) -> None:
        """The daemon's step: from now on, `bind` (the network's on_up hook) listens; the
        bridge itself is made lazily, at recovery or the first deploy."""
        self.armed = True

    async def bind(self) -> None:
        """Listen on the bridge address (idempotent); a port taken is said, not fatal."""
        if not self.armed or self.listening:
            return
        loop = asyncio.get_running_loop()
        try:
            self._udp, _ = await loop.create_datagram_endpoint(
                lambda: _Udp(self), local_addr=(self.address, self.port)
            )
            self._tcp = await asyncio.start_server(self._serve_tcp, self.address, self.port)
        except OSError as err:
            log.warning("ships' DNS cannot listen on %s:%d: %s", self.address, self.port, err)
            await self.close()
            return
        upstreams = ", ".join(self.upstreams) or "nobody (no resolvers known)"
        log.info("ships' DNS on %s:%d, relaying to %s", self.address, self.port, upstreams)

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
            self._tcp = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Keep a reference to a background answer so it is not collected mid-flight."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def answer(self, wire: bytes, tcp: bool = False) -> bytes | None:
        """The reply to one query in wire format; None for what is not a DNS query at all."""
        from hyperdrive import dnswire  # noqa: PLC0415 - dnspython (~2 MB) at the first query

        query = dnswire.parse(wire)
        if query is None:
            return None
        answered = dnswire.malformed(query) or dnswire.local(query, self.names(), self.address)
        if answered is not None:
            return answered
        async with self._slots:
            return await dnswire.relay(query, self.upstreams, tcp)

    async def addresses(self, host: str) -> list[str]:
        """The IPv4 addresses the ships would get for `host` (for `egress allow` rules)."""
        from hyperdrive import dnswire  # noqa: PLC0415 - dnspython (~2 MB) at the first query

        query = dnswire.query_a(host)
        if dnswire.local(query, self.names(), self.address) is not None:
            return [self.address]
        return dnswire.a_records(await dnswire.relay(query, self.upstreams, tcp=False))

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Length-prefixed queries on one connection until it idles or closes."""
        try:
            while True:
                async with asyncio.timeout(TCP_IDLE_S):
                    (size,) = struct.unpack("!H", await reader.readexactly(2))
                    wire = await reader.readexactly(size)
                reply = await self.answer(wire, tcp=True)
                if reply is None:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


class _Udp(asyncio.DatagramProtocol):
    """Each datagram answered in a task of its own; beyond MAX_INFLIGHT, dropped (the ship's
    resolver asks again)."""

    def __init__(self, dns_: ShipDns) -> None:
        self.dns = dns_
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if self.dns.busy:
            return
        self.dns.spawn(self._answer(data, addr))

    async def _answer(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        reply = await self.dns.answer(data)
        if reply is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)


def app_names(servernames: Iterable[tuple[str, Iterable[str]]], domain: str) -> set[str]:
    """The names ships resolve to the bridge: every servername, and `<app>.<domain>`."""
    names: set[str] = set()
    for app, hosts in servernames:
        names.update(h.lower() for h in hosts)
        if domain:
            names.add(f"{app}.{domain}".lower())
    return names
