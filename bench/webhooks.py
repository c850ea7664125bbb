"""Signed push webhooks: Hyperdrive's receiver (durable) beside adnanh/webhook (persists nothing).

Run: .venv/bin/python bench/webhooks.py [--seconds 5] [--rounds 3] [--rate-seconds 5]

1. Throughput: wrk, keep-alive, 10 connections, a 7-8 KB signed GitHub push with a unique
   X-GitHub-Delivery per request, against (a) the receiver with a real FileSpool, event log and
   delivery ring (the daemon's wiring and listener) in a separate process, on the daemon's
   event loop (uvloop; HYPERDRIVE_EVENT_LOOP) and
   (b) /usr/bin/webhook with a payload-hmac-sha256 rule,
   in rounds that alternate between the two so a shared machine's noise hits both alike; the
   servers' own CPU time per request (/proc/PID/stat) is the figure load moves least.
2. Latency: p50/p99 at a fixed 100 requests/s from a small asyncio client, both servers.
3. Every 202 is exactly one trigger: the journal on disk is counted against the answers.
4. kill -9 of the receiver under load: every acknowledged delivery is in the journal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
TREE = os.environ.get("HD_BENCH_TREE") or str(ROOT)  # whose hyperdrive (bench/webhooks_ab.py)
sys.path.insert(0, TREE)

from tests.conftest import free_port  # noqa: E402

BODY = (ROOT / "tests/fixtures/webhooks/github_push.json").read_bytes()
SECRET = "bench-secret-0123456789"
SIGNATURE = "sha256=" + hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()
APP_URL = "git@github.com:octo-org/web.git"
Latency = tuple[float, float, int]

WRK_SCRIPT = r"""
local threads, n = {}, 0
function setup(thread)
  n = n + 1
  thread:set("tid", n)
  table.insert(threads, thread)
end
function init(args)
  local f = io.open(args[1], "rb"); body = f:read("*a"); f:close()
  sig, run, path = args[2], args[3], args[4]
  counter, ok, other = 0, 0, 0
end
function request()
  counter = counter + 1
  local headers = {
    ["Content-Type"] = "application/json",
    ["X-GitHub-Event"] = "push",
    ["X-GitHub-Delivery"] = run .. "-" .. tid .. "-" .. counter,
    ["X-Hub-Signature-256"] = sig,
  }
  return wrk.format("POST", path, headers, body)
end
function response(status, headers, body)
  if status >= 200 and status < 300 then ok = ok + 1 else other = other + 1 end
end
function done(summary, latency, requests)
  local a, o = 0, 0
  for _, t in ipairs(threads) do a = a + t:get("ok"); o = o + t:get("other") end
  io.write(string.format("RESULT ok=%d other=%d requests=%d errors=%d\n", a, o,
    summary.requests, summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout))
end
"""


# ─── the receiver, as its own process ────────────────────────────────────────


def serve(port: int, spool_dir: Path) -> None:
    """`bench/webhooks.py --serve PORT DIR`: the receiver with a real FileSpool, on the event
    loop `hd serve` of that tree runs on by default (a tree before HYPERDRIVE_EVENT_LOOP: the
    standard library's, as its daemon did)."""
    from hyperdrive.config import Config  # noqa: PLC0415 - the tree HD_BENCH_TREE names

    try:
        from hyperdrive.server import loop_factory  # noqa: PLC0415
    except ImportError:
        factory = asyncio.new_event_loop
    else:
        factory = loop_factory(getattr(Config(), "event_loop", "asyncio"))
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_serve(port, spool_dir))


