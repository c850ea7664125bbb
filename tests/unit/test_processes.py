"""The Procfile's processes on the fakes: release before the health check, workers checked
before the swap, a worker-only app without a route, and the conductor's state machine (exits,
crash loops, cron runs never twice at once)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path

import pytest

from hyperdrive.errors import HyperdriveError
from hyperdrive.pipeline import events as ev
from hyperdrive.pipeline import processes
from hyperdrive.pipeline.conductor import Conductor, LiveShip
from hyperdrive.pipeline.model import App, Ship
from hyperdrive.pipeline.oneoff import OneOff
from hyperdrive.procfile import parse
from hyperdrive.procview import ProcessView, ps_text
from tests.unit.deploy_world import Squadron, World

WEB = "web: ./serve\n"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = World(tmp_path)
    yield world
    world.close()


@pytest.fixture
def hd(world: World) -> Squadron:
    squadron = world.daemon()
    squadron.daemon.core.deployer.starter.workers_up_s = 0.0
    return squadron


async def test_release_runs_after_the_build_and_before_the_health_check(hd: Squadron) -> None:
    deploy = await hd.deploy("web", {"Procfile": WEB + "release: ./migrate\n"})
    assert hd.outcome(deploy)["event"] == "DeployFinished", hd.events(deploy)
    names = hd.names(deploy)
    assert names.index("ReleaseFinished") < names.index("ShipStarted") < names.index("ShipHealthy")
    said = [e["message"] for e in hd.events(deploy, "BuildOutput")]
    assert "migrated" in said  # the release's output, streamed as the build's


async def test_a_failing_release_keeps_the_old_ship(world: World, hd: Squadron) -> None:
    await hd.deploy("web", {"Procfile": WEB})
    before = world.serving("web")
    world.runtime.release_code = 4
    deploy = await hd.deploy("web", {"Procfile": WEB + "release: ./migrate\n"})
    outcome = hd.outcome(deploy)
    assert outcome["event"] == "DeployFailed", outcome
    assert outcome["stage"] == "release", outcome
    assert "release `./migrate` exited 4: migrated" in outcome["message"], outcome
    assert "keeps serving" in outcome["message"], outcome
    assert world.serving("web") == before


async def test_a_release_that_hangs_is_stopped_at_build_timeout(world: World, hd: Squadron) -> None:
    world.runtime.hang_release = True
    deploy = await hd.deploy("web", {"Procfile": WEB + "release: sleep 100000\n"})
    outcome = hd.outcome(deploy)
    assert outcome["stage"] == "release", outcome
    assert "release timed out after 900 s (BUILD_TIMEOUT" in outcome["message"], outcome


async def test_a_worker_only_app_goes_live_without_a_route(world: World, hd: Squadron) -> None:
    deploy = await hd.deploy("bot", {"Procfile": "worker: ./work\n"})
    assert hd.outcome(deploy)["event"] == "DeployFinished", hd.events(deploy)
    assert world.serving("bot") is None
    assert not hd.app("bot").routed
    assert hd.events(deploy, "ShipHealthy")[0]["message"] == "worker up after 0 s"
    again = await hd.deploy("bot", {"Procfile": "worker: ./work --v2\n"})
    assert hd.outcome(again)["event"] == "DeployFinished", hd.events(again)
    assert "no route: no drain" in hd.events(again, "ShipDrained")[0]["message"]


async def test_a_worker_dead_before_the_swap_fails_the_deploy(world: World, hd: Squadron) -> None:
    await hd.deploy("web", {"Procfile": WEB})
    before = world.serving("web")
    world.runtime.dead_processes = {"worker"}
    deploy = await hd.deploy("web", {"Procfile": WEB + "worker: ./work\n"})
    outcome = hd.outcome(deploy)
    assert outcome["stage"] == "health", outcome
    assert "process `worker` exited 1 before the swap" in outcome["message"], outcome
    assert world.serving("web") == before


# ─── the conductor: exits and crash loops, as read from run/ps ───────────────────


def state(restarts: int, streak: int = 0, code: int | None = 1) -> processes.ProcessState:
    return processes.ProcessState("worker", "running", restarts, streak, 0.0, code, 0.0)


def test_each_restart_is_one_exit_event_and_a_crash_loop_is_said_once(tmp_path: Path) -> None:
    emitted: list[ev.Event] = []
    conductor = Conductor(_config(tmp_path), _NoRecords(), _Runtime(), emitted.append)
    live = LiveShip("web", "hd-web-abc1234")
    steps = [state(0), state(1, 1), state(1, 1), *(state(n, n) for n in range(2, 8)), state(8, 0)]
    for before, now in itertools.pairwise(steps):
        conductor._compare(live, before, now)
    exits = [e for e in emitted if isinstance(e, ev.ProcessExited)]
    assert [e.restarts for e in exits] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert all(e.code == 1 and e.process == "worker" for e in exits)
    crashing = [e for e in emitted if isinstance(e, ev.ProcessCrashLooped)]
    assert len(crashing) == 1
    assert "5 exits in a row" in (crashing[0].message or "")


def test_the_ps_file_is_read_as_the_supervisor_writes_it(tmp_path: Path) -> None:
    ps = tmp_path / "run" / "ps"
    ps.mkdir(parents=True)
    (ps / "worker").write_text(
        "state=backoff\npid=12\nsupervisor=3\nrestarts=6\nstreak=5\nsince=100\n"
        "last_code=137\nlast_exit=160\n"
    )
    (ps / "web").write_text("garbage\n")
    (tmp_path / "outside").write_text("state=running\n")
    (ps / "clock").symlink_to(tmp_path / "outside")  # the ship made it: not followed
    states = processes.read_states(tmp_path, ["worker", "web", "clock", "never"])
    assert [s.state for s in states] == ["backoff", "missing", "missing", "missing"]
    assert states[0].to_json(200.0) == {
        "process": "worker",
        "state": "crashing",
        "restarts": 6,
        "uptime_s": None,
        "last_code": 137,
    }


def test_the_scripts_start_every_process_and_record_the_procfile(tmp_path: Path) -> None:
    procfile = parse("web: ./serve\nworker: ./work\nrelease: ./migrate\ncron: 0 3 * * * ./x\n")
    processes.write_scripts(tmp_path, procfile)
    run = tmp_path / "run"
    start = (run / "start").read_text()
    assert "supervise web" in start
    assert "supervise worker" in start
    assert (run / "proc" / "worker").read_text() == ". /hyperdrive/env\ncd /app\n./work\n"
    assert (run / "release").read_text().endswith("./migrate\n")
    recorded = processes.recorded(tmp_path)
    assert recorded.processes == {"web": "./serve", "worker": "./work"}
    assert [(j.name, j.spec, j.command) for j in recorded.cron] == [("cron", "0 3 * * *", "./x")]


# ─── cron: the next due job, never twice at once ─────────────────────────────────


async def test_a_cron_job_still_running_is_not_started_again(tmp_path: Path) -> None:
    emitted: list[ev.Event] = []
    runtime = _Runtime()
    conductor = Conductor(_config(tmp_path), _NoRecords(), runtime, emitted.append)
    live = LiveShip("web", "hd-web-abc1234")
    (tmp_path / "data" / "lxc" / live.ship).mkdir(parents=True)
    job = parse("cron: * * * * * ./tick\n").cron[0]
    conductor.start_job(live, job)
    await asyncio.sleep(0)
    conductor.start_job(live, job)  # due again while the first run goes on
    assert [type(e).__name__ for e in emitted] == ["CronSkipped"]
    runtime.done.set()
    for _ in range(100):
        if not conductor.is_running("web", "cron"):
            break
        await asyncio.sleep(0.01)
    ran = [e for e in emitted if isinstance(e, ev.CronRan)]
    assert len(ran) == 1
    assert (ran[0].code, ran[0].job, ran[0].schedule) == (0, "cron", "* * * * *")
    assert ran[0].ms is not None
    assert "ticked" in (ran[0].message or "")
    assert runtime.argv == [["/bin/sh", "/hyperdrive/cron/cron"]]
    log = tmp_path / "data" / "lxc" / live.ship / "cron" / "cron.log"
    assert log.read_text() == "ticked\n"


def test_the_next_due_job_of_all_live_ships_is_the_one_timer(tmp_path: Path) -> None:
    config = _config(tmp_path)
    records = _NoRecords()
    for ship, text in (
        ("hd-a-1111111", "cron: 30 * * * * a\n"),
        ("hd-b-2222222", "cron: */20 * * * * b\n"),
    ):
        processes.write_scripts(config.ship_dir(ship), parse("web: x\n" + text))
        records.live[ship.split("-")[1]] = ship
    conductor = Conductor(config, records, _Runtime(), lambda event: None)
    when, jobs = conductor.next_due(datetime(2026, 12, 1, 20, 17, 5))
    assert when == datetime(2026, 12, 1, 20, 20)
    assert [(live.app, job.command) for live, job in jobs] == [("b", "b")]


def test_a_ship_made_again_under_its_name_runs_its_new_cron_jobs(tmp_path: Path) -> None:
    config, records = _config(tmp_path), _NoRecords()
    ship, ship_dir = "hd-a-1111111", config.ship_dir("hd-a-1111111")
    records.live["a"], records.made[ship] = ship, 1.0
    processes.write_scripts(ship_dir, parse("web: x\ncron: 30 * * * * old\n"))
    conductor = Conductor(config, records, _Runtime(), lambda event: None)
    at = datetime(2026, 12, 1, 20, 17, 5)
    assert [job.command for _, job in conductor.next_due(at)[1]] == ["old"]
    processes.write_scripts(ship_dir, parse("web: x\ncron: */20 * * * * new\n"))
    records.made[ship] = 2.0  # retired, then deployed again: the same name, a new ship
    assert conductor.next_due(at) == (
        datetime(2026, 12, 1, 20, 20),
        [(LiveShip("a", ship), parse("cron: */20 * * * * new\n").cron[0])],
    )


# ─── small fakes of what the conductor reads ─────────────────────────────────────


def _config(tmp_path: Path):  # type: ignore[no-untyped-def]
    return World(tmp_path).config()


class _NoRecords:
    """Each app's live ship, made at `made[ship]` (0 unless set)."""

    def __init__(self) -> None:
        self.live: dict[str, str] = {}
        self.made: dict[str, float] = {}

    def all(self) -> list[App]:
        return [
            App(
                name, live=ship, ships=[Ship(ship, "0" * 40, "", 0, created=self.made.get(ship, 0))]
            )
            for name, ship in sorted(self.live.items())
        ]


