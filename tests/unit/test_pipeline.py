"""The deploy state machine on the in-memory fakes: outcomes, failures per stage, supersede,
retention, rollback targets and the hull build — in milliseconds, without root."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyperdrive.headquarters import Headquarters, parse_orders
from hyperdrive.pipeline.bus import FAILED, FINISHED, SUPERSEDED
from hyperdrive.pipeline.commands import Assemble, AssembleHulls, Deploy, Launch, Rollback
from hyperdrive.pipeline.fakes import FakeGit
from hyperdrive.pipeline.model import BUILD_CPU_WEIGHT, LIVE, RUNNING_CPU_WEIGHT, STOPPED
from hyperdrive.pipeline.model import FAILED as SHIP_FAILED
from tests.unit.deploy_world import PYTHON, STATIC, Squadron, World

STAGES = ("plan", "export", "assemble", "build", "start", "health", "swap", "drain")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = World(tmp_path)
    yield world
    world.close()


@pytest.fixture
def hd(world: World) -> Squadron:
    return world.daemon()


async def live_at(hd: Squadron, app: str, files: dict[str, str] | None = None) -> str:
    """Deploy a good version; the ship now live."""
    deploy = await hd.deploy(app, files)
    assert hd.outcome(deploy)["event"] == "DeployFinished", hd.events(deploy)
    ship = hd.app(app).live
    assert ship is not None
    return ship


# ─── a deploy and its story ──────────────────────────────────────────────────


async def test_deploying_an_app_nobody_made_fails_at_plan_and_leaves_no_record(
    world: World, hd: Squadron
) -> None:
    await live_at(hd, "web")
    await hd.run(Deploy(deploy="t-ghost", app="ghost", source="cli", admiral="alice"))
    failed = hd.outcome("t-ghost")
    assert failed["event"] == "DeployFailed"
    assert failed["stage"] == "plan", failed
    assert not (world.config().apps_records_dir / "ghost.json").exists()
    assert [row["app"] for row in hd.daemon.api.status()["apps"]] == ["web"]
    again = world.daemon()  # and after a restart
    assert [row["app"] for row in again.daemon.api.status()["apps"]] == ["web"]


async def test_a_failed_plan_of_a_known_app_keeps_its_record(world: World, hd: Squadron) -> None:
    await live_at(hd, "web")
    await hd.run(Deploy(deploy="t-bad", app="web", sha="f" * 40, source="cli"))
    assert hd.outcome("t-bad")["event"] == "DeployFailed"
    assert hd.app("web").last_deploy["result"] == "failed at fetch"
    assert (world.config().apps_records_dir / "web.json").exists()


async def test_a_deploy_tells_every_stage_with_its_duration_and_finishes_after_the_drain(
    hd: Squadron,
) -> None:
    await live_at(hd, "web")
    deploy = await hd.deploy("web", PYTHON)
    names = hd.names(deploy)
    assert names == [
        "DeployStarted",
        "StageFinished",  # plan
        "StageFinished",  # export
        "ShipAssembled",
        "BuildOutput",
        "ShipBuilt",
        "ShipStarted",
        "ShipHealthy",
        "TrafficSwapped",
        "ShipDrained",
        "DeployFinished",
    ]
    timed = [e for e in hd.events(deploy) if e["event"] not in ("DeployStarted", "BuildOutput")]
    assert all(isinstance(e.get("ms"), int) for e in timed), timed
    stages = [e["stage"] for e in hd.events(deploy, name="StageFinished")]
    assert stages == ["plan", "export"]


async def test_the_first_deploy_routes_the_app_and_points_traffic_at_its_ship(
    world: World, hd: Squadron
) -> None:
    ship = await live_at(hd, "web")
    app = hd.app("web")
    assert app.routed
    assert [r.app for r in world.proxy.live_routes] == ["web"]
    assert world.serving("web") == hd.live_ship_address("web")
    assert app.ship(ship).state == LIVE  # type: ignore[union-attr]
    assert app.last_deploy["result"] == "finished"


async def test_pushing_the_live_commit_again_builds_nothing(world: World, hd: Squadron) -> None:
    first = await hd.deploy("web")
    sha = hd.app("web").live_ship.sha  # type: ignore[union-attr]
    again = hd.next_id()
    assert await hd.run(Deploy(deploy=again, app="web", sha=sha, source="push")) == FINISHED
    assert "already live" in hd.outcome(again)["message"]
    assert len(hd.app("web").ships) == 1
    assert hd.outcome(first)["event"] == "DeployFinished"


async def test_a_push_of_another_branch_is_ignored_and_says_which_branch_deploys(
    world: World, hd: Squadron
) -> None:
    await live_at(hd, "web")
    sha = world.commit("web", STATIC, branch="feature")
    deploy = hd.next_id()
    outcome = await hd.run(Deploy(deploy=deploy, app="web", sha=sha, ref="refs/heads/feature"))
    assert outcome == "ignored"
    said = hd.outcome(deploy)
    assert said["event"] == "TriggerIgnored"
    assert "web deploys main" in said["message"]


# ─── a failure in each stage leaves the old ship serving ────────────────────


def break_stage(world: World, stage: str) -> None:
    """Make `stage` of the next deploy fail the way a user can make it fail."""
    if stage == "assemble":
        world.runtime.fail.add("snapshot")
    elif stage == "build":
        world.runtime.build_code = 1
    elif stage == "start":
        world.runtime.start_code = 2
    elif stage == "health":
        world.runtime.fail.add("answer")
    elif stage == "swap":
        world.proxy.refuse.add("web")
    elif stage == "drain":
        world.probe.dies_in_drain = True


@pytest.mark.parametrize("stage", ["assemble", "build", "start", "health", "swap", "drain"])
async def test_a_failure_in_any_stage_leaves_the_old_ship_serving(
    world: World, hd: Squadron, stage: str
) -> None:
    old = await live_at(hd, "web")
    before = world.serving("web")
    break_stage(world, stage)
    deploy = await hd.deploy("web", PYTHON)
    outcome = hd.outcome(deploy)
    assert outcome["event"] == "DeployFailed", hd.events(deploy)
    assert outcome["stage"] == stage, outcome
    assert f"{old} keeps serving" in outcome["message"]
    assert "DeployFinished" not in hd.names(deploy)
    assert hd.app("web").live == old
    assert world.serving("web") == before
    assert old in world.runtime.running_apps()
    assert hd.app("web").last_deploy["result"] == f"failed at {stage}"


async def test_a_failed_plan_builds_nothing(world: World, hd: Squadron) -> None:
    deploy = hd.next_id()
    assert await hd.run(Deploy(deploy=deploy, app="empty", source="cli")) == FAILED
    outcome = hd.outcome(deploy)
    assert outcome["stage"] == "plan"
    assert "has no commits on main yet" in outcome["message"]
    assert world.runtime.containers == {}


async def test_an_export_of_a_missing_commit_fails_at_fetch(hd: Squadron) -> None:
    deploy = hd.next_id()
    sha = "a" * 40
    assert await hd.run(Deploy(deploy=deploy, app="web", sha=sha, source="cli")) == FAILED
    assert hd.outcome(deploy)["stage"] == "fetch"


async def test_a_fall_back_in_the_drain_is_a_failed_deploy_after_rolled_back(
    world: World, hd: Squadron
) -> None:
    old = await live_at(hd, "web")
    world.probe.dies_in_drain = True
    deploy = await hd.deploy("web", {"index.html": "v2\n"})
    names = hd.names(deploy)
    assert names[-2:] == ["RolledBack", "DeployFailed"], names
    assert "TrafficSwapped" in names
    app = hd.app("web")
    assert app.live == old
    new = next(s for s in app.ships if s.name != old)
    assert new.state == SHIP_FAILED
    assert not new.healthy
    assert "rolled back" in hd.outcome(deploy)["message"]


# ─── supersede ───────────────────────────────────────────────────────────────


async def test_a_newer_push_cancels_a_build_and_its_ship_is_scrapped(
    world: World, hd: Squadron
) -> None:
    old = await live_at(hd, "web")
    world.holds.hold("build")
    first = asyncio.create_task(hd.deploy("web", PYTHON, deploy="t-old"))
    await world.holds.arrived("build")
    scrapped = hd.app("web").ships[-1].name
    newer = asyncio.create_task(hd.deploy("web", {**PYTHON, "v": "2"}, deploy="t-new"))
    await asyncio.wait_for(first, 5)
    world.holds.release("build")
    await asyncio.wait_for(newer, 5)
    assert hd.outcome("t-old")["event"] == "DeploySuperseded"
    assert hd.outcome("t-old")["by"] == "t-new"
    assert hd.outcome("t-new")["event"] == "DeployFinished"
    assert scrapped not in world.runtime.containers
    assert hd.app("web").ship(scrapped) is None
    assert hd.app("web").live != old


async def test_a_newer_push_waits_for_a_hull_build_and_the_older_deploy_is_dropped_after_it(
    world: World, hd: Squadron
) -> None:
    world.holds.hold("hull")
    first = asyncio.create_task(
        hd.run(Deploy(deploy="t-a", app="web", sha=world.commit("web", STATIC)))
    )
    await world.holds.arrived("hull")
    second = asyncio.create_task(
        hd.run(Deploy(deploy="t-b", app="web", sha=world.commit("web", {"index.html": "b\n"})))
    )
    await asyncio.sleep(0.01)
    assert not first.done(), "a newer push does not cancel a deploy waiting for its hull"
    world.holds.release("hull")
    assert await asyncio.wait_for(first, 5) == SUPERSEDED
    assert await asyncio.wait_for(second, 5) == FINISHED
    assert world.hull_builder.built == ["hd-hull-busybox-1"]
    assert hd.events(name="HullBuildFailed") == []
    assert "HullAssembled" in hd.names("t-a")
    assert hd.outcome("t-a")["by"] == "t-b"
    assert len(hd.app("web").ships) == 1


async def test_a_deploy_past_the_swap_is_not_cancelled_the_newer_one_waits(
    world: World, hd: Squadron
) -> None:
    await live_at(hd, "web")
    world.holds.hold("drain")
    first = asyncio.create_task(hd.deploy("web", {"index.html": "v2\n"}, deploy="t-1st"))
    await world.holds.arrived("drain")
    second = asyncio.create_task(hd.deploy("web", {"index.html": "v3\n"}, deploy="t-2nd"))
    await asyncio.sleep(0.01)
    world.holds.release("drain")
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert hd.outcome("t-1st")["event"] == "DeployFinished"
    assert hd.outcome("t-2nd")["event"] == "DeployFinished"


# ─── retention ───────────────────────────────────────────────────────────────


async def test_keep_ships_counts_healthy_ships_only_and_failed_ones_are_pruned_too(
    world: World, tmp_path: Path
) -> None:
    hd = world.daemon(keep_ships=2)
    healthy = [await live_at(hd, "web", {"index.html": f"v{i}\n"}) for i in range(4)]
    world.runtime.build_code = 1
    failed = []
    for i in range(4):
        await hd.deploy("web", {**PYTHON, "n": str(i)})
        failed.append(hd.app("web").ships[-1].name)
    world.runtime.build_code = 0
    current = await live_at(hd, "web", {"index.html": "last\n"})
    kept = {s.name: s for s in hd.app("web").ships}
    assert current in kept
    assert [n for n in healthy if n in kept] == healthy[-2:], "KEEP_SHIPS healthy ones"
    assert [n for n in failed if n in kept] == failed[-2:], "the newest failed, for their logs"
    assert all(kept[n].state == SHIP_FAILED for n in failed[-2:])
    gone = set(healthy[:-2]) | set(failed[:-2])
    assert not gone & set(world.runtime.containers)
    retired = [e["ship"] for e in hd.events(name="ShipRetired")]
    assert set(retired) == gone
    assert all(isinstance(e["ms"], int) for e in hd.events(name="ShipRetired"))


async def test_failed_deploys_never_push_out_the_last_rollback_target(world: World) -> None:
    hd = world.daemon(keep_ships=1)
    await live_at(hd, "web")
    previous = await live_at(hd, "web", {"index.html": "v2\n"})
    world.runtime.build_code = 1
    for i in range(5):
        await hd.deploy("web", {**PYTHON, "n": str(i)})
    world.runtime.build_code = 0
    await live_at(hd, "web", {"index.html": "v3\n"})
    target = hd.daemon.core.ships.rollback_target(hd.app("web"))
    assert target is not None
    assert target.name == previous


async def test_keep_ships_zero_still_keeps_one_rollback_target(world: World) -> None:
    hd = world.daemon(keep_ships=0)
    first = await live_at(hd, "web")
    await live_at(hd, "web", {"index.html": "v2\n"})
    assert hd.daemon.core.ships.rollback_target(hd.app("web")).name == first  # type: ignore[union-attr]


# ─── rollback targets ────────────────────────────────────────────────────────


async def test_rollback_goes_to_the_newest_healthy_kept_ship(world: World, hd: Squadron) -> None:
    await live_at(hd, "web")
    second = await live_at(hd, "web", {"index.html": "v2\n"})
    world.runtime.fail.add("answer")
    await hd.deploy("web", {"index.html": "broken\n"})  # a failed ship is no target
    world.runtime.fail.discard("answer")
    third = await live_at(hd, "web", {"index.html": "v3\n"})
    deploy = hd.next_id()
    assert await hd.run(Rollback(deploy=deploy, app="web")) == FINISHED
    assert hd.app("web").live == second
    assert world.serving("web") == hd.live_ship_address("web")
    assert hd.app("web").ship(third).state == STOPPED  # type: ignore[union-attr]
    assert hd.names(deploy)[-2:] == ["RolledBack", "DeployFinished"], "said before the outcome"


async def test_a_build_runs_idle_and_every_app_start_at_the_normal_weight(
    world: World, hd: Squadron
) -> None:
    first = await live_at(hd, "web", PYTHON)
    assert world.runtime.build_weights == [BUILD_CPU_WEIGHT]  # where the host has no cpu.idle
    assert world.runtime.build_idle == [True]
    mine = [call for call in world.runtime.calls if call.endswith(first) or first in call]
    assert mine[-3:] == [
        f"build {first}",
        f"cpu-weight {first} {RUNNING_CPU_WEIGHT}",
        f"start {first}",
    ]
    assert world.runtime.containers[first].cpu_weight == RUNNING_CPU_WEIGHT
    assert not world.runtime.containers[first].cpu_idle
    await live_at(hd, "web", {**PYTHON, "app.py": "print('v2')\n"})
    assert world.runtime.build_weights == [BUILD_CPU_WEIGHT] * 2
    # a kept ship starts at its config's (a build's) weight again; its app runs at the normal one
    assert await hd.run(Rollback(deploy=hd.next_id(), app="web")) == FINISHED
    assert hd.app("web").live == first
    assert world.runtime.containers[first].cpu_weight == RUNNING_CPU_WEIGHT


async def test_a_ship_with_nothing_to_build_starts_at_the_normal_weight_at_once(
    world: World, hd: Squadron
) -> None:
    """A static app has no build to keep off the CPU: its ship starts at a running ship's
    weight, and no weight is changed (no lxc-cgroup) before its app starts."""
    ship = await live_at(hd, "web", {"index.html": "static\n"})
    spec = world.runtime.containers[ship].spec
    assert spec is not None
    assert (spec.cpu_weight, spec.cpu_idle) == (RUNNING_CPU_WEIGHT, False)
    assert not [call for call in world.runtime.calls if call.startswith(f"cpu-weight {ship}")]
    assert world.runtime.containers[ship].cpu_weight == RUNNING_CPU_WEIGHT


async def test_rollback_without_a_healthy_kept_ship_fails_and_changes_nothing(
    world: World, hd: Squadron
) -> None:
    only = await live_at(hd, "web")
    deploy = hd.next_id()
    assert await hd.run(Rollback(deploy=deploy, app="web")) == FAILED
    assert "no earlier healthy ship is kept" in hd.outcome(deploy)["message"]
    assert hd.app("web").live == only


async def test_an_assembled_ship_is_no_rollback_target_until_it_has_been_healthy(
    world: World, hd: Squadron
) -> None:
    await live_at(hd, "web")
    world.commit("web", {"index.html": "next\n"})
    assert await hd.run(Assemble(deploy="t-asm", app="web")) == FINISHED
    assembled = hd.app("web").ships[-1]
    assert assembled.state == STOPPED
    assert not assembled.healthy
    assert hd.daemon.core.ships.rollback_target(hd.app("web")) is None
    assert await hd.run(Launch(deploy="t-launch", ship=assembled.name, app="web")) == FINISHED
    assert hd.app("web").live == assembled.name
    assert hd.app("web").ship(assembled.name).healthy  # type: ignore[union-attr]


async def test_launch_runs_in_its_apps_lane(world: World, hd: Squadron) -> None:
    await live_at(hd, "web")
    world.commit("web", {"index.html": "next\n"})
    await hd.run(Assemble(deploy="t-asm", app="web"))
    ship = hd.app("web").ships[-1].name
    assert Launch(deploy="t-l", ship=ship, app="web").lane == "web"
    world.holds.hold("drain")
    deploying = asyncio.create_task(hd.deploy("web", {"index.html": "v3\n"}, deploy="t-d"))
    await world.holds.arrived("drain")
    launching = asyncio.create_task(hd.run(Launch(deploy="t-l", ship=ship, app="web")))
    await asyncio.sleep(0.01)
    assert hd.events("t-l") == [], "the launch waits for the deploy in its lane"
    world.holds.release("drain")
    await asyncio.wait_for(asyncio.gather(deploying, launching), 5)
    assert hd.app("web").live == ship


async def test_launch_of_an_unknown_ship_fails_clearly(hd: Squadron) -> None:
    assert await hd.run(Launch(deploy="t-x", ship="hd-nope-1234567")) == FAILED
    assert "no ship named hd-nope-1234567" in hd.outcome("t-x")["message"]
    await live_at(hd, "web")
    assert await hd.run(Launch(deploy="t-y", ship="hd-nope-1234567", app="web")) == FAILED
    assert "web has no ship hd-nope-1234567" in hd.outcome("t-y")["message"]


# ─── egress and DNS of the ships ─────────────────────────────────────────────


def order(hd: Squadron, app: str, text: str) -> None:
    """The app's orders in force, as a synced headquarters would give them."""
    orders = parse_orders(text, f"{app}/orders", default_hull="busybox")
    hd.daemon.core.fleet.hq = Headquarters(apps={app: orders})


