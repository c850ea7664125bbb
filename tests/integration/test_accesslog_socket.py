"""The request stream's socket as the daemon (root) makes it: datagrams counted per app and
told to listeners, and a socket only root and nginx's workers may write into."""

from __future__ import annotations

import asyncio
import grp
import socket
from pathlib import Path

import pytest

from hyperdrive.accesslog import BUCKETS, RequestStream
from tests.unit.test_accesslog import line

pytestmark = [pytest.mark.root]  # the socket is given to root and nginx's group


async def test_the_stream_counts_each_app_and_tells_its_listeners(tmp_path: Path) -> None:
    qlen = tmp_path / "max_dgram_qlen"  # the host's own /proc/sys is left alone here
    qlen.write_text("10\n")
    stream = RequestStream(tmp_path / "run" / "requests.sock", queue_sysctl=qlen)
    await stream.open()
    assert int(qlen.read_text()) >= 1024, "nginx may queue more than 10 datagrams"
    heard: list[int] = []
    stop = stream.subscribe("web", heard.append)
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        for datagram in (line("app_web", 200, 0.004), line("app_web", 502, 3.0), b"junk"):
            sender.sendto(datagram, str(stream.path))
        async with asyncio.timeout(5):
            while len(heard) < 2 or stream.unparsed < 1:
                await asyncio.sleep(0.01)
        stop()
        sender.sendto(line("app_web", 200, 0.01), str(stream.path))
        async with asyncio.timeout(5):
            while stream.apps["web"].count < 3:
                await asyncio.sleep(0.01)
    finally:
        sender.close()
        await stream.close()
    assert heard == [200, 502], "told as they come, until unsubscribed"
    web = stream.apps["web"]
    assert web.classes == {"2xx": 2, "5xx": 1}
    assert web.buckets[0] == 1  # 4 ms <= 5 ms
    assert web.buckets[BUCKETS.index(5.0)] == 3  # cumulative, as Prometheus wants
    assert not stream.path.exists(), "closed: the socket is gone"


async def test_only_root_and_nginxs_workers_may_write_into_the_stream(tmp_path: Path) -> None:
    qlen = tmp_path / "max_dgram_qlen"
    qlen.write_text("4096\n")
    stream = RequestStream(tmp_path / "requests.sock", queue_sysctl=qlen)
    await stream.open()
    try:
        mode = stream.path.stat()
        assert mode.st_mode & 0o777 == 0o620
        assert grp.getgrgid(mode.st_gid).gr_name == "nogroup"
    finally:
        await stream.close()