class _Runtime:
    """An attach that prints a line, then waits until the test lets it end."""

    def __init__(self) -> None:
        self.done = asyncio.Event()
        self.argv: list[list[str]] = []

    async def attach(
        self,
        ship: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        timeout: float,
        on_line: Callable[[str], None] | None = None,
    ) -> int:
        self.argv.append(list(argv))
        if on_line is not None:
            on_line("ticked")
        await self.done.wait()
        return 0


def test_hd_ps_rows_and_table(tmp_path: Path) -> None:
    config = _config(tmp_path)
    records = _NoRecords()
    ship = "hd-web-abc1234"
    ship_dir = config.ship_dir(ship)
    processes.write_scripts(ship_dir, parse("web: ./serve\nworker: ./work\ncron: 0 3 * * * ./x\n"))
    (ship_dir / "run" / "ps" / "web").write_text("state=running\nrestarts=0\nsince=1000\n")
    (ship_dir / "run" / "ps" / "worker").write_text(
        "state=backoff\nrestarts=2\nstreak=2\nsince=900\nlast_code=1\n"
    )
    records.live["web"] = ship
    conductor = Conductor(
        config, records, _Runtime(), lambda event: None, now=lambda: datetime(2026, 12, 1, 20, 0)
    )
    view = ProcessView(config, records, conductor)  # type: ignore[arg-type]
    rows = view.ps()["processes"]
    assert [(r["process"], r["state"], r.get("restarts")) for r in rows] == [
        ("web", "running", 0),
        ("worker", "backoff", 2),
        ("cron", "cron", None),
    ]
    assert rows[2]["next"] == "2026-12-02T03:00"
    text = ps_text(view.ps(), width=100)
    assert "backoff (last exit 1)" in text
    assert "0 3 * * * → 2026-12-02T03:00" in text
    assert ps_text({"processes": []}) == "no processes: no app has a live ship\n"