async def test_a_ships_egress_rule_is_made_before_its_build_and_dropped_with_it(
    world: World,
) -> None:
    hd = world.daemon(keep_ships=1)
    order(hd, "web", "egress allow 10.9.0.7:5432 db.example:5432")
    await live_at(hd, "web")
    first = hd.app("web").live_ship
    assert first is not None
    assert world.network.egress[first.ip].allow == (("10.9.0.7", 5432), ("db.example", 5432))
    order(hd, "web", "egress off")
    await live_at(hd, "web")
    await live_at(hd, "web")  # retention lets the first ship go
    second = hd.app("web").live_ship
    assert second is not None
    assert world.network.egress[second.ip].off
    assert first.ip not in world.network.egress or first.ip == second.ip
    assert set(world.network.egress) == {s.ip for s in hd.app("web").ships}


async def test_an_egress_name_that_does_not_resolve_fails_the_deploy_at_assemble(
    world: World, hd: Squadron
) -> None:
    old = await live_at(hd, "web")
    world.network.unresolvable.add("gone.example")
    order(hd, "web", "egress allow gone.example:443")
    deploy = await hd.deploy("web")
    outcome = hd.outcome(deploy)
    assert outcome["event"] == "DeployFailed"
    assert outcome["stage"] == "assemble"
    assert "gone.example does not resolve" in outcome["message"]
    assert hd.app("web").live == old


