"""In-memory fakes of the pipeline's ports (`pipeline/ports.py`), for the unit tests.

They keep the Protocols' promises in memory, so the deploy state machine is tested in
milliseconds without root (tests/unit/test_pipeline.py); like dulwich's `DictBackend` beside
`Backend`, they live next to what they stand in for, in a module of their own so the daemon
does not load them (~0.2 MB).
"""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from hyperdrive.errors import AttachTimedOut, ContainerError, NetworkError, ProxyError
from hyperdrive.headquarters.orders import Egress
from hyperdrive.pipeline import events as ev
from hyperdrive.pipeline.model import ContainerInfo, Route, ShipSpec, Sockets, check_cpu_weight
from hyperdrive.pipeline.ports import Emit, Giveup, Listener
from hyperdrive.runtimes import KNOWN


@dataclass
class FakeRequests:
    """Responses a test sends (`respond`), told to whoever listens to the app."""

    listeners: dict[str, list[Listener]] = field(default_factory=dict)

    def subscribe(self, app: str, listener: Listener) -> Callable[[], None]:
        self.listeners.setdefault(app, []).append(listener)

        def unsubscribe() -> None:
            if listener in self.listeners[app]:
                self.listeners[app].remove(listener)

        return unsubscribe

    def respond(self, app: str, *statuses: int) -> None:
        for status in statuses:
            for listener in list(self.listeners.get(app, ())):
                listener(status)


