"""Real nats-server nodes for the fleet's tests: loopback, distinct ports, a store under tmp.

Each node is started with the daemon's own NatsNode (the managed node's code) and killed in
teardown; a missing nats-server fails the test (apt-get install nats-server).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nats

from hyperdrive.config import Listen
from hyperdrive.fleet.node import NatsNode, NodeSpec
from hyperdrive.fleet.state import Creds
from tests.conftest import free_port

CREDS = Creds("hyperdrive", "fleet-test-secret-0123456789")


@dataclass
class Node:
    name: str
    node: NatsNode
    url: str


async def start_nodes(tmp: Path, count: int, creds: Creds = CREDS) -> list[Node]:
    """`count` nodes; more than one form a JetStream cluster (every node lists every peer)."""
    assert shutil.which("nats-server"), "nats-server is missing: apt-get install nats-server"
    ports = [(free_port(), free_port()) for _ in range(count)]
    routes = [f"nats://127.0.0.1:{cluster}" for _, cluster in ports] if count > 1 else []
    nodes = []
    for index, (client, cluster) in enumerate(ports):
        name = f"n{index}"
        folder = tmp / f"nats-{name}"
        folder.mkdir(parents=True)
        node = NatsNode(folder)
        peers = [r for r in routes if not r.endswith(f":{cluster}")]
        spec = NodeSpec(
            name, folder, Listen("127.0.0.1", client), Listen("127.0.0.1", cluster), creds, peers
        )
        node.configure(spec)
        await node.start()
        nodes.append(Node(name, node, f"nats://127.0.0.1:{client}"))
    for node in nodes:
        await jetstream_ready(node.url, creds)
    return nodes


async def jetstream_ready(url: str, creds: Creds, timeout: float = 30.0) -> None:
    """Until the node answers JetStream requests (a cluster first elects its meta leader)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            nc = await nats.connect(
                url,
                user=creds.user,
                password=creds.password,
                allow_reconnect=False,
                connect_timeout=2,
            )
            try:
                await nc.jetstream().account_info()
                return
            finally:
                await nc.close()
        except Exception as err:  # noqa: BLE001 - not ready yet: any error
            last = err
            await asyncio.sleep(0.2)
    raise AssertionError(f"JetStream at {url} not ready within {timeout} s: {last}")


async def until(predicate: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