@pytest.mark.parametrize(
    ("orders", "changes", "says"),
    [
        ("egress off", {}, "egress is off for this app: web/orders:1"),
        ("egress allow 10.9.0.7:80", {}, "egress allows only 10.9.0.7:80: web/orders:1"),
        ("", {"ship_egress": False}, "egress is off for every ship: HYPERDRIVE_SHIP_EGRESS=off"),
    ],
)
async def test_a_failed_build_says_when_egress_was_cut(
    world: World, orders: str, changes: dict[str, object], says: str
) -> None:
    hd = world.daemon(**changes)
    order(hd, "web", orders)
    world.runtime.build_code = 1
    deploy = await hd.deploy("web", PYTHON)
    assert says in hd.outcome(deploy)["message"]
    assert says in hd.events(deploy, name="BuildFailed")[0]["message"]


async def test_every_ship_resolves_names_through_the_bridge(world: World, hd: Squadron) -> None:
    ship = await live_at(hd, "web")
    spec = world.runtime.containers[ship].spec
    assert spec is not None
    mount = next(m for m in spec.mounts if m.container_path == "/etc/resolv.conf")
    assert mount.readonly
    assert mount.host_path.read_text().startswith(f"nameserver {world.network.gateway}\n")


def test_the_ships_dns_names_the_apps_servernames_and_app_domain(world: World) -> None:
    hd = world.daemon(domain="ships.example")
    order(hd, "web", "servername WWW.example.com")
    assert hd.daemon.dns.names() == {"www.example.com", "web.ships.example"}


