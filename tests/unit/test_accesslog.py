"""The request stream: nginx's syslog datagrams parsed, counted per app, told to listeners."""

from __future__ import annotations

import asyncio
import grp
import socket
from pathlib import Path

import pytest

from hyperdrive.accesslog import BUCKETS, UPSTREAM_PREFIX, Request, RequestStream, parse
from hyperdrive.nginx_reload import AppRoute, render


def line(app: str, status: int, seconds: float) -> bytes:
    """A datagram as nginx sends it (`syslog:…,nohostname,tag=hd` and the hd_stream format)."""
    body = f'{{"a":"{app}","s":{status},"t":{seconds:.3f}}}'
    return f"<190>Dec  1 18:02:55 hd: {body}".encode()


def test_a_datagram_is_the_app_its_status_and_its_time() -> None:
    assert parse(line("app_web", 503, 0.25)) == Request("web", 503, 0.25)


@pytest.mark.parametrize(
    "datagram",
    [
        line("", 404, 0.0),  # the default server's 404: no app
        line("elsewhere", 200, 0.0),
        b"<190>Dec  1 18:02:55 other: {}",
        b"<190>Dec  1 18:02:55 hd: not json",
        b'<190>Dec  1 18:02:55 hd: {"a":"app_web"}',
        b'<190>Dec  1 18:02:55 hd: {"a":1,"s":200,"t":0}',
        b"",
    ],
)
def test_what_is_not_an_apps_request_is_skipped(datagram: bytes) -> None:
    assert parse(datagram) is None


def test_nginx_sends_the_stream_to_the_daemons_socket_named_by_upstream() -> None:
    files = render([AppRoute("web", "10.0.0.1", 20000)], prefix=Path("/srv/ng"), http_port=80)
    main = files["nginx.conf"]
    assert "access_log syslog:server=unix:/srv/ng/run/requests.sock,nohostname,tag=hd" in main
    assert "$proxy_host" in main
    assert f"upstream {UPSTREAM_PREFIX}web {{" in files["upstream/web.conf"]


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
