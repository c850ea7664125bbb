"""Does another app's build starve a live app? Its p99 latency with no build, and while a
build burns every core at Hyperdrive's low CPU weight, at the normal weight (the peer: what a
build got before), and in a cpu.idle cgroup (SCHED_IDLE, for comparison).

    sudo .venv/bin/python bench/build_starvation.py [ROUNDS] [SECONDS] [PAGE…]

A live ship (busybox hull, busybox httpd, started as the pipeline starts one: configured at the
build weight, raised to the running weight with `lxc-cgroup`) answers a paced client on the
host (200 requests/s, a new connection each, over the bridge) for a static page and for a CGI
script that computes for a few ms. A second ship runs the build, four busy loops (two per core
here), and is put in each state in turn for a second (frozen, low, normal, idle) for SECONDS,
so every state sees the same background load (this machine is shared). Uses a private lxcpath
in a temp folder and a bridge `hdb<hex4>br0` on 10.213.203.0/24; removes everything at the end.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hyperdrive.idmap import for_ships
from hyperdrive.lxc_async import Lxc
from hyperdrive.network import bridge_name, ensure_bridge, teardown_bridge
from hyperdrive.pipeline.model import BUILD_CPU_WEIGHT, RUNNING_CPU_WEIGHT, Mount, ShipSpec
from hyperdrive.procs import run
from tests.conftest import open_for_ships
from tests.integration.lxc_fixtures import get_until_ok

SUBNET = "10.213.203.0/24"
RATE = 200  # requests per second
WINDOW_S = 1.0  # how long the build stays in each state before the next
SETTLE_S = 0.1  # requests sent this soon after a change of state are not counted
PATH = {"PATH": "/bin:/sbin:/usr/bin:/usr/sbin"}
# What the other app's build does: four busy loops (two per core here) until its ship stops.
BURN = "for i in 1 2 3 4; do (while :; do :; done) >/dev/null 2>&1 & done; echo burning; sleep 3600"


def one_request(ip: str, path: str) -> float:
    """One GET on a new connection, to the end of the answer: seconds."""
    t0 = time.perf_counter()
    with socket.create_connection((ip, 8080), timeout=5) as conn:
        conn.sendall(f"GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n".encode())
        while conn.recv(65536):
            pass
    return time.perf_counter() - t0


def paced(ip: str, path: str, stop: threading.Event) -> list[tuple[float, float]]:
    """(sent at, latency) of RATE requests a second until `stop` (open loop: a late request
    is not skipped, the next is sent on schedule or at once)."""
    samples: list[tuple[float, float]] = []
    start, n = time.perf_counter(), 0
    while not stop.is_set():
        due = start + n / RATE
        if (wait := due - time.perf_counter()) > 0:
            time.sleep(wait)
        sent = time.perf_counter()
        try:
            samples.append((sent, one_request(ip, path)))
        except OSError:
            samples.append((sent, 5.0))  # counted as a 5 s answer
        n += 1
    return samples


class Load:
    """`paced` in a thread of its own, so the event loop's work is not in its timings."""

    def __init__(self, ip: str, path: str) -> None:
        self._stop = threading.Event()
        self._done: list[list[tuple[float, float]]] = []
        work = lambda: self._done.append(paced(ip, path, self._stop))  # noqa: E731
        self._thread = threading.Thread(target=work, daemon=True)
        self._thread.start()

    async def samples(self) -> list[tuple[float, float]]:
        self._stop.set()
        await asyncio.to_thread(self._thread.join)
        return self._done[0]


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100)[98] * 1000


def cpu_usage_s(pid: int) -> float:
    """CPU seconds the cgroup of `pid` has used (v1 cpuacct on a hybrid host, else v2)."""
    root = Path("/sys/fs/cgroup")
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpuacct" in controllers.split(","):
            return int((root / "cpuacct" / path.lstrip("/") / "cpuacct.usage").read_text()) / 1e9
        if controllers == "" and (root / "cgroup.controllers").exists():
            stat = (root / path.lstrip("/") / "cpu.stat").read_text().split()
            return int(stat[stat.index("usage_usec") + 1]) / 1e6
    raise RuntimeError(f"no cpu accounting for pid {pid}")