# ─── runtime versions and the hull they choose ───────────────────────────────

PY313 = {**PYTHON, ".python-version": "3.13\n"}


def ordered(hd: Squadron, app: str, text: str) -> None:
    """Put `<app>/orders` in force, as a headquarters sync would."""
    orders = parse_orders(text, f"{app}/orders", default_hull=hd.daemon.config.hull)
    hd.daemon.core.fleet.hq = Headquarters(apps={app: orders})


def assembled_from(hd: Squadron, deploy: str) -> str:
    return str(hd.events(deploy, name="ShipAssembled")[0]["message"])


async def test_an_app_asking_for_python_313_gets_the_first_hull_that_has_it(
    world: World, hd: Squadron
) -> None:
    deploy = await hd.deploy("web", PY313)
    assert hd.outcome(deploy)["event"] == "DeployFinished", hd.events(deploy)
    assert "from hull 'hd-hull-debian-13-1'" in assembled_from(hd, deploy)
    assert world.hull_builder.built == ["hd-hull-debian-13-1"]
    deploy = await hd.deploy("api", {**PYTHON, "runtime.txt": "python-3.11.4\n"})
    assert "from hull 'hd-hull-debian-1'" in assembled_from(hd, deploy)


async def test_a_python_no_hull_has_fails_before_any_hull_or_build_runs(
    world: World, hd: Squadron
) -> None:
    await live_at(hd, "web")
    built = list(world.hull_builder.built)
    deploy = await hd.deploy("web", {**PYTHON, ".python-version": "3.14\n"})
    outcome = hd.outcome(deploy)
    assert outcome["event"] == "DeployFailed"
    assert outcome["stage"] == "assemble"
    assert (
        "asks for Python 3.14 (.python-version); hulls here have 3.11.2 (debian), "
        "3.13.5 (debian-13)" in outcome["message"]
    )
    assert "BuildOutput" not in hd.names(deploy)
    assert world.hull_builder.built == built, "no hull was built for it"
    assert world.serving("web") == hd.live_ship_address("web")