# ─── hd run: a one-off ship, destroyed whatever happens ──────────────────────────


async def test_a_one_off_ship_is_made_from_the_live_one_and_destroyed(
    world: World, hd: Squadron
) -> None:
    await hd.deploy("web", {"Procfile": WEB})
    live = hd.app("web").live
    assert live is not None
    view = _view(hd)
    before = set(world.runtime.containers)
    lines: list[str] = []
    code = await view.run("web", ["echo", "$PORT"], lines.append)
    assert code == 0
    made = [c.split()[1] for c in world.runtime.calls if c.startswith("snapshot ")][-1]
    assert made.startswith(f"{live}-run")
    assert world.runtime.snapshot_source(live) is not None
    assert set(world.runtime.containers) == before  # destroyed after
    assert made not in world.network.taken  # its address given back
    assert not hd.daemon.config.ship_dir(made).exists()
    world.runtime.fail.add("start")
    with pytest.raises(HyperdriveError, match="start failed"):
        await view.run("web", ["true"], lines.append)
    assert set(world.runtime.containers) == before  # destroyed when it failed too


async def test_a_one_off_ship_needs_a_live_one(hd: Squadron) -> None:
    with pytest.raises(HyperdriveError, match="ghost has no live ship"):
        await _view(hd).run("ghost", ["true"], print)


def _view(hd: Squadron) -> OneOff:
    for add in hd.daemon.api.admin_routes:  # the wiring's own OneOff, reached through its view
        view = getattr(add, "__self__", None)
        if isinstance(view, ProcessView) and view.oneoff is not None:
            return view.oneoff
    raise AssertionError("no ProcessView wired")
