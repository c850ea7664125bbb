"""The public API's guards on a real aiohttp server over real HTTP on loopback: idle and
slow clients are closed, a flood of them never locks out /healthz, and past the cap with
every connection busy a newcomer gets a 503 rather than a hang."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from hyperdrive.api import Api, TokenStore
from hyperdrive.eventlog import JsonlEventLog
from hyperdrive.httpgate import GuardedSite, serve_public
from hyperdrive.spool import FileSpool

IDLE_S = 1.0
CAP = 20
BOUND_S = 15.0  # every wait below is bounded by this


@dataclass
class Public:
    site: GuardedSite
    release: asyncio.Event

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.site.bound_port}"


@pytest.fixture
async def public(tmp_path: Path) -> AsyncIterator[Public]:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await asyncio.wait_for(release.wait(), BOUND_S)
        return web.Response(text="done\n")

    api = Api(
        JsonlEventLog(tmp_path / "events.jsonl"), FileSpool(tmp_path / "spool"),
        lambda: {}, TokenStore(tmp_path / "tokens.json"), lambda: {},
        public_routes=[lambda app: app.router.add_get("/slow", slow)],
    )  # fmt: skip
    runner, site = await serve_public(
        api.public(), "127.0.0.1", 0, idle_timeout=IDLE_S, max_connections=CAP
    )
    try:
        yield Public(site, release)
    finally:
        release.set()
        await runner.cleanup()


async def _healthz(url: str) -> int:
    timeout = aiohttp.ClientTimeout(total=BOUND_S)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"{url}/healthz") as response,
    ):
        return response.status


async def _eof(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (bounded)."""
    try:
        return await asyncio.wait_for(reader.read(), BOUND_S)
    except ConnectionError:
        return b""


async def test_idle_and_slow_clients_are_closed_and_healthz_still_answers(
    public: Public,
) -> None:
    port = public.site.bound_port
    flood = []
    for index in range(3 * CAP):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if index % 2:  # headers that never end
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        flood.append((reader, writer))
    try:
        for _ in range(5):
            assert await _healthz(public.url) == 200
        leftovers = await asyncio.gather(*(_eof(reader) for reader, _ in flood))
        assert not any(leftovers)  # closed without a response, none kept open
        assert public.site.evicted >= 2 * CAP
    finally:
        for _, writer in flood:
            writer.close()


async def test_past_the_cap_with_every_connection_busy_a_newcomer_gets_503(
    public: Public,
) -> None:
    timeout = aiohttp.ClientTimeout(total=BOUND_S)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def slow() -> int:
            async with session.get(f"{public.url}/slow") as response:
                return response.status

        held = [asyncio.create_task(slow()) for _ in range(CAP)]
        for _ in range(int(BOUND_S / 0.05)):
            if public.site.open_connections() >= CAP:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # let every held request reach its handler
        reader, writer = await asyncio.open_connection("127.0.0.1", public.site.bound_port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await _eof(reader)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 503 ")
        public.release.set()
        assert await asyncio.gather(*held) == [200] * CAP
    assert await _healthz(public.url) == 200