async def test_orders_naming_a_hull_without_the_version_fail_clearly(hd: Squadron) -> None:
    ordered(hd, "web", "hull debian\n")
    deploy = await hd.deploy("web", PY313)
    message = hd.outcome(deploy)["message"]
    assert "asks for Python 3.13 (.python-version)" in message
    assert "the orders name hull debian" in message
    ordered(hd, "web", "hull debian-13\n")
    deploy = await hd.deploy("web", PY313)
    assert hd.outcome(deploy)["event"] == "DeployFinished"
    assert "from hull 'hd-hull-debian-13-1'" in assembled_from(hd, deploy)


async def test_a_built_hull_is_chosen_by_the_versions_measured_in_it(
    world: World, hd: Squadron
) -> None:
    world.hull_builder.measured["debian"] = {"python": "3.12.8", "node": "18.20.4"}
    await live_at(hd, "web", {**PYTHON, ".python-version": "3.11\n"})  # known: 3.11.2
    hulls = hd.daemon.core.hulls
    assert hulls.runtimes("debian") == {"python": "3.12.8", "node": "18.20.4"}
    deploy = await hd.deploy("api", {**PYTHON, ".python-version": "3.12\n"})
    assert "from hull 'hd-hull-debian-1'" in assembled_from(hd, deploy)
    assert hulls.status()["debian"]["runtimes"] == {"python": "3.12.8", "node": "18.20.4"}