class FakeClock:
    """Time that moves only when told to (`advance`), or a millisecond per reading."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def monotonic(self) -> float:
        self.now += 0.001
        return self.now

    def time(self) -> float:
        return self.now


@dataclass
class Holds:
    """Points where the fakes wait until a test lets them go (`hold`, `release`), so a test can
    stop a deploy in any stage: to supersede it there, or to 'crash' the daemon there."""

    waits: dict[str, asyncio.Event] = field(default_factory=dict)
    reached: dict[str, asyncio.Event] = field(default_factory=dict)

    def hold(self, point: str) -> None:
        self.waits[point], self.reached[point] = asyncio.Event(), asyncio.Event()

    def release(self, point: str) -> None:
        self.waits.pop(point).set()

    async def at(self, point: str) -> None:
        if point in self.waits:
            self.reached[point].set()
            await self.waits[point].wait()

    async def arrived(self, point: str, timeout: float = 2.0) -> None:  # noqa: ASYNC109
        await asyncio.wait_for(self.reached[point].wait(), timeout)


FAKE_PIDS = 2**22 + 1  # above any pid_max: a fake init pid never names a real process


@dataclass
class FakeContainer:
    name: str
    state: str = "STOPPED"
    source: str | None = None  # the hull it was snapshotted from
    spec: ShipSpec | None = None
    app_running: bool = False
    cpu_weight: int | None = None  # now; the spec's again at each start
    cpu_idle: bool = False  # likewise
    pid: int | None = None  # while running: a made-up init pid


@dataclass
class FakeRuntime:
    """Containers as records; `/hyperdrive/build` and `/hyperdrive/start` do what tests say.

    `build_output`/`build_code` script the build, `fail` names an operation that raises
    ContainerError (`snapshot`, `start`, `build`, `start-app`) or, for `answer`, an app that
    starts but never answers; `hang_build` makes the build time out (and the release, with
    `hang_release`); `release_code`/`release_output` script the Procfile's `release:`; the
    start script marks each Procfile process running in run/ps (as the real supervisor does)
    except those in `dead_processes`, marked exited 1. A started app answers the
    FakeProbe unless the test brings it down (`stop_app`); `app_does(ship)` is what the app's
    own code does as it starts; `build_weights` are the ship's CPU weights as its builds ran;
    `ignores_term` names ships whose app outlives a SIGTERM.
    Holds: `build`, `destroy`.
    """

    containers: dict[str, FakeContainer] = field(default_factory=dict)
    build_output: list[str] = field(default_factory=lambda: ["built"])
    build_code: int = 0
    start_code: int = 0
    fail: set[str] = field(default_factory=set)
    hang_build: bool = False
    holds: Holds = field(default_factory=Holds)
    calls: list[str] = field(default_factory=list)
    app_does: Callable[[str], None] | None = None
    handed: list[Path] = field(default_factory=list)  # given to the ships' root, in order
    build_weights: list[int | None] = field(default_factory=list)
    build_idle: list[bool] = field(default_factory=list)  # was each build idle (SCHED_IDLE)?
    ignores_term: set[str] = field(default_factory=set)  # ships whose app outlives SIGTERM
    release_code: int = 0
    release_output: list[str] = field(default_factory=lambda: ["migrated"])
    hang_release: bool = False
    dead_processes: set[str] = field(default_factory=set)

    def _get(self, name: str) -> FakeContainer:
        if name not in self.containers:
            raise ContainerError(f"ship {name} does not exist")
        return self.containers[name]

    def _maybe_fail(self, what: str) -> None:
        if what in self.fail:
            raise ContainerError(f"{what} failed (as the test asked)")

    async def snapshot(self, hull: str, ship: str) -> None:
        self.calls.append(f"snapshot {ship}")
        self._maybe_fail("snapshot")
        self._get(hull)
        self.containers[ship] = FakeContainer(ship, source=hull)

    async def write_config(self, ship: str, spec: ShipSpec) -> None:
        self._get(ship).spec = spec

    async def hand_over(self, path: Path) -> None:
        self.handed.append(path)

    async def start(self, ship: str) -> None:
        self.calls.append(f"start {ship}")
        self._maybe_fail("start")
        box = self._get(ship)
        box.state, box.pid = "RUNNING", FAKE_PIDS + len(self.calls)
        box.cpu_weight = box.spec.cpu_weight if box.spec else None
        box.cpu_idle = box.spec.cpu_idle if box.spec else False

    async def set_cpu_weight(self, ship: str, weight: int) -> None:
        self.calls.append(f"cpu-weight {ship} {weight}")
        box = self._get(ship)
        if box.state != "RUNNING":
            raise ContainerError(f"lxc-cgroup {ship} failed: not running")
        box.cpu_weight, box.cpu_idle = check_cpu_weight(weight), False

    async def attach(
        self,
        ship: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        timeout: float,  # noqa: ASYNC109 - mirrors the port
        on_line: Callable[[str], None] | None = None,
    ) -> int:
        box = self._get(ship)
        if box.state != "RUNNING":
            raise ContainerError(f"lxc-attach {ship} failed: not running")
        script = argv[-1].rsplit("/", 1)[-1]
        self.calls.append(f"{script} {ship}")
        if script == "build":
            self.build_weights.append(box.cpu_weight)
            self.build_idle.append(box.cpu_idle)
            return await self._build(on_line, timeout)
        if script.startswith("kill -TERM"):
            box.app_running = box.app_running and ship in self.ignores_term
            if ship not in self.ignores_term:
                self._mark_processes(box, "state=stopped\n")
            return 0
        if script == "release":
            return await self._release(on_line, timeout)
        self._maybe_fail("start-app")
        self._mark_processes(box)
        if self.app_does is not None:
            self.app_does(ship)
        box.app_running = self.start_code == 0 and "answer" not in self.fail
        return self.start_code

    async def _build(self, on_line: Callable[[str], None] | None, seconds: float) -> int:
        await self.holds.at("build")
        self._maybe_fail("build")
        if self.hang_build:
            raise AttachTimedOut("ship", seconds, "")
        for line in self.build_output:
            if on_line is not None:
                on_line(line)
        return self.build_code

    async def _release(self, on_line: Callable[[str], None] | None, seconds: float) -> int:
        if self.hang_release:
            raise AttachTimedOut("ship", seconds, "")
        for line in self.release_output:
            if on_line is not None:
                on_line(line)
        return self.release_code

    def _mark_processes(self, box: FakeContainer, stopped: str | None = None) -> None:
        """What /hyperdrive/supervise writes to run/ps for each process it starts (or
        `stopped`, after SIGTERM)."""
        mounts = box.spec.mounts if box.spec else ()
        run = next((m.host_path for m in mounts if m.container_path == "/hyperdrive"), None)
        if run is None or not (run / "proc").is_dir():
            return
        (run / "ps").mkdir(exist_ok=True)
        for script in (run / "proc").iterdir():
            dead = script.name in self.dead_processes
            state = "state=backoff\nrestarts=1\nlast_code=1\n" if dead else "state=running\n"
            state = stopped or state
            (run / "ps" / script.name).write_text(f"{state}since={int(time.time())}\n")

    async def stop(self, ship: str, kill: bool = False) -> None:
        self.calls.append(f"stop {ship}")
        if ship in self.containers:
            box = self.containers[ship]
            box.state, box.app_running, box.pid = "STOPPED", False, None

    async def destroy(self, ship: str) -> None:
        self.calls.append(f"destroy {ship}")
        self.containers.pop(ship, None)
        await self.holds.at("destroy")

    async def exists(self, ship: str) -> bool:
        return ship in self.containers

    async def info(self, ship: str) -> ContainerInfo | None:
        box = self.containers.get(ship)
        return ContainerInfo(ship, box.state, box.pid) if box else None

    async def list(self) -> builtins.list[ContainerInfo]:
        return [ContainerInfo(b.name, b.state, b.pid) for b in self.containers.values()]

    def names(self) -> builtins.list[str]:
        return sorted(self.containers)

    def snapshot_source(self, ship: str) -> str | None:
        box = self.containers.get(ship)
        return box.source if box else None

    def has_snapshots(self, name: str) -> bool:
        return False

    def running_apps(self) -> builtins.list[str]:
        return sorted(b.name for b in self.containers.values() if b.app_running)

    def stop_app(self, ship: str) -> None:
        """The app in `ship` dies (its container keeps running)."""
        self._get(ship).app_running = False


@dataclass
class FakeHullBuilder:
    """Makes hull containers in a FakeRuntime. Hold: `hull`."""

    runtime: FakeRuntime
    logs: Path
    holds: Holds = field(default_factory=Holds)
    built: list[str] = field(default_factory=list)
    # What a built hull of a kind is measured to carry; the known defaults when not set.
    measured: dict[str, dict[str, str]] = field(default_factory=dict)
    unfit: set[str] = field(default_factory=set)  # hulls made before ships ran unprivileged

    def setup_log(self, hull: str) -> Path:
        return self.logs / hull / "setup.log"

    def fits(self, hull: str) -> bool:
        return hull not in self.unfit

    async def runtimes(self, kind: str, hull: str) -> dict[str, str]:
        return dict(self.measured.get(kind, KNOWN.get(kind, {})))

    async def build(self, kind: str, hull: str, why: str, fresh: bool, emit: Emit) -> str:
        emit(ev.HullBuildStarted(hull=hull, message=f"hull '{hull}' {why}"))
        await self.holds.at("hull")
        self.built.append(hull)
        self.runtime.containers[hull] = FakeContainer(hull)
        return f"from {kind} (fake)"


@dataclass
class FakeGit:
    """Repos as {app: {ref: sha}}, commits as {sha: {path: text}}; `fetch` reads `remote`.
    A text `LINK + target` is committed as a symbolic link to `target`, as git can."""

    LINK: ClassVar[str] = "symlink -> "

    refs: dict[str, dict[str, str]] = field(default_factory=dict)
    trees: dict[str, dict[str, str]] = field(default_factory=dict)
    remote: dict[str, dict[str, str]] = field(default_factory=dict)  # url → {ref: sha}
    fetched: list[tuple[str, str]] = field(default_factory=list)

    def commit(self, app: str, sha: str, files: Mapping[str, str], branch: str = "main") -> str:
        self.trees[sha] = dict(files)
        self.refs.setdefault(app, {})[f"refs/heads/{branch}"] = sha
        return sha

    async def resolve(self, app: str, ref: str, remote: bool = False) -> str | None:
        refs = self.refs.get(app, {})
        return refs.get(ref) or refs.get(f"refs/heads/{ref}") or refs.get(f"refs/tags/{ref}")

    async def default_branch(self, app: str, remote: bool = False) -> str:
        return "main"

    async def export(self, app: str, sha: str, target: Path, remote: bool = False) -> None:
        if sha not in self.trees:
            raise ContainerError(f"{app}: no commit {sha[:7]}")
        for rel, text in self.trees[sha].items():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            if text.startswith(self.LINK):
                (target / rel).symlink_to(text.removeprefix(self.LINK))
            else:
                (target / rel).write_text(text)

    async def fetch(self, app: str, url: str, ref: str) -> str:
        self.fetched.append((url, ref))
        refs = self.remote.get(url, {})
        sha = refs.get(ref) or refs.get(f"refs/heads/{ref}")
        if sha is None:
            raise ContainerError(f"{url} has no {ref}")
        self.refs.setdefault(app, {})[f"refs/heads/{ref}"] = sha
        return sha

    async def remote_default_branch(self, app: str, url: str) -> str:
        return "main"


@dataclass
class FakeProxy:
    """Stable ports from 20000, a traffic map and the routes that are live; `refuse` names
    apps whose new route nginx would refuse."""

    ports: dict[str, int] = field(default_factory=dict)
    pointed: dict[str, tuple[str, int]] = field(default_factory=dict)
    live_routes: list[Route] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)
    prepared: bool = False

    async def prepare(self) -> None:
        self.prepared = True

    def stable_port(self, app: str) -> int:
        return self.ports.setdefault(app, 20000 + len(self.ports))

    def stable_url(self, app: str, path: str) -> str:
        return f"http://stable:{self.stable_port(app)}{path}"

    async def point(self, app: str, ip: str, port: int) -> None:
        self.pointed[app] = (ip, port)

    async def unpoint(self, app: str) -> None:
        self.pointed.pop(app, None)

    async def apply_routes(self, routes: Sequence[Route], fresh: Collection[str]) -> None:
        bad = sorted(r.app for r in routes if r.app in fresh and r.app in self.refuse)
        if bad:
            raise ProxyError(f"nginx -t: the route of {', '.join(bad)} does not test")
        self.live_routes = list(routes)

    def target(self, url: str) -> tuple[str, int] | None:
        """Where a stable URL leads now."""
        port = int(url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        app = next((a for a, p in self.ports.items() if p == port), None)
        return self.pointed.get(app) if app else None


@dataclass
class FakeNetwork:
    """Addresses 10.0.0.2… on a bridge that is 'up' once ensured."""

    gateway: str = "10.0.0.1"
    prefixlen: int = 24
    bridge: str = "fakebr0"
    up: bool = False
    taken: dict[str, str] = field(default_factory=dict)
    egress: dict[str, Egress] = field(default_factory=dict)  # ship address -> its rule
    unresolvable: set[str] = field(default_factory=set)  # names `admit` cannot resolve

    async def ensure(self) -> None:
        self.up = True

    async def admit(self, ship_ip: str, app: str, egress: Egress) -> None:
        bad = sorted(h for h, _ in egress.allow if h in self.unresolvable)
        if bad:
            raise NetworkError(f"egress allow {bad[0]}: {bad[0]} does not resolve")
        self.egress[ship_ip] = egress

    async def dismiss(self, ship_ip: str) -> None:
        self.egress.pop(ship_ip, None)

    def allocate(self, ship: str) -> str:
        if ship not in self.taken:
            used = set(self.taken.values())
            self.taken[ship] = next(
                f"10.0.0.{n}" for n in range(2, 255) if f"10.0.0.{n}" not in used
            )
        return self.taken[ship]

    def release(self, ship: str) -> None:
        self.taken.pop(ship, None)


@dataclass
class FakeProbe:
    """Answers for ships in a FakeRuntime (healthy while their app runs), and through the
    FakeProxy's map for stable URLs; `dies_in_drain` stops the new ship's app during a watch;
    `open_clients` is each ship's open connections (by init pid: FakeRuntime has none, so by
    ship name through `clients_of`). Holds: `health` (a ship's own URL), `swap` (the stable URL
    after the swap), `drain`."""

    runtime: FakeRuntime
    network: FakeNetwork
    proxy: FakeProxy
    dies_in_drain: bool = False
    open_clients: dict[str, int] = field(default_factory=dict)  # ship name → connections
    holds: Holds = field(default_factory=Holds)
    asked: list[str] = field(default_factory=list)

    def _answers(self, url: str) -> bool:
        if url.startswith("http://stable:"):
            target = self.proxy.target(url)
            if target is None:
                return False
            url = f"http://{target[0]}:{target[1]}/"
        ip = url.split("://", 1)[1].split(":", 1)[0]
        ship = next((s for s, a in self.network.taken.items() if a == ip), None)
        box = self.runtime.containers.get(ship or "")
        return box is not None and box.state == "RUNNING" and box.app_running

    async def wait_healthy(
        self, url: str, seconds: float, give_up: Giveup | None = None
    ) -> str | None:
        self.asked.append(url)
        await self.holds.at("swap" if url.startswith("http://stable:") else "health")
        if self._answers(url):
            return None
        if give_up is not None and (reason := give_up()):
            return reason
        return "did not answer (ClientConnectorError)"

    async def watch_healthy(self, url: str, seconds: float) -> str | None:
        self.asked.append(f"watch {url}")
        await self.holds.at("drain")
        if self.dies_in_drain:
            target = self.proxy.target(url)
            ship = next(
                (s for s, a in self.network.taken.items() if target and a == target[0]), None
            )
            if ship:
                self.runtime.stop_app(ship)
        return None if self._answers(url) else "no answer: ClientConnectorError"

    def sockets(self, pid: int | None, port: int) -> Sockets | None:
        box = next((b for b in self.runtime.containers.values() if b.pid == pid), None)
        if box is None or box.state != "RUNNING":
            return None
        return Sockets(self.open_clients.get(box.name, 0), box.app_running)
