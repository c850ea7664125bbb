"""A push's commits reach every squadron as a git bundle in JetStream's object store (real
nats-server cluster, real git)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import nats
import pytest

from hyperdrive.fleet.bundles import Bundles
from hyperdrive.fleet.link import BUNDLES, CONNECTED, FleetLink, Identity
from hyperdrive.fleet.outbox import Outbox
from hyperdrive.gitserver import package_hooks
from hyperdrive.names import ZERO_SHA
from hyperdrive.spool import FileSpool
from hyperdrive.triggers import RefUpdate, Trigger
from tests.integration.nats_fixtures import CREDS, Node, start_nodes, until

MAIN = "refs/heads/main"


def git(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.strip()


class Squadron:
    """A squadron's spool, hosted repos and fleet link, as the daemon wires them."""

    def __init__(self, root: Path, name: str, url: str) -> None:
        self.root, self.name, self.url = root, name, url
        self.git_dir = root / "git"
        self.git_dir.mkdir(parents=True)
        self.spool = FileSpool(root / "spool")
        self.link: FleetLink | None = None
        self.apps: dict[str, str] = {}  # app -> the sha it serves here (as `hd status` shows)

    def rows(self) -> list[dict[str, object]]:
        return [
            {"app": app, "sha": sha[:7], "ship": f"{app}-1", "last_deploy": "finished 5 ms"}
            for app, sha in self.apps.items()
        ]

    async def start(self) -> FleetLink:
        if self.link is None:
            await self.spool.open()
        identity = Identity(self.name, f"id-{self.name}", "test")
        outbox = Outbox(self.root / "spool" / "fleet-outbox.jsonl")
        code = Bundles(self.git_dir, package_hooks())
        self.link = FleetLink(
            identity, (self.url,), CREDS, self.spool, outbox, code=code, app_rows=self.rows
        )
        await self.link.start()
        await until(lambda: self.link is not None and self.link.state == CONNECTED, "connected")
        return self.link

    async def stop(self) -> None:
        if self.link is not None:
            await self.link.stop()

    def tip(self, app: str, ref: str = MAIN) -> str | None:
        repo = self.git_dir / f"{app}.git"
        if not repo.is_dir():
            return None
        done = subprocess.run(
            ["git", f"--git-dir={repo}", "rev-parse", "-q", "--verify", ref],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return done.stdout.strip() or None


class Pusher:
    """A work tree pushing to squadron `sq`'s hosted repo; each push becomes its trigger."""

    def __init__(self, root: Path, sq: Squadron, app: str) -> None:
        self.work, self.sq, self.app = root / f"work-{app}", sq, app
        self.work.mkdir(parents=True)
        self.repo = sq.git_dir / f"{app}.git"
        git("init", "-q", "--bare", str(self.repo))
        git("init", "-q", "-b", "main", str(self.work))
        self.tip = ZERO_SHA

    async def push(self, text: str) -> Trigger:
        (self.work / "index.html").write_text(text)
        git("add", "-A", cwd=self.work)
        git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", text, cwd=self.work)
        new = git("rev-parse", "HEAD", cwd=self.work)
        git("push", "-q", str(self.repo), "main", cwd=self.work)
        update = RefUpdate(MAIN, self.tip, new)
        hq = self.app == "headquarters"
        trigger = Trigger.hq_push(update, "ann") if hq else Trigger.push(self.app, update, "ann")
        self.tip = new
        assert await self.sq.spool.put(trigger)  # what post-receive hands the daemon
        return trigger


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[list[Node]]:
    nodes = await start_nodes(tmp_path / "nats", 3)
    yield nodes
    for node in nodes:
        await node.node.stop()


@pytest.fixture
async def squadrons(tmp_path: Path) -> AsyncIterator[Callable[[str, str], Squadron]]:
    made: list[Squadron] = []

    def make(name: str, url: str) -> Squadron:
        made.append(Squadron(tmp_path / name, name, url))
        return made[-1]

    yield make
    for squadron in made:
        await squadron.stop()
        await squadron.spool.close()


async def test_a_push_reaches_the_other_squadrons_repo(cluster: list[Node], squadrons, tmp_path):
    a, b = squadrons("alpha", cluster[0].url), squadrons("bravo", cluster[1].url)
    await a.start()
    await b.start()
    pusher = Pusher(tmp_path, a, "shop")
    first = await pusher.push("v1")
    await until(lambda: b.spool.waiting(first.id), "bravo has the push")
    assert b.tip("shop") == pusher.tip  # the commits came before the trigger
    assert "unfetched" not in b.spool.pending()[0].data
    hooks = git(f"--git-dir={b.git_dir / 'shop.git'}", "config", "core.hooksPath")
    assert hooks == str(package_hooks())  # made as the git server makes a hosted repo
    second = await pusher.push("v2")  # old..new only
    await until(lambda: b.spool.waiting(second.id), "bravo has the second push")
    assert b.tip("shop") == pusher.tip
    shown = git(f"--git-dir={b.git_dir / 'shop.git'}", "show", f"{pusher.tip}:index.html")
    assert shown == "v2"


async def test_a_squadron_that_missed_pushes_gets_them_with_their_origin_gone(
    cluster: list[Node], squadrons, tmp_path
):
    a, b = squadrons("alpha", cluster[0].url), squadrons("bravo", cluster[1].url)
    await a.start()
    await b.start()
    await b.stop()  # bravo is down
    pusher = Pusher(tmp_path, a, "shop")
    pushes = [await pusher.push(f"v{n}") for n in range(1, 4)]
    await until(lambda: a.link is not None and not a.link.outbox, "alpha published")
    await a.stop()
    shutil.rmtree(a.git_dir)  # the squadron that took the pushes is gone
    c = squadrons("charlie", cluster[2].url)  # joins after the first pushes: it sees none
    await c.start()
    await b.start()
    await until(lambda: all(b.spool.waiting(t.id) for t in pushes), "bravo caught up")
    assert b.tip("shop") == pusher.tip
    # charlie gets only a later push, whose commits need the earlier ones: fetched back
    a2 = squadrons("alpha2", cluster[0].url)
    await a2.start()  # (as a joiner it may have begun to take shop's newest push already)
    shutil.copytree(b.git_dir / "shop.git", a2.git_dir / "shop.git", dirs_exist_ok=True)
    pusher.sq, pusher.repo = a2, a2.git_dir / "shop.git"
    later = await pusher.push("v4")
    await until(lambda: c.spool.waiting(later.id), "charlie has the later push")
    assert "unfetched" not in c.spool.pending()[0].data
    assert c.tip("shop") == pusher.tip


async def test_a_push_whose_bundle_is_missing_fails_only_there(
    cluster: list[Node], squadrons, tmp_path
):
    a, b = squadrons("alpha", cluster[0].url), squadrons("bravo", cluster[1].url)
    await a.start()
    await b.start()
    pusher = Pusher(tmp_path, a, "shop")
    shutil.rmtree(pusher.repo)  # alpha cannot make the bundle: the trigger goes out without
    pusher.repo = tmp_path / "elsewhere.git"
    git("init", "-q", "--bare", str(pusher.repo))
    trigger = await pusher.push("v1")
    await until(lambda: b.spool.waiting(trigger.id), "bravo has the push")
    why = b.spool.pending()[0].data["unfetched"]
    assert "not in the fleet's bundle store" in why
    assert a.spool.waiting(trigger.id)
    assert "unfetched" not in a.spool.pending()[0].data


async def test_fleet_status_shows_every_squadron_and_each_app_on_each(
    cluster: list[Node], squadrons, tmp_path
):
    a, b = squadrons("alpha", cluster[0].url), squadrons("bravo", cluster[1].url)
    await a.start()
    await b.start()
    pusher = Pusher(tmp_path, a, "shop")
    trigger = await pusher.push("v1")
    await until(lambda: b.spool.waiting(trigger.id), "bravo has the push")
    for sq in (a, b):  # each deploys it; the outcome is news for the fleet
        sq.apps["shop"] = pusher.tip
        await sq.spool.done(trigger.id, "finished")
    assert b.link is not None

    async def shown() -> dict:
        assert b.link is not None
        return await b.link.fleet_view()

    for _ in range(100):
        view = await shown()
        if len(view["apps"]) == 1 and len(view["apps"][0]["squadrons"]) == 2:
            break
        await asyncio.sleep(0.1)
    assert [s["name"] for s in view["squadrons"]] == ["alpha", "bravo"]
    assert {s["version"] for s in view["squadrons"]} == {"test"}
    on = view["apps"][0]["squadrons"]
    assert view["apps"][0]["app"] == "shop"
    assert {name: (st["sha"], st["health"]) for name, st in on.items()} == {
        "alpha": (pusher.tip[:7], "healthy"),
        "bravo": (pusher.tip[:7], "healthy"),
    }
    assert a.link is not None
    await a.link.release_name()  # `hd fleet leave`: gone from the view, with its apps
    view = await shown()
    assert [s["name"] for s in view["squadrons"]] == ["bravo"]
    assert list(view["apps"][0]["squadrons"]) == ["bravo"]


async def test_a_chain_whose_start_is_gone_begins_again_with_the_whole_history(
    cluster: list[Node], squadrons, tmp_path
):
    a = squadrons("alpha", cluster[0].url)
    await a.start()
    pusher = Pusher(tmp_path, a, "shop")
    first = await pusher.push("v1")
    await until(lambda: a.link is not None and not a.link.outbox, "alpha published v1")
    nc = await nats.connect(cluster[1].url, user=CREDS.user, password=CREDS.password)
    try:  # the store forgot v1's bundle (its age, say)
        await (await nc.jetstream().object_store(BUNDLES)).delete(f"shop/{first.data['new']}")
    finally:
        await nc.close()
    b = squadrons("bravo", cluster[1].url)  # joins now: it has none of shop's history
    await b.start()
    later = await pusher.push("v2")
    await until(lambda: b.spool.waiting(later.id), "bravo has v2")
    # joining, bravo took the fleet's newest push (v1): its bundle is gone, so that one
    # fails here, saying so; v2 then carries the whole history
    taken = {t.id: t for t in b.spool.pending()}
    assert "not in the fleet's bundle store" in taken[first.id].data["unfetched"]
    assert "unfetched" not in taken[later.id].data
    assert b.tip("shop") == pusher.tip


async def test_a_squadron_that_joins_later_gets_the_newest_push_of_each_hosted_repo(
    cluster: list[Node], squadrons, tmp_path
):
    a = squadrons("alpha", cluster[0].url)
    await a.start()
    shop, hq = Pusher(tmp_path / "shop", a, "shop"), Pusher(tmp_path / "hq", a, "headquarters")
    await shop.push("v1")
    newest = await shop.push("v2")
    orders = await hq.push("orders")
    await until(lambda: not a.link.outbox, "alpha's pushes published")
    c = squadrons("charlie", cluster[2].url)  # joins now: its consumer starts at "new"
    await c.start()
    await until(lambda: c.spool.waiting(orders.id), "charlie has HQ's newest push")
    pending = [t.id for t in c.spool.pending()]
    assert pending == [newest.id, orders.id]  # the newest of each repo; the app's before HQ's
    assert c.tip("shop") == shop.tip
    assert c.tip("headquarters") == hq.tip
    shown = git(f"--git-dir={c.git_dir / 'shop.git'}", "show", f"{shop.tip}:index.html")
    assert shown == "v2"
    await c.stop()
    await c.start()  # a new session of a squadron already in: nothing taken again
    await asyncio.sleep(0.5)
    assert [t.id for t in c.spool.pending()] == pending