async def test_hd_assemble_builds_the_kinds_in_use_not_every_known_kind(
    world: World, hd: Squadron
) -> None:
    await live_at(hd, "web")  # busybox, the default here
    await live_at(hd, "api", PY313)  # debian-13
    ordered(hd, "docs", "hull debian\n")
    assert await hd.run(AssembleHulls(deploy="t-hulls")) == FINISHED
    assert world.hull_builder.built[2:] == [
        "hd-hull-debian-1",
        "hd-hull-debian-13-2",
        "hd-hull-busybox-2",
    ]


async def test_squadron_includes_reach_the_build_environment_under_the_orders(
    hd: Squadron,
) -> None:
    includes = hd.daemon.config.includes_dir
    includes.mkdir(parents=True)
    mirror = "http://mirror.example:3141/root/pypi/+simple/"
    (includes / "mirrors.env").write_text(
        f"PIP_INDEX_URL={mirror}\nnpm_config_registry=http://npm.example/\nA=include\n"
    )
    await hd.daemon.headquarters.load()
    ordered(hd, "web", "export A=orders\n")
    ship = await live_at(hd, "web", PYTHON)
    env = (hd.daemon.config.ship_dir(ship) / "run" / "env").read_text().splitlines()
    assert f"export PIP_INDEX_URL={mirror}" in env
    assert "export npm_config_registry=http://npm.example/" in env
    assert "export A=orders" in env, "the orders win over the includes"


