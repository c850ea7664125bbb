"""The courier's real HTTP client against a local server per forge.

No forge is reachable from this machine: tests/fixtures/fake_forge.py is a real aiohttp server
on loopback that checks each request against that forge's documented statuses API (path,
method, auth header, JSON fields) and the Standard Webhooks signature, refusing what the real
one would refuse. The courier's clock is the real one.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hyperdrive.headquarters import parse_orders
from hyperdrive.headquarters.orders import Orders
from hyperdrive.outbound import keys
from hyperdrive.outbound.courier import Courier, Links
from hyperdrive.outbound.journal import DeliveryJournal
from hyperdrive.pipeline import events as ev
from hyperdrive.pipeline.ports import SystemClock
from tests.fixtures.fake_forge import FakeForge

SHA = "c" * 40
TOKEN = "forge-token-123"
SECRET = "whsec_c2VjcmV0LWZvci10aGUtdGVhbS0wMTIzNDU2Nzg5"
WORDS = {  # pending, success, failure as each forge says them
    "github": ("pending", "success", "failure"),
    "gitlab": ("running", "success", "failed"),
    "gitea": ("pending", "success", "failure"),
    "bitbucket": ("INPROGRESS", "SUCCESSFUL", "FAILED"),
}


def courier(tmp_path: Path, orders_text: str) -> tuple[Courier, list[ev.Event]]:
    journal = DeliveryJournal(tmp_path / "outbound" / "deliveries.jsonl")
    journal.open()
    keys.store(tmp_path / "pk", "web", keys.FORGE_TOKEN, TOKEN)
    keys.store(tmp_path / "pk", "web", keys.NOTIFY_SECRET, SECRET)
    orders = parse_orders(orders_text, "web/orders")
    emitted: list[ev.Event] = []

    def orders_of(app: str) -> Orders:
        return orders

    found = Courier(
        journal=journal,
        private_keys=tmp_path / "pk",
        orders=orders_of,
        owner=lambda app: app,
        mask=lambda text: text,
        links=Links("hd.test", 80, 8421),
        clock=SystemClock(),
        emit=emitted.append,
    )
    return found, emitted


async def until_sent(c: Courier) -> None:
    """Send until nothing is pending, sleeping out each backoff (bounded)."""
    for _ in range(10):
        wait = await c.send_due()
        if not c.journal.pending:
            return
        await asyncio.sleep(min(wait or 0.05, 5))
    raise AssertionError(f"still pending: {list(c.journal.pending)}")


@pytest.mark.parametrize("kind", ["github", "gitlab", "gitea", "bitbucket"])
async def test_each_forge_gets_its_documented_status_calls(tmp_path: Path, kind: str) -> None:
    with FakeForge(TOKEN, SECRET, kind=kind) as forge:
        text = f"forge {kind} acme/web {forge.api}\nnotify {forge.url}/notify\n"
        c, _ = courier(tmp_path, text)
        await c.on_event(ev.DeployQueued(app="web", deploy="t-1", sha=SHA))
        await until_sent(c)
        await c.on_event(ev.DeployFinished(app="web", deploy="t-1", sha=SHA, url="http://w/"))
        await until_sent(c)
        await c.on_event(ev.DeployQueued(app="web", deploy="t-2", sha=SHA))
        await c.on_event(ev.DeployFailed(app="web", deploy="t-2", message="health failed"))
        await until_sent(c)
    assert forge.refusals == []
    pending, success, failure = WORDS[kind]
    assert [s["state"] for s in forge.statuses] == [pending, success, failure]
    assert {s["sha"] for s in forge.statuses} == {SHA}
    if kind == "gitlab":
        assert forge.statuses[0]["path"].startswith("/api/v4/projects/acme%2Fweb/")
    assert [n["type"] for n in forge.notified] == [
        "deploy.queued",
        "deploy.finished",
        "deploy.queued",
        "deploy.failed",
    ]


async def test_a_forge_answering_500_gets_the_status_after_the_backoff(tmp_path: Path) -> None:
    with FakeForge(TOKEN, SECRET, fail_first=1) as forge:
        c, emitted = courier(tmp_path, f"forge github acme/web {forge.api}\n")
        await c.on_event(ev.DeployFinished(app="web", deploy="t-1", sha=SHA, url="http://w/"))
        await until_sent(c)
    assert forge.answered == [500, 201]
    assert [e.name for e in emitted] == ["DeliveryDeferred", "DeliverySent"]
    again = DeliveryJournal(c.journal.path)  # what a restart would find: nothing to send
    again.open()
    assert again.pending == {}
