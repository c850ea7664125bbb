"""A throw-away test network: a bridge with a fixed MAC, network-namespace "ships" that each
answer HTTP with their own identity, and a new-connection-per-request load client.

Run as a script (`python net_fixtures.py serve IDENTITY PORT`) it is the ships' HTTP/1.1 server.
Everything is created under a unique tag and removed by `ShipNet.close()`, even after failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

SUBNET = "10.213.210"  # the test network DESIGN.md reserves for these tests
BRIDGE_MAC = "02:00:0a:d5:d2:01"  # fixed: the bridge must not take a leaving veth's MAC


def sh(*argv: str, check: bool = True) -> str:
    """Run a program (argument list, timeout); raise with its own output when it fails."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr}{done.stdout}")
    return done.stdout


def unique_tag() -> str:
    """`hdt` + 4 hex digits: short enough for interface names (15 chars)."""
    return "hdt" + secrets.token_hex(2)


def free_port() -> int:
    """A TCP port nothing listens on right now (any address)."""
    from tests.conftest import free_port as pick  # noqa: PLC0415 - this file also runs as a script

    return pick("0.0.0.0")


def wait_listening(host: str, port: int, seconds: float = 10.0) -> None:
    """Block until something accepts on host:port, bounded."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@dataclass
class Ship:
    """A namespace with one veth into the bridge, running the identity HTTP server."""

    netns: str
    ip: str
    identity: str
    port: int = 8000
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the HTTP server in the namespace and wait until it answers."""
        argv = [sys.executable, __file__, "serve", self.identity, str(self.port)]
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, *argv],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_listening(self.ip, self.port)

    def stop(self) -> None:
        """Kill the server (a retired ship): established connections are reset."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


@dataclass
class ShipNet:
    """A bridge `<tag>br0` at SUBNET.1/24 and ships at SUBNET.2, .3, …"""

    tag: str = field(default_factory=unique_tag)
    ships: list[Ship] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"{self.tag}br0"

    @property
    def bridge_ip(self) -> str:
        return f"{SUBNET}.1"

    @property
    def bridge_cidr(self) -> str:
        return f"{SUBNET}.1/24"

    def open(self) -> ShipNet:
        """Create the bridge (fixed MAC, address, up)."""
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "link", "set", self.bridge, "address", BRIDGE_MAC)
        sh("ip", "addr", "add", self.bridge_cidr, "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        return self

    def ship(self, identity: str, port: int = 8000) -> Ship:
        """Add a namespace ship on the next address and start its server."""
        index = len(self.ships) + 1
        netns, veth = f"{self.tag}s{index}", f"{self.tag}v{index}"
        ip = f"{SUBNET}.{index + 1}"
        sh("ip", "netns", "add", netns)
        ship = Ship(netns, ip, identity, port)
        self.ships.append(ship)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
        sh("ip", "link", "set", veth, "master", self.bridge, "up")
        inside = ("ip", "netns", "exec", netns, "ip")
        sh(*inside, "addr", "add", f"{ip}/24", "dev", "eth0")
        sh(*inside, "link", "set", "eth0", "up")
        sh(*inside, "link", "set", "lo", "up")
        sh(*inside, "route", "add", "default", "via", self.bridge_ip)
        ship.start()
        return ship

    def close(self) -> None:
        """Remove every ship, namespace and the bridge; never raises for what is already gone."""
        for ship in self.ships:
            ship.stop()
            sh("ip", "netns", "delete", ship.netns, check=False)
        sh("ip", "link", "delete", self.bridge, check=False)


@dataclass
class Counts:
    """What a load client saw."""

    requests: int = 0
    non_2xx: int = 0
    errors: int = 0
    answers: dict[str, int] = field(default_factory=dict)


async def new_connection_client(port: int, path: str, stop: asyncio.Event, counts: Counts) -> None:
    """GET path on a NEW connection per request until `stop`; count statuses and errors."""
    request = f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    while not stop.is_set():
        counts.requests += 1
        try:
            async with asyncio.timeout(5):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request)
                answer = await reader.read()
                writer.close()
        except (OSError, TimeoutError):
            counts.errors += 1
            continue
        head, _, body = answer.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 2"):
            counts.non_2xx += 1
            continue
        with contextlib.suppress(ValueError):
            ship = json.loads(body)["ship"]
            counts.answers[ship] = counts.answers.get(ship, 0) + 1


# ---- the ships' HTTP/1.1 keep-alive server (run as a script inside a namespace) ----


async def _serve_connection(
    identity: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Answer requests on one connection with JSON naming this ship, until it closes."""
    try:
        while request_line := await reader.readline():
            path = request_line.decode("latin-1").split(" ")[1]
            headers = {}
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            if length := int(headers.get("content-length", "0")):
                await reader.readexactly(length)
            body = json.dumps(
                {
                    "ship": identity,
                    "path": path,
                    "host": headers.get("host", ""),
                    "prefix": headers.get("x-forwarded-prefix"),
                }
            ).encode()
            close = headers.get("connection", "").lower() == "close"
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n"
            writer.write(
                head.encode() + (b"Connection: close\r\n" if close else b"") + b"\r\n" + body
            )
            await writer.drain()
            if close:
                break
    except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def _serve(identity: str, port: int) -> None:
    """Listen on every address of the namespace, forever."""
    server = await asyncio.start_server(
        lambda r, w: _serve_connection(identity, r, w), "0.0.0.0", port, backlog=1024
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    asyncio.run(_serve(sys.argv[2], int(sys.argv[3])))


def children(pid: int) -> set[int]:
    """The pids whose parent is `pid` (an nginx master's workers)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.add(int(stat.parent.name))
    return found


def http_get(port: int, path: str, host: str | None = None) -> tuple[int, dict[str, str], str]:
    """One GET on 127.0.0.1:port on a new connection: (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": host} if host else {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        conn.close()


def ship_of(port: int, path: str, host: str | None = None) -> str:
    """Which ship answered a GET (raises if nginx itself answered)."""
    status, _, body = http_get(port, path, host)
    assert status == 200, (status, body)
    return str(json.loads(body)["ship"])