async def test_hull_records_written_by_older_releases_are_still_read(hd: Squadron) -> None:
    record = hd.daemon.config.hulls_record
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text('{"debian": 4}')
    hulls = hd.daemon.core.hulls
    assert hulls.current("debian") == "hd-hull-debian-4"
    assert hulls.runtimes("debian") == {"python": "3.11.2", "node": "18.19.0"}, "the known ones"


# ─── a webhook notifies; the branch tip decides ──────────────────────────────


async def test_a_replayed_webhook_naming_an_old_commit_deploys_the_branch_tip(
    world: World, hd: Squadron
) -> None:
    url = "https://forge.example/acme/web.git"
    order(hd, "web", f"autodeploy {url}")
    v1 = world.commit("web-remote", {"index.html": "v1\n"})
    v2 = world.commit("web-remote", {"index.html": "v2\n"})
    world.git.remote[url] = {"refs/heads/main": v2}
    webhook = {"ref": "refs/heads/main", "source": "webhook:github"}
    await hd.run(Deploy(deploy="t-v2", app="web", sha=v2, **webhook))
    assert hd.outcome("t-v2")["event"] == "DeployFinished"
    live = hd.app("web").live_ship
    assert live is not None
    assert live.sha == v2

    await hd.run(Deploy(deploy="t-replay", app="web", sha=v1, **webhook))

    live = hd.app("web").live_ship
    assert live is not None
    assert live.sha == v2, "the app never moves back to v1"
    said = [e["message"] for e in hd.events("t-replay")]
    assert f"the delivery named {v1[:7]}, main is at {v2[:7]}: deploying {v2[:7]}" in said
    assert hd.outcome("t-replay")["event"] == "DeployFinished"
    assert "already live" in hd.outcome("t-replay")["message"]


async def test_a_webhook_behind_the_tip_deploys_the_tip(world: World, hd: Squadron) -> None:
    url = "https://forge.example/acme/web.git"
    order(hd, "web", f"autodeploy {url}")
    v1 = world.commit("web-remote", {"index.html": "v1\n"})
    v2 = world.commit("web-remote", {"index.html": "v2\n"})
    world.git.remote[url] = {"refs/heads/main": v2}
    await hd.run(
        Deploy(deploy="t-1", app="web", sha=v1, ref="refs/heads/main", source="webhook:gitlab")
    )
    live = hd.app("web").live_ship
    assert live is not None
    assert live.sha == v2


# ─── files the app made are never a window onto the host ────────────────────


def host_file(world: World) -> Path:
    """A file outside every app tree and ship folder, standing for /etc/shadow."""
    host = world.root / "host-shadow"
    host.write_text("root:HOSTHASH:19000::::::\n")
    return host


def shown(hd: Squadron) -> str:
    """Every event as stored: what `hd logs`, /events and `remote:` lines can show."""
    return json.dumps(hd.events())


async def test_a_procfile_linked_to_a_host_file_is_refused_and_never_shown(
    world: World, hd: Squadron
) -> None:
    old = await live_at(hd, "web")
    files = {"Procfile": FakeGit.LINK + str(host_file(world)), "index.html": "hi\n"}
    deploy = await hd.deploy("web", files)
    outcome = hd.outcome(deploy)
    assert outcome["event"] == "DeployFailed", hd.events(deploy)
    assert outcome["stage"] == "build", outcome
    assert "Procfile is a symbolic link out of the app's files" in outcome["message"]
    assert "HOSTHASH" not in shown(hd)
    assert hd.app("web").live == old