@dataclass
class Bench:
    lxc: Lxc
    hull: str
    gateway: IPv4Address
    bridge: str
    site: Path

    def spec(self, host: int, name: str) -> ShipSpec:
        return ShipSpec(
            ip=IPv4Address(f"10.213.203.{host}"),
            gateway=self.gateway,
            prefixlen=24,
            bridge=self.bridge,
            hostname=name,
            mounts=(Mount(self.site, "/app"),),
            memory_bytes=1024**3,  # the defaults every ship gets
            pids=1024,
            cpu_weight=BUILD_CPU_WEIGHT,  # as the pipeline configures every ship
        )

    async def lxc_program(self, program: str, name: str, *args: str) -> None:
        argv = [program, "-P", str(self.lxc.lxcpath), "-n", name, *args]
        done = await run(argv, timeout=10)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr}")

    async def ship(self, name: str, host: int) -> str:
        await self.lxc.snapshot(self.hull, name)
        await self.lxc.write_config(name, self.spec(host, name))
        await self.lxc.start(name)
        return name

    async def live_app(self, name: str) -> str:
        """A ship serving HTTP at the running weight, as Starter.run_start leaves it."""
        await self.ship(name, 2)
        await self.lxc.set_cpu_weight(name, RUNNING_CPU_WEIGHT)
        await self.lxc.attach(name, ["httpd", "-h", "/app", "-p", "8080"], PATH, 10)
        await get_until_ok("http://10.213.203.2:8080/index.html")
        return "10.213.203.2"

    async def under_build(self, ip: str, path: str, name: str, seconds: float) -> Result:
        """The live app's latencies while ship `name` builds, the build put in each STATE in
        turn for WINDOW_S, so every state sees the same background load."""
        await self.ship(name, 3)
        started = asyncio.Event()
        argv = ["sh", "-c", BURN]
        build = asyncio.create_task(
            self.lxc.attach(name, argv, PATH, 7200, lambda t: t == "burning" and started.set())
        )
        try:
            await asyncio.wait_for(started.wait(), 10)
            info = await self.lxc.info(name)
            assert info is not None
            assert info.pid is not None
            return await self._windows(ip, path, name, info.pid, seconds)
        finally:
            await self.lxc.stop(name, kill=True)
            build.cancel()
            await asyncio.gather(build, return_exceptions=True)
            await self.lxc.destroy(name)

    async def enter(self, name: str, state: str) -> None:
        """Put the build in `state`: frozen (no build), or running at a weight or SCHED_IDLE."""
        if state == "none":
            await self.lxc_program("lxc-freeze", name)
            return
        await self.lxc_program("lxc-unfreeze", name)
        await self.lxc_program("lxc-cgroup", name, "cpu.idle", "1" if state == "idle" else "0")
        if state != "idle":  # the kernel refuses a weight for an idle group
            weight = RUNNING_CPU_WEIGHT if state == "normal" else BUILD_CPU_WEIGHT
            await self.lxc.set_cpu_weight(name, weight)

    async def _windows(self, ip: str, path: str, name: str, pid: int, seconds: float) -> Result:
        toggles: list[tuple[float, str]] = []
        cpu = dict.fromkeys(STATES, 0.0)
        load = Load(ip, path)
        for n in range(int(seconds / WINDOW_S)):
            state = STATES[n % len(STATES)]
            await self.enter(name, state)
            toggles.append((time.perf_counter(), state))
            used0 = cpu_usage_s(pid)
            await asyncio.sleep(WINDOW_S)
            cpu[state] += cpu_usage_s(pid) - used0
        toggles.append((time.perf_counter(), "none"))
        windows = len(toggles) // len(STATES)
        latencies = bucket(await load.samples(), toggles)
        cores = {state: used / (windows * WINDOW_S) for state, used in cpu.items()}
        return Result(latencies, cores)


