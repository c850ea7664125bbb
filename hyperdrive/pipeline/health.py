"""Is the app answering? Health checks, what a ship listens on, and memory kills.

Small probes the pipeline uses before and right after a swap; each is bounded in time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import aiohttp

from hyperdrive.pipeline.model import Sockets

HEALTH_STEP_S = 0.05
HEALTH_FIRST_STEP_S = 0.005  # during the first second: a small app is up in a few ms


async def wait_healthy(
    url: str, seconds: float, give_up: Callable[[], str | None] | None = None
) -> str | None:
    """GET `url` until it answers 2xx/3xx; None when healthy, else what went wrong last.

    `give_up` is asked between tries: a message from it ends the wait at once (a dead app).
    """
    loop = asyncio.get_running_loop()
    brisk, deadline = loop.time() + 1, loop.time() + seconds
    problem = "never answered"
    timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while loop.time() < deadline:
            try:
                async with session.get(url, allow_redirects=False) as response:
                    if response.status < 400:
                        return None
                    problem = f"answered HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as err:
                problem = f"did not answer ({type(err).__name__})"
            if give_up is not None and (reason := give_up()):
                return reason
            await asyncio.sleep(HEALTH_FIRST_STEP_S if loop.time() < brisk else HEALTH_STEP_S)
    return problem


class HttpProbe:
    """The Probe port for real: HTTP GETs with aiohttp, bounded in time."""

    async def wait_healthy(
        self, url: str, seconds: float, give_up: Callable[[], str | None] | None = None
    ) -> str | None:
        return await wait_healthy(url, seconds, give_up)

    async def watch_healthy(self, url: str, seconds: float) -> str | None:
        return await watch_healthy(url, seconds)

    def sockets(self, pid: int | None, port: int) -> Sockets | None:
        return sockets(pid, port)


def listening(pid: int | None) -> dict[int, set[str]] | None:
    """TCP ports listened on in the network namespace of `pid`, each with its addresses
    (from /proc/<pid>/net/tcp and tcp6); None when that cannot be read."""
    if pid is None:
        return None
    found: dict[int, set[str]] = {}
    try:
        for name in ("tcp", "tcp6"):
            for line in Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 3 and fields[3] == "0A":  # LISTEN
                    address, _, port = fields[1].partition(":")
                    found.setdefault(int(port, 16), set()).add(_address(address))
    except (OSError, ValueError):
        return None
    return found


def sockets(pid: int | None, port: int) -> Sockets | None:
    """Established connections to local `port`, and whether something listens on it, in the
    network namespace of `pid` (the ship's own view: no conntrack needed); None: unreadable."""
    if pid is None:
        return None
    clients, listens = 0, False
    try:
        for name in ("tcp", "tcp6"):
            for line in Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) < 4 or int(fields[1].rpartition(":")[2], 16) != port:
                    continue
                clients += fields[3] == "01"  # ESTABLISHED
                listens |= fields[3] == "0A"  # LISTEN
    except (OSError, ValueError):
        return None
    return Sockets(clients, listens)


def _address(hexed: str) -> str:
    """An address as /proc/net/tcp{,6} writes it (32-bit words in host order) made readable."""
    if len(hexed) == 8:
        return str(IPv4Address(bytes.fromhex(hexed)[::-1]))
    words = [bytes.fromhex(hexed[i : i + 8])[::-1] for i in range(0, 32, 8)]
    return str(IPv6Address(b"".join(words)))


WATCH_STEP_S = 0.1
WATCH_FAILURES = 3  # in a row: one lost probe is not a dead app


async def watch_healthy(url: str, seconds: float) -> str | None:
    """GET `url` (a new connection each time) for `seconds`: None while it keeps answering
    2xx/3xx, else how it failed once WATCH_FAILURES probes in a row did."""
    loop = asyncio.get_running_loop()
    deadline, failures = loop.time() + seconds, 0
    connector = aiohttp.TCPConnector(force_close=True)
    timeout = aiohttp.ClientTimeout(total=1)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        while loop.time() < deadline:
            try:
                async with session.get(url, allow_redirects=False) as response:
                    problem = None if response.status < 400 else f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as err:
                problem = f"no answer: {type(err).__name__}"
            failures = failures + 1 if problem else 0
            if problem is not None and failures >= WATCH_FAILURES:
                return problem
            await asyncio.sleep(WATCH_STEP_S)
    return None


# -- memory kills, read from the ship's cgroup (v1 memory.oom_control, v2 memory.events) --
KILLED_FOR_MEMORY = "the app was killed for memory"
CGROUP_ROOT = Path("/sys/fs/cgroup")


def oom_kills(pid: int | None, root: Path = CGROUP_ROOT) -> int:
    """OOM kills in the cgroup of the ship whose init is `pid` (where LXC puts its limit)."""
    if pid is None:
        return 0
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return 0
    unified = root / "unified" if (root / "unified").is_dir() else root
    for line in lines:
        _, controllers, path = line.split(":", 2)
        top = path.strip("/").split("/")[0]
        if "memory" in controllers.split(","):
            return _counter(root / "memory" / top / "memory.oom_control", "oom_kill")
        if controllers == "" and (unified / top / "memory.events").exists():
            return _counter(unified / top / "memory.events", "oom_kill")
    return 0


def _counter(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0