async def test_a_runtime_file_linked_to_a_host_file_is_refused(world: World, hd: Squadron) -> None:
    files = {**PYTHON, ".python-version": FakeGit.LINK + str(host_file(world))}
    outcome = hd.outcome(await hd.deploy("web", files))
    assert outcome["event"] == "DeployFailed"
    assert ".python-version is a symbolic link" in outcome["message"], outcome
    assert "HOSTHASH" not in shown(hd)


async def test_a_procfile_linked_inside_the_app_is_followed(hd: Squadron) -> None:
    files = {
        "deploy/Procfile": "web: ./serve $PORT\n",
        "Procfile": FakeGit.LINK + "deploy/Procfile",
    }
    deploy = await hd.deploy("web", files)
    assert hd.outcome(deploy)["event"] == "DeployFinished", hd.events(deploy)
    assert "started: ./serve $PORT" in hd.events(deploy, name="ShipStarted")[0]["message"]


async def test_an_app_log_linked_to_a_host_file_stays_out_of_the_failure(
    world: World, hd: Squadron
) -> None:
    host = host_file(world)
    ship_dir = hd.daemon.config.ship_dir

    def link_the_log(ship: str) -> None:  # `web: ln -sf /etc/shadow /hyperdrive/logs/web.log`
        log = ship_dir(ship) / "run" / "logs" / "web.log"
        log.unlink(missing_ok=True)
        log.symlink_to(host)

    world.runtime.app_does = link_the_log
    world.runtime.fail.add("answer")
    outcome = hd.outcome(await hd.deploy("web", STATIC))
    assert outcome["event"] == "DeployFailed"
    assert outcome["stage"] == "health", outcome
    assert "app output not shown: /hyperdrive/logs/web.log is a symbolic link" in outcome["message"]
    assert "HOSTHASH" not in shown(hd)


# ─── ships are unprivileged: their trees are handed over, their limits set ────────


async def test_what_a_ship_mounts_is_handed_to_its_root_before_it_starts(
    world: World, hd: Squadron
) -> None:
    ship = await live_at(hd, "web", PYTHON)
    config = hd.daemon.config
    run = config.ship_dir(ship) / "run"
    assert world.runtime.handed[:2] == [config.ship_dir(ship), config.cache_dir("web")]
    names = ("env", "build", "supervise", "logger", "start", "proc", "cron", "ps", "logs")
    assert world.runtime.handed[2:] == [run / n for n in names]
    spec = world.runtime.containers[ship].spec
    assert spec is not None
    assert spec.memory_bytes == config.ship_memory_bytes == 1024**3
    assert spec.pids == config.ship_pids == 1024


async def test_ordered_memory_wins_over_the_squadrons_default(world: World) -> None:
    hd = world.daemon(ship_memory_bytes=512 * 1024**2, ship_pids=256)
    ordered(hd, "web", "memory 2G\n")
    ship = await live_at(hd, "web")
    spec = world.runtime.containers[ship].spec
    assert spec is not None
    assert (spec.memory_bytes, spec.pids) == (2 * 1024**3, 256)
    other = await live_at(hd, "blog")
    spec = world.runtime.containers[other].spec
    assert spec is not None
    assert spec.memory_bytes == 512 * 1024**2


async def test_a_hull_made_for_privileged_ships_is_rebuilt_at_its_first_use(
    world: World, hd: Squadron
) -> None:
    old = await live_at(hd, "web")
    hull = hd.daemon.core.hulls.current("busybox")
    assert hull is not None
    world.hull_builder.unfit.add(hull)
    deploy = await hd.deploy("web", {"index.html": "v2\n"})
    assert hd.outcome(deploy)["event"] == "DeployFinished"
    started = hd.events(deploy, name="HullBuildStarted")
    assert f"replaces '{hull}' (made for privileged ships)" in started[0]["message"]
    new = hd.daemon.core.hulls.current("busybox")
    assert new != hull
    assert world.hull_builder.built[-1] == new
    assert world.runtime.snapshot_source(hd.app("web").live or "") == new
    assert old != hd.app("web").live
