"""The request stream: nginx reports every proxied request, as it ends, to a unix datagram
socket the daemon listens on (syslog framing, one JSON object a datagram; no log file tailing).

It feeds the traffic guard (pipeline/guard.py: each app's responses, live) and /metrics (each
app's requests by status class and a latency histogram). A datagram nginx could not deliver
(the daemon down, its buffer full under a flood) is lost: the counts are a live view, not a
record — nginx's own access.log is the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hyperdrive.modes import make_passable

log = logging.getLogger(__name__)

UPSTREAM_PREFIX = "app_"  # nginx's upstream for app X is app_X ($proxy_host in the format)
TAG = b"hd: "  # syslog tag, set in the access_log line (nginx.conf.j2)
RECEIVE_BUFFER = 4 * 1024 * 1024  # a burst of ~20,000 requests waits here for the loop
# A unix datagram socket queues at most net.unix.max_dgram_qlen datagrams (10 on Debian 12):
# nginx's next ones would be dropped, each with a line in its error.log. Raised like
# ip_forward (network.py), before the socket is made (the limit is taken at its creation).
QUEUE = 4096
QUEUE_SYSCTL = Path("/proc/sys/net/unix/max_dgram_qlen")
WRITER_GROUP = "nogroup"  # nginx's workers: nobody:nogroup (no `user` in nginx.conf)
# Prometheus' own default buckets (seconds), the ones dashboards expect.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)

Listener = Callable[[int], None]  # told each response status of one app


@dataclass(frozen=True)
class Request:
    """One proxied request as nginx logged it."""

    app: str
    status: int
    seconds: float


def parse(datagram: bytes) -> Request | None:
    """`<PRI>TIMESTAMP hd: {"a":"app_web","s":200,"t":0.004}` → Request; None if not ours."""
    _, tag, body = datagram.partition(TAG)
    if not tag:
        return None
    try:
        fields = json.loads(body)
        upstream, status, seconds = fields["a"], int(fields["s"]), float(fields["t"])
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(upstream, str) or not upstream.startswith(UPSTREAM_PREFIX):
        return None  # not proxied to an app (a 404 of the default server, a redirect)
    return Request(upstream.removeprefix(UPSTREAM_PREFIX), status, seconds)


@dataclass
class AppTraffic:
    """One app's counts since the daemon started: by status class, and by latency bucket."""

    classes: dict[str, int] = field(default_factory=dict)  # "2xx" → count
    buckets: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))
    seconds: float = 0.0
    count: int = 0

    def add(self, request: Request) -> None:
        key = f"{min(max(request.status // 100, 1), 5)}xx"
        self.classes[key] = self.classes.get(key, 0) + 1
        for i, bound in enumerate(BUCKETS):
            if request.seconds <= bound:
                self.buckets[i] += 1
        self.seconds += request.seconds
        self.count += 1


def raise_queue(sysctl: Path = QUEUE_SYSCTL) -> None:
    """At least QUEUE datagrams may wait for the daemon; said (not fatal) if it cannot be."""
    try:
        if int(sysctl.read_text()) < QUEUE:
            sysctl.write_text(f"{QUEUE}\n")
    except (OSError, ValueError) as err:
        log.warning("request stream: cannot raise %s to %d: %s", sysctl, QUEUE, err)


def _writable_by_nginx(path: Path) -> None:
    """Only root and nginx's workers (group nogroup) may write requests into the stream: a
    local user who could would make the guard roll an app back."""
    try:
        gid = grp.getgrnam(WRITER_GROUP).gr_gid
    except KeyError:
        os.chmod(path, 0o622)  # noqa: S103 - no such group: nginx's workers must still write
        return
    os.chown(path, 0, gid)
    os.chmod(path, 0o620)


class RequestStream(asyncio.DatagramProtocol):
    """The daemon's end of the stream: counts per app, and the listeners of each app."""

    def __init__(self, path: Path, queue_sysctl: Path = QUEUE_SYSCTL) -> None:
        self.path = path
        self.queue_sysctl = queue_sysctl
        self.apps: dict[str, AppTraffic] = {}
        self.unparsed = 0
        self._listeners: dict[str, list[Listener]] = {}
        self._transport: asyncio.DatagramTransport | None = None

    async def open(self) -> None:
        """Bind the socket nginx's workers (user nobody) write to; a stale one is replaced."""
        for folder in (self.path.parent.parent, self.path.parent):  # made under umask 027
            make_passable(folder)
        raise_queue(self.queue_sysctl)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            self.path.unlink(missing_ok=True)
            sock.bind(str(self.path))
            _writable_by_nginx(self.path)
        except OSError:
            sock.close()
            raise
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, sock=sock)
        self._transport = transport

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        with contextlib.suppress(OSError):
            self.path.unlink()

    def datagram_received(self, data: bytes, addr: object) -> None:
        request = parse(data)
        if request is None:
            self.unparsed += 1
            return
        self.apps.setdefault(request.app, AppTraffic()).add(request)
        for listener in list(self._listeners.get(request.app, ())):
            listener(request.status)

    def error_received(self, exc: Exception) -> None:
        log.warning("request stream: %s", exc)

    def subscribe(self, app: str, listener: Listener) -> Callable[[], None]:
        """Tell `listener` each status of `app` from now on; returns the unsubscribe."""
        self._listeners.setdefault(app, []).append(listener)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._listeners[app].remove(listener)

        return unsubscribe