async def _serve(port: int, spool_dir: Path) -> None:
    from aiohttp import web  # noqa: PLC0415

    from hyperdrive.eventlog import JsonlEventLog  # noqa: PLC0415
    from hyperdrive.hooks.deliveries import Deliveries  # noqa: PLC0415
    from hyperdrive.hooks.webhook import StaticResolver, WebhookReceiver  # noqa: PLC0415
    from hyperdrive.httpgate import serve_public  # noqa: PLC0415
    from hyperdrive.spool import FileSpool  # noqa: PLC0415

    class EveryBodyNew(FileSpool):
        """wrk cannot sign a new body per request, so the bench posts one body under fresh
        delivery ids: the body dedupe (one dict lookup) is off so each takes the durable put."""

        def carried(self, fingerprint: str) -> str | None:
            return None

    spool = EveryBodyNew(spool_dir)
    await spool.open()
    events = JsonlEventLog(spool_dir.parent / f"{spool_dir.name}-events.jsonl")
    events.open()  # the daemon's wiring: every event written, every answer remembered
    resolver = StaticResolver({"web": (APP_URL, None)}, None)
    receiver = WebhookReceiver(SECRET, spool, resolver, events.append, deliveries=Deliveries())
    app = web.Application(client_max_size=25 * 1024 * 1024)  # as the daemon's public API
    receiver.add_routes(app)
    await serve_public(app, "127.0.0.1", port)  # the daemon's listener: its guards, no access log
    with contextlib.suppress(ImportError):  # what the daemon does once started (a tree before)
        from hyperdrive.server import give_back_memory  # noqa: PLC0415

        give_back_memory()
    loop = type(asyncio.get_running_loop()).__module__.partition(".")[0]
    print(f"ready {loop}", flush=True)
    await asyncio.Event().wait()


# ─── helpers ─────────────────────────────────────────────────────────────────


def wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


@contextlib.contextmanager
def receiver(spool_dir: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port), str(spool_dir)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.startswith("ready"):
            raise RuntimeError(f"receiver did not start: {line!r}")
        yield proc, f"http://127.0.0.1:{port}/hooks/github"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


@contextlib.contextmanager
def peer(workdir: Path) -> Iterator[tuple[str, int]]:
    """adnanh/webhook with an HMAC-SHA256 rule over the payload, running /bin/true."""
    port = free_port()
    rule = {
        "match": {
            "type": "payload-hmac-sha256",
            "secret": SECRET,
            "parameter": {"source": "header", "name": "X-Hub-Signature-256"},
        }
    }
    hook = {
        "id": "github",
        "execute-command": "/bin/true",
        "command-working-directory": str(workdir),
        "response-message": "queued",
        "success-http-response-code": 202,
        "trigger-rule-mismatch-http-response-code": 401,
        "trigger-rule": rule,
    }
    hooks = workdir / "hooks.json"
    hooks.write_text(json.dumps([hook]))
    argv = ["/usr/bin/webhook", "-hooks", str(hooks), "-ip", "127.0.0.1", "-port", str(port)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}/hooks/github", proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def journal_puts(spool_dir: Path, prefix: str) -> list[str]:
    """Ids of every `put` record in the journal on disk whose delivery starts with `prefix`."""
    ids = []
    with open(spool_dir / "journal.jsonl", "rb") as fh:
        for line in fh:
            record = json.loads(line)
            if record.get("op") == "put" and record["trigger"]["id"].startswith(prefix):
                ids.append(record["trigger"]["id"])
    return ids


# ─── the measurements ────────────────────────────────────────────────────────


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (not its children): load-insensitive work done."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(url: str, pid: int, run: str, seconds: int, workdir: Path) -> dict[str, float]:
    """A wrk round, plus the server's own CPU time per accepted request (µs)."""
    before = cpu_seconds(pid)
    result = run_wrk(url, run, seconds, workdir)
    used = cpu_seconds(pid) - before
    return result | {"cpu_us": used / max(result["ok"], 1) * 1e6}


