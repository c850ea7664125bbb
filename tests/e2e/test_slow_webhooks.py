"""Clients that send their headers, then trickle the body, against the real `hd serve`: each
is answered 408 and hung up on within the bound while /healthz answers, they are one event and
a counter; a slow but reasonable delivery still gets through."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyperdrive.hooks.webhook import READ_TIMEOUT_S
from tests.conftest import Daemon, make_daemon
from tests.fixtures.webhooks.forge import SECRET, github, payload

LINGER_S = 10.0  # aiohttp reads (and drops) what is left of a body it did not want this long
BOUND_S = READ_TIMEOUT_S + LINGER_S + 15  # no wait below is longer
DRIP_S = 1.0  # one byte this often


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = make_daemon(tmp_path / "hd", HYPERDRIVE_WEBHOOK_SECRET=SECRET)
    d.start()
    yield d
    d.stop()


def trickler(d: Daemon, path: str) -> socket.socket:
    """A client that sent its headers for a 1 MB body; the body comes a byte at a time."""
    headers, _ = github(b"x" * 1_000_000)
    lines = [f"POST {path} HTTP/1.1", "Host: squadron", "Content-Length: 1000000"]
    lines += [f"{key}: {value}" for key, value in headers.items()]
    conn = socket.create_connection(("127.0.0.1", d.api_port), timeout=5)
    conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return conn


def drip(conn: socket.socket) -> tuple[bytes, bool]:
    """Send one more byte of body: what the server sent meanwhile, and whether it closed."""
    with contextlib.suppress(OSError):  # closed: the read below sees it
        conn.sendall(b"{")
    got = b""
    while select.select([conn], [], [], 0)[0]:
        try:
            data = conn.recv(65536)
        except ConnectionError:
            data = b""
        if not data:
            return got, True
        got += data
    return got, False


def drip_until_closed(d: Daemon, conns: list[socket.socket]) -> list[bytes]:
    """Drip into every connection until the server closes it (bounded); what each was
    answered. /healthz must answer all along."""
    answers = [b""] * len(conns)
    open_ = set(range(len(conns)))
    deadline = time.monotonic() + BOUND_S
    while open_ and time.monotonic() < deadline:
        for index in sorted(open_):
            got, closed = drip(conns[index])
            answers[index] += got
            if closed:
                open_.discard(index)
        assert d.get("/healthz", timeout=5)["status"] == "ok"
        time.sleep(DRIP_S)
    assert not open_, f"{len(open_)} trickling connections still open after {BOUND_S:g} s"
    return answers


def metric(d: Daemon, name: str) -> float:
    url = f"http://127.0.0.1:{d.api_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
    raise AssertionError(f"/metrics has no {name}")


def test_trickled_bodies_are_cut_off_and_healthz_answers_meanwhile(daemon: Daemon) -> None:
    conns = [trickler(daemon, "/hooks/github") for _ in range(3)]
    conns.append(trickler(daemon, "/healthz"))  # a body nobody reads: dropped, then closed
    try:
        answers = drip_until_closed(daemon, conns)
    finally:
        for conn in conns:
            conn.close()
    for index in range(3):
        assert answers[index].startswith(b"HTTP/1.1 408 "), answers[index][:80]
        assert b"body not received within" in answers[index]
    assert answers[3].split(b"\r\n")[0].split()[1] == b"405", answers[3][:80]
    assert metric(daemon, "hyperdrive_webhook_slow_bodies") == 3
    assert metric(daemon, "hyperdrive_webhook_refusals") == 3
    refused = [e for e in daemon.events() if e["event"] == "WebhookRejected"]
    assert len(refused) == 1, refused  # one event for the source; the rest counted
    assert refused[0]["status"] == 408
    assert refused[0]["source"] == "127.0.0.1"


def test_a_slow_but_reasonable_delivery_still_gets_through(daemon: Daemon) -> None:
    headers, body = github(payload("github_push"), delivery="slow-1")
    lines = ["POST /hooks/github HTTP/1.1", "Host: squadron", f"Content-Length: {len(body)}"]
    lines += [f"{key}: {value}" for key, value in headers.items()]
    lines += ["Connection: close"]
    with socket.create_connection(("127.0.0.1", daemon.api_port), timeout=BOUND_S) as conn:
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        quarter = len(body) // 4 + 1
        for offset in range(0, len(body), quarter):  # four pieces over ~3 s
            time.sleep(1)
            conn.sendall(body[offset : offset + quarter])
        answer = b""
        while data := conn.recv(65536):
            answer += data
    head, _, text = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 202 "), answer[:200]
    assert json.loads(text)["status"] == "ignored"  # nobody follows that repository here
    assert metric(daemon, "hyperdrive_webhook_slow_bodies") == 0
