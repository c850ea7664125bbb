"""The request stream: nginx's syslog datagrams parsed, counted per app, told to listeners."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyperdrive.accesslog import UPSTREAM_PREFIX, Request, parse
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
    assert f"upstream {UPSTREAM_PREFIX}web {{" in files["upstream.conf"]