def run_wrk(url: str, run: str, seconds: int, workdir: Path) -> dict[str, float]:
    script, body = workdir / "post.lua", workdir / "body.json"
    script.write_text(WRK_SCRIPT)
    body.write_bytes(BODY)
    path = "/" + url.split("/", 3)[3]
    argv = ["wrk", "-t2", "-c10", f"-d{seconds}s", "--latency", "-s", str(script), url]
    argv += ["--", str(body), SIGNATURE, run, path]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=True)
    fields = dict(kv.split("=") for kv in out.stdout.split("RESULT ", 1)[1].split())
    rate = next(line for line in out.stdout.splitlines() if line.startswith("Requests/sec"))
    return {k: float(v) for k, v in fields.items()} | {"rps": float(rate.split()[1])}


async def fixed_rate(url: str, run: str, rate: int, seconds: float) -> Latency:
    """p50, p99 (ms) and non-2xx count of `rate` requests a second, sent on schedule."""
    latencies: list[float] = []
    failures = 0
    connector = aiohttp.TCPConnector(limit=10)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> None:
            nonlocal failures
            headers = {
                "Content-Type": "application/json",
                "X-GitHub-Event": "push",
                "X-GitHub-Delivery": f"{run}-{i}",
                "X-Hub-Signature-256": SIGNATURE,
            }
            started = time.perf_counter()
            async with session.post(url, data=BODY, headers=headers) as response:
                await response.read()
                failures += not 200 <= response.status < 300
            latencies.append((time.perf_counter() - started) * 1000)

        start, tasks = time.perf_counter(), []
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    cuts = statistics.quantiles(latencies, n=100)
    return cuts[49], cuts[98], failures


async def hammer_until_killed(url: str, proc: subprocess.Popen[str], run: str) -> list[str]:
    """10 keep-alive clients post until the receiver is SIGKILLed; returns the acknowledged ids."""
    acked: list[str] = []

    async def client(n: int, session: aiohttp.ClientSession) -> None:
        for i in range(1_000_000):
            delivery = f"{run}-{n}-{i}"
            headers = {
                "Content-Type": "application/json",
                "X-GitHub-Event": "push",
                "X-GitHub-Delivery": delivery,
                "X-Hub-Signature-256": SIGNATURE,
            }
            try:
                async with session.post(url, data=BODY, headers=headers) as response:
                    if response.status == 202:
                        acked.append(f"github:{delivery}")
            except aiohttp.ClientError:
                return

    async def killer() -> None:
        await asyncio.sleep(1.5)
        proc.send_signal(signal.SIGKILL)

    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(killer(), *(client(n, session) for n in range(10)))
    return acked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=5, help="per round and server")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate-seconds", type=float, default=5.0)
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "DIR"))
    args = parser.parse_args()
    if args.serve:
        serve(int(args.serve[0]), Path(args.serve[1]))
        return
    with tempfile.TemporaryDirectory(prefix="hd-bench-") as tmp:
        bench(Path(tmp), args.seconds, args.rounds, args.rate_seconds)


def bench(tmp: Path, seconds: int, rounds: int, rate_seconds: float) -> None:
    """Alternate the two servers round by round: a shared machine's noise hits both alike."""
    run, spool_dir = f"r{os.getpid()}", tmp / "spool"
    print(
        f"body {len(BODY)} bytes; wrk -t2 -c10 keep-alive, {rounds} alternating rounds of "
        f"{seconds} s each; {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}"
    )
    ours: list[dict[str, float]] = []
    theirs: list[dict[str, float]] = []
    with receiver(spool_dir) as (proc, url):
        for i in range(rounds):
            ours.append(measured(url, proc.pid, f"{run}-wrk{i}", seconds, tmp))
            # A fresh peer per round: it runs its commands after answering, and that backlog
            # (seconds of fork/exec) would otherwise eat the CPU of the next round.
            with peer(tmp) as (peer_url, pid):
                theirs.append(measured(peer_url, pid, f"{run}-peer{i}", seconds, tmp))
            a, b = ours[-1], theirs[-1]
            print(f"  round {i + 1}: {a['rps']:,.0f} vs {b['rps']:,.0f} req/s; "
                  f"CPU {a['cpu_us']:.0f} vs {b['cpu_us']:.0f} µs per request")  # fmt: skip
        lat = asyncio.run(fixed_rate(url, f"{run}-lat", 100, rate_seconds))
    with peer(tmp) as (peer_url, _pid):
        peer_lat = asyncio.run(fixed_rate(peer_url, f"{run}-peerlat", 100, rate_seconds))
    report(ours, theirs, lat, peer_lat)
    for i, result in enumerate(ours):
        check_count(result, journal_puts(spool_dir, f"github:{run}-wrk{i}-"))
    lat_puts = journal_puts(spool_dir, f"github:{run}-lat-")
    sent = int(100 * rate_seconds)
    print(f"100/s client: {sent} answered 202, {len(lat_puts)} in the journal, all distinct")
    assert len(set(lat_puts)) == len(lat_puts) == sent
    check_kill(tmp / "spool-kill", run)