@dataclass
class Result:
    latencies: dict[str, list[float]]  # by state
    cores: dict[str, float]  # cores the build used in each state

    def p99(self, state: str) -> float:
        return p99(self.latencies[state])

    def ratio(self, state: str) -> float:
        return self.p99(state) / self.p99("none")

    def __str__(self) -> str:
        shown = [f"no build p99 {self.p99('none'):6.2f} ms"]
        for state in STATES[1:]:
            shown.append(f"{state} {self.p99(state):6.2f} ms ({self.ratio(state):4.2f}x)")
        counts = "+".join(str(len(self.latencies[s])) for s in STATES)
        return ", ".join(shown) + f"; {counts} requests"


def bucket(
    samples: list[tuple[float, float]], toggles: list[tuple[float, str]]
) -> dict[str, list[float]]:
    """Latencies of requests sent and answered within one window (after SETTLE_S), by the
    build's state in it."""
    found: dict[str, list[float]] = {state: [] for state in STATES}
    for (begin, state), (end, _) in itertools.pairwise(toggles):
        for sent, latency in samples:
            if begin + SETTLE_S <= sent and sent + latency <= end:
                found[state].append(latency)
    return found


# The build's states, one window each in turn: none (frozen), at Hyperdrive's build weight, at
# the normal weight (the peer: what a build got before), in a cpu.idle cgroup (SCHED_IDLE).
STATES = ("none", "low", "normal", "idle")
SHOWN = {
    "low": f"Hyperdrive: the build at cpu weight {BUILD_CPU_WEIGHT}",
    "normal": f"peer: the build at the normal weight {RUNNING_CPU_WEIGHT}",
    "idle": "the build in a cpu.idle=1 cgroup (SCHED_IDLE)",
}


PAGES = {
    "/index.html": "a static page",
    "/cgi-bin/work": "a CGI script that computes for ~2 ms",
}
WORK = """#!/bin/sh
i=0
while [ $i -lt 3000 ]; do i=$((i+1)); done
echo "Content-Type: text/plain"
echo
echo done
"""


def make_site(folder: Path) -> None:
    (folder / "cgi-bin").mkdir(parents=True)
    (folder / "index.html").write_text("bench\n" * 50)
    (folder / "cgi-bin" / "work").write_text(WORK)
    (folder / "cgi-bin" / "work").chmod(0o755)


async def main(rounds: int, seconds: float, pages: list[str]) -> None:
    tag = "hdb" + secrets.token_hex(2)
    with tempfile.TemporaryDirectory() as tmp:
        root = open_for_ships(tmp)
        make_site(root / "site")
        lxc = Lxc(root / "containers", root / "logs", ids=for_ships())
        gateway = await ensure_bridge(tag, SUBNET)
        bench = Bench(lxc, f"{tag}-hull", gateway, bridge_name(tag), root / "site")
        results: dict[str, list[Result]] = {page: [] for page in pages}
        try:
            await lxc.create_busybox_hull(bench.hull)
            ip = await bench.live_app(f"{tag}-live")
            for page, mine in results.items():
                await Load(ip, page).samples()  # warm up
                for n in range(rounds):
                    mine.append(await bench.under_build(ip, page, f"{tag}-b{n}", seconds))
                    print(f"{page} round {n + 1}: {mine[-1]}", flush=True)
        finally:
            for info in await lxc.list():
                if info.name != bench.hull:
                    await lxc.destroy(info.name)
            await lxc.destroy(bench.hull)
            await teardown_bridge(tag)
    summary(results)


def summary(results: dict[str, list[Result]]) -> None:
    count = len(next(iter(results.values())))
    print(f"median of {count} rounds      p99 no build  p99 build  ratio  build cores")
    for page, mine in results.items():
        idle = statistics.median(r.p99("none") for r in mine)
        for state in STATES[1:]:
            busy = statistics.median(r.p99(state) for r in mine)
            ratio = statistics.median(r.ratio(state) for r in mine)
            cores = statistics.median(r.cores[state] for r in mine)
            figures = f"{idle:9.2f} {busy:10.2f} {ratio:6.2f}x {cores:8.2f}"
            print(f"  {page:14} {state:6} {figures}   {SHOWN[state]}")


if __name__ == "__main__":
    args = sys.argv[1:]
    pages = args[2:] or list(PAGES)
    asyncio.run(main(int(args[0]) if args else 3, float(args[1]) if len(args) > 1 else 80.0, pages))
