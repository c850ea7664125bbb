"""Preview ships per branch on the in-memory fakes: slugs, routing, env, retirement, `max`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hyperdrive.errors import OrdersRejected
from hyperdrive.headquarters import Headquarters, parse_orders
from hyperdrive.hooks.webhook import StaticResolver
from hyperdrive.names import is_app_name
from hyperdrive.pipeline.bus import FINISHED
from hyperdrive.pipeline.commands import Deploy, Retire, from_trigger
from hyperdrive.pipeline.previews import (
    MAX_NAME,
    PreviewRefused,
    Previews,
    preview_name,
    slug,
)
from hyperdrive.triggers import RefUpdate, Trigger
from tests.unit.deploy_world import STATIC, Squadron, World


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = World(tmp_path)
    yield world
    world.close()


# ─── slugs ───────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("branch", "expected"),
    [
        ("feature/x", "feature-x"),
        ("Fix_Bug.42", "fix-bug-42"),
        ("a--b//c", "a-b-c"),
        ("-lead-", "lead"),
    ],
)
def test_a_branch_becomes_a_plain_slug(branch: str, expected: str) -> None:
    assert slug(branch, 30) == expected


def test_a_long_branch_is_cut_and_keeps_a_hash_that_tells_it_apart() -> None:
    one, two = "feature/" + "a" * 60 + "-one", "feature/" + "a" * 60 + "-two"
    assert len(slug(one, 20)) <= 20
    assert slug(one, 20) != slug(two, 20)
    assert slug(one, 20).startswith("feature-aaaa")


def test_a_branch_with_nothing_slug_worthy_gets_a_hashed_name() -> None:
    assert slug("Ünïcode", 30) == "unicode"
    made = slug("日本", 30)
    assert made.startswith("b-")
    assert len(made) == 8
    assert slug("日本", 30) != slug("中国", 30)


def test_two_branches_with_one_slug_are_told_apart_by_a_hash() -> None:
    assert preview_name("web", "feature/x") == "web--feature-x"
    hashed = preview_name("web", "feature/x", hashed=True)
    assert hashed.startswith("web--feature-x-")
    assert hashed != preview_name("web", "feature-x")


def test_an_app_name_too_long_for_a_preview_is_refused_clearly() -> None:
    with pytest.raises(PreviewRefused, match="no room for a preview slug"):
        preview_name("a" * 33, "feature/x")


@given(st.text(min_size=1, max_size=300), st.integers(1, 30))
def test_every_preview_name_is_a_valid_app_name(branch: str, app_length: int) -> None:
    try:
        name = preview_name("w" * app_length, branch)
    except PreviewRefused:
        assert app_length > MAX_NAME - 2 - 8
        return
    assert is_app_name(name)
    assert len(name) <= MAX_NAME


# ─── orders ──────────────────────────────────────────────────────────────────


def test_previews_orders_default_max_and_refusals() -> None:
    assert parse_orders("previews on\n", "web/orders").previews == 5
    assert parse_orders("previews on max 2\n", "web/orders").previews == 2
    assert parse_orders("previews off\n", "web/orders").previews == 0
    assert parse_orders("", "web/orders").previews == 0
    for bad in ("previews", "previews yes", "previews on max 0", "previews on max 500"):
        with pytest.raises(OrdersRejected, match=r"web/orders:2"):
            parse_orders(f"# x\n{bad}\n", "web/orders")


# ─── routing a push of another branch ────────────────────────────────────────


def order(hd: Squadron, app: str, text: str) -> None:
    orders = parse_orders(text, f"{app}/orders", default_hull="busybox")
    hd.daemon.core.fleet.hq = Headquarters(apps={app: orders})


def previews_of(hd: Squadron) -> Previews:
    return hd.daemon.inbox.route.__self__  # type: ignore[attr-defined,no-any-return]


async def push(hd: Squadron, app: str, branch: str, deploy: str) -> str:
    """What a push of `branch` does: routed like the inbox does, then run on the bus."""
    sha = hd.world.commit(app, {**STATIC, "branch.txt": branch}, branch)
    cmd = Deploy(deploy=deploy, app=app, sha=sha, ref=f"refs/heads/{branch}", source="push")
    routed = await hd.daemon.inbox.route(cmd)
    assert routed is not None
    return await hd.run(routed)


async def delete(hd: Squadron, app: str, branch: str, deploy: str) -> str:
    cmd = Retire(deploy=deploy, app=app, ref=f"refs/heads/{branch}", reason="deleted")
    routed = await hd.daemon.inbox.route(cmd)
    assert routed is not None
    return await hd.run(routed)


async def settle(hd: Squadron) -> None:
    tasks = previews_of(hd).tasks
    if tasks:
        await asyncio.wait_for(asyncio.gather(*tasks), 10)


async def test_another_branch_deploys_a_preview_and_leaves_the_app_alone(world: World) -> None:
    hd = world.daemon()
    order(hd, "web", "previews on\nservername web.example\nexport PUBLISH_PORT=8080 KEY=v\n")
    assert await push(hd, "web", "main", "t-main") == FINISHED
    live = hd.app("web").live_ship
    assert await push(hd, "web", "feature/x", "t-x") == FINISHED
    preview = hd.app("web--feature-x")
    assert preview.preview_of == "web"
    assert preview.branch == "feature/x"
    assert preview.live_ship is not None
    assert hd.app("web").live_ship == live
    assert live is not None
    assert world.serving("web") == (live.ip, live.port)
    env = hd.daemon.core.fleet.env("web--feature-x")
    assert env["PREVIEW"] == "1"
    assert env["PREVIEW_BRANCH"] == "feature/x"
    assert env["KEY"] == "v"
    assert "PUBLISH_PORT" not in env
    assert hd.daemon.core.fleet.orders("web--feature-x").servernames == ()


async def test_without_previews_another_branch_is_still_ignored(world: World) -> None:
    hd = world.daemon()
    assert await push(hd, "web", "main", "t-main") == FINISHED
    assert await push(hd, "web", "feature/x", "t-x") == "ignored"
    assert not hd.daemon.core.records.known("web--feature-x")


async def test_a_preview_with_a_domain_is_served_under_the_app(world: World) -> None:
    hd = world.daemon(domain="example.test")
    order(hd, "web", "previews on\n")
    await push(hd, "web", "feature/x", "t-x")
    names = hd.daemon.core.fleet.orders("web--feature-x").servernames
    assert names == ("feature-x.web.example.test",)


async def test_deleting_the_branch_retires_its_preview_only(world: World) -> None:
    hd = world.daemon()
    order(hd, "web", "previews on\n")
    await push(hd, "web", "main", "t-main")
    await push(hd, "web", "feature/x", "t-x")
    assert await delete(hd, "web", "feature/x", "t-del") == FINISHED
    assert not hd.daemon.core.records.known("web--feature-x")
    assert hd.app("web").live_ship is not None
    assert "AppRetired" in hd.names("t-del")


async def test_over_max_the_oldest_preview_is_retired(world: World) -> None:
    hd = world.daemon()
    order(hd, "web", "previews on max 2\n")
    for n, branch in enumerate(("one", "two", "three")):
        world.clock.advance(1)
        await push(hd, "web", branch, f"t-{n}")
    await settle(hd)
    records = hd.daemon.core.records
    assert not records.known("web--one")
    assert records.known("web--two")
    assert records.known("web--three")


async def test_a_flood_of_branches_stays_within_max(world: World) -> None:
    hd = world.daemon()
    order(hd, "web", "previews on max 3\n")
    for n in range(100):
        world.clock.advance(1)
        await push(hd, "web", f"flood/{n}", f"t-{n}")
    await settle(hd)
    kept = sorted(a.name for a in hd.daemon.core.records.all() if a.preview_of == "web")
    assert kept == ["web--flood-97", "web--flood-98", "web--flood-99"]


async def test_a_flood_pushed_all_at_once_stays_within_max(world: World) -> None:
    hd = world.daemon(parallel_deploys=4)
    order(hd, "web", "previews on max 5\n")
    await asyncio.gather(*(push(hd, "web", f"flood/{n}", f"t-{n}") for n in range(100)))
    await settle(hd)
    records = hd.daemon.core.records.all()
    assert len(records) == 5  # previews only (no record is left of those retired)
    assert all(a.preview_of == "web" and a.live_ship for a in records)
    retired = hd.events(name="TriggerIgnored")
    assert all("retired before this deploy" in e["message"] for e in retired)
    ships = {s.name for a in hd.daemon.core.records.all() for s in a.ships}
    assert ships == {c for c in world.runtime.containers if "-hull-" not in c}


async def test_colliding_slugs_get_distinct_previews(world: World) -> None:
    hd = world.daemon()
    order(hd, "web", "previews on\n")
    await push(hd, "web", "feature-x", "t-1")
    await push(hd, "web", "feature/x", "t-2")
    await push(hd, "web", "feature/x", "t-3")  # found again by its branch, not made anew
    names = sorted(a.name for a in hd.daemon.core.records.all() if a.preview_of)
    assert len(names) == 2
    assert "web--feature-x" in names
    other = next(n for n in names if n != "web--feature-x")
    assert hd.app(other).branch == "feature/x"


# ─── webhooks ────────────────────────────────────────────────────────────────


def test_a_webhook_of_another_branch_concerns_an_app_only_with_previews_on() -> None:
    url = "https://git.example/acme/web.git"
    apps = {"web": (url, "main"), "api": (url, "main")}
    found = StaticResolver(apps, None, previews=["web"]).resolve([url], "refs/heads/x", "main")
    assert found.apps == ()
    assert found.previews == ("web",)
    main = StaticResolver(apps, None, previews=["web"]).resolve([url], "refs/heads/main", "main")
    assert main.apps == ("api", "web")
    assert main.previews == ()


def test_a_deleted_branch_in_a_webhook_retires_only_a_preview() -> None:
    gone = RefUpdate("refs/heads/feature/x", "b" * 40, "0" * 40)
    trigger = Trigger.webhook(
        "d-1", provider="github", repository="acme/web", targets={"web": gone},
        fingerprint="f", received=0.0,
    )  # fmt: skip
    (command,) = from_trigger(trigger)
    assert isinstance(command, Retire)
    assert command.ref == "refs/heads/feature/x"


async def test_retiring_the_app_retires_its_previews(world: World) -> None:
    hd = world.daemon()
    order(hd, "web", "previews on\n")
    await push(hd, "web", "main", "t-main")
    await push(hd, "web", "feature/x", "t-x")
    assert await hd.run(Retire(deploy="t-r", app="web", reason="asked to")) == FINISHED
    retired = {e["app"] for e in hd.events("t-r", "AppRetired")}
    assert retired == {"web", "web--feature-x"}
    assert hd.daemon.core.records.all() == []


async def test_a_preview_redeployed_by_name_builds_its_branch(world: World) -> None:
    hd = world.daemon()
    order(hd, "web", "previews on\n")
    await push(hd, "web", "feature/x", "t-x")
    tip = world.commit("web", {**STATIC, "v": "2"}, "feature/x")
    assert await hd.run(Deploy(deploy="t-again", app="web--feature-x", source="cli")) == FINISHED
    live = hd.app("web--feature-x").live_ship
    assert live is not None
    assert live.sha == tip


async def test_a_preview_keeps_one_stopped_ship_and_the_app_its_keep_ships(world: World) -> None:
    hd = world.daemon(keep_ships=3)
    order(hd, "web", "previews on\n")
    for n in range(4):
        await push(hd, "web", "main", f"t-main-{n}")
        await push(hd, "web", "feature/x", f"t-x-{n}")
    assert len(hd.app("web").ships) == 4  # live + KEEP_SHIPS
    assert len(hd.app("web--feature-x").ships) == 2  # live + one