def report(
    ours: list[dict[str, float]], theirs: list[dict[str, float]], lat: Latency, peer_lat: Latency
) -> None:
    mine, peers = (statistics.median(r["rps"] for r in rs) for rs in (ours, theirs))
    bad = [sum(r["other"] + r["errors"] for r in rs) for rs in (ours, theirs)]
    print(f"{'':30}{'hyperdrive':>14}{'adnanh/webhook':>16}")
    print(f"{'accepted req/s (median)':30}{mine:>14,.0f}{peers:>16,.0f}")
    print(f"{'non-2xx + socket errors':30}{bad[0]:>14.0f}{bad[1]:>16.0f}")
    print(f"{'p50 / p99 ms at 100/s':30}{lat[0]:>7.2f} / {lat[1]:<5.2f}"
          f"{peer_lat[0]:>8.2f} / {peer_lat[1]:<5.2f}")  # fmt: skip
    print(f"{'non-2xx at 100/s':30}{lat[2]:>14}{peer_lat[2]:>16}")
    cpu = [statistics.median(r["cpu_us"] for r in rs) for rs in (ours, theirs)]
    print(f"{'server CPU µs per 202 (median)':30}{cpu[0]:>14.0f}{cpu[1]:>16.0f}")
    print(f"CPU ratio peer / hyperdrive: {cpu[1] / cpu[0]:.2f}x (the peer's own process; "
          "the /bin/true it forks per hook is its children's, not counted)")  # fmt: skip
    print(f"ratio hyperdrive / peer: {mine / peers:.2f}x "
          f"(hyperdrive fsyncs before every 202; the peer persists nothing)")  # fmt: skip


def check_count(result: dict[str, float], puts: list[str]) -> None:
    """Every 202 is exactly one trigger; extra puts are requests cut off when wrk stopped."""
    unique = len(set(puts))
    print(
        f"wrk round: {result['ok']:.0f} answered 202, {len(puts)} journal records, "
        f"{unique} distinct ids, {len(puts) - result['ok']:.0f} stored but unanswered "
        "when wrk stopped (at most the 10 in flight)"
    )
    assert unique == len(puts), "a delivery id was stored twice"
    assert 0 <= len(puts) - result["ok"] <= 10, "202s and journal records disagree"


def check_kill(spool_dir: Path, run: str) -> None:
    with receiver(spool_dir) as (proc, url):
        acked = asyncio.run(hammer_until_killed(url, proc, f"{run}-kill"))
        proc.wait(timeout=10)
    stored = set(journal_puts(spool_dir, f"github:{run}-kill-"))
    lost = [i for i in acked if i not in stored]
    print(
        f"kill -9 after 1.5 s: {len(acked)} acknowledged, {len(stored)} in the journal, "
        f"{len(lost)} acknowledged but lost"
    )
    assert not lost


if __name__ == "__main__":
    main()
