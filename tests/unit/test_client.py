"""The admin client against a real aiohttp server on a unix socket, as the daemon serves it:
JSON answers, streamed lines, the daemon's refusals and a daemon that is not there."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from hyperdrive.client import AdminClient
from hyperdrive.errors import DaemonUnavailable, HyperdriveError


async def status(request: web.Request) -> web.Response:
    return web.json_response({"apps": [], "asked": request.path_qs, "version": request.version})


async def echo(request: web.Request) -> web.Response:
    return web.json_response({"got": await request.json()})


async def refuse(request: web.Request) -> web.Response:
    raise web.HTTPConflict(text="web is busy: a deploy is under way")


async def events(request: web.Request) -> web.StreamResponse:
    """Lines written one by one, with pauses, then the end of the stream."""
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    for n in range(3):
        await response.write(json.dumps({"event": "BuildOutput", "n": n}).encode() + b"\n")
        await asyncio.sleep(0.05)
    await response.write_eof()
    return response


@pytest.fixture
async def sock(tmp_path: Path) -> AsyncIterator[Path]:
    app = web.Application()
    app.router.add_get("/status", status)
    app.router.add_post("/triggers", echo)
    app.router.add_post("/refuse", refuse)
    app.router.add_get("/events", events)
    app.router.add_get("/output", events)
    runner = web.AppRunner(app)
    await runner.setup()
    path = tmp_path / "hd.sock"
    await web.UnixSite(runner, str(path)).start()
    try:
        yield path
    finally:
        await runner.cleanup()


async def test_json_answers_and_bodies(sock: Path) -> None:
    client = AdminClient(sock)
    got = await asyncio.to_thread(client.get, "/status?x=1")
    assert got == {"apps": [], "asked": "/status?x=1", "version": [1, 0]}
    body = {"app": "web", "ünïcode": "✓"}
    assert await asyncio.to_thread(client.post, "/triggers", body) == {"got": body}


async def test_the_daemons_refusal_is_its_own_words(sock: Path) -> None:
    client = AdminClient(sock)
    with pytest.raises(HyperdriveError, match="web is busy: a deploy is under way"):
        await asyncio.to_thread(client.post, "/refuse", {})
    with pytest.raises(HyperdriveError, match="Not Found"):
        await asyncio.to_thread(client.get, "/nowhere")


async def test_streams_arrive_line_by_line_to_their_end(sock: Path) -> None:
    client = AdminClient(sock)
    got = await asyncio.to_thread(lambda: list(client.events(follow=True)))
    assert [e["n"] for e in got] == [0, 1, 2]
    lines = await asyncio.to_thread(lambda: list(client.lines("GET", "/output")))
    assert [json.loads(line)["n"] for line in lines] == [0, 1, 2]


def test_no_daemon_is_said_plainly(tmp_path: Path) -> None:
    with pytest.raises(DaemonUnavailable, match="hyperdrive is not running"):
        AdminClient(tmp_path / "absent.sock").get("/status")


async def test_something_else_on_the_socket_is_not_taken_for_the_daemon(tmp_path: Path) -> None:
    async def babble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n")
        writer.close()

    path = tmp_path / "other.sock"
    server = await asyncio.start_unix_server(babble, str(path))
    async with server:
        with pytest.raises(DaemonUnavailable, match="not an HTTP answer"):
            await asyncio.to_thread(AdminClient(path).get, "/status")
