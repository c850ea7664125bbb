"""HTTPS against a real ACME server (pebble on loopback): how long from a name ordered to HTTPS
served with a chain that verifies, and failed requests while certificates are swapped under load.

Real pieces: Hyperdrive's nginx (Routes), its certificate keeper and ACME client, pebble +
pebble-challtestsrv (tests/pebble.py), a busybox httpd as the app. Phase 1 orders `--names`
new names one by one and times each until a TLS handshake verifies against pebble's root.
Phase 2 issues `--validity` s certificates so the keeper renews them by its own timer
(every 2/3 of that) while keep-alive and new-connection HTTPS clients hammer the app; each
renewal is a tested nginx reload. Run as root:  .venv/bin/python bench/https.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hyperdrive.acme_client import AcmeIssuer
from hyperdrive.certs import CertStore
from hyperdrive.https import CertificateKeeper
from hyperdrive.nginx_reload import AppRoute, Nginx, Routes
from hyperdrive.pipeline import events as ev
from hyperdrive.proxy import tls_for
from tests.conftest import free_port
from tests.pebble import Pebble, served_chain


@dataclass
class Tally:
    requests: int = 0
    errors: int = 0
    non_200: int = 0
    unrecovered: int = 0
    why: dict[str, int] = field(default_factory=dict)

    def error(self, err: BaseException) -> None:
        self.errors += 1
        key = type(err).__name__
        self.why[key] = self.why.get(key, 0) + 1


@dataclass
class Bench:
    routes: Routes
    keeper: CertificateKeeper
    pebble: Pebble
    https_port: int
    app_port: int
    live: list[AppRoute] = field(default_factory=list)
    events: list[ev.Event] = field(default_factory=list)

    async def refresh(self) -> None:
        tls = tls_for(self.keeper, self.live, "", self.https_port)
        await self.routes.apply(self.live, tls=tls)

    async def order(self, app: str, host: str) -> None:
        self.live = [*self.live, AppRoute(app, "127.0.0.1", self.app_port, (host,))]
        await self.refresh()


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Status of one HTTP/1.1 response with a Content-Length body, read to its end."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(
        (
            int(line.split(":", 1)[1])
            for line in lines
            if line.lower().startswith("content-length:")
        ),
        0,
    )
    await reader.readexactly(length)
    return int(lines[0].split()[1])


FAILURES = (OSError, ssl.SSLError, asyncio.IncompleteReadError, TimeoutError, ValueError)
Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _get(
    port: int, host: str, ctx: ssl.SSLContext, conn: Conn | None, request: bytes
) -> tuple[int, Conn, bool]:
    """One GET on `conn` (or a new connection): (status, the connection, whether it was reused)."""
    reused = conn is not None
    if conn is None:
        conn = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=host)
    conn[1].write(request)
    return await asyncio.wait_for(_read_response(conn[0]), 5), conn, reused


async def client(
    port: int, host: str, ctx: ssl.SSLContext, stop: asyncio.Event, tally: Tally, keep: bool
) -> None:
    """GET / over HTTPS in a loop, on one kept-alive connection or a new one per request. A
    request that fails on a reused connection is tried once more on a new one, as browsers,
    curl and urllib3 do (RFC 9112 9.3.1); `errors` counts every failure, `unrecovered` those
    that failed again."""
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\n{'' if keep else 'Connection: close'}\r\n\r\n"
    conn: Conn | None = None
    while not stop.is_set():
        tally.requests += 1
        try:
            status, conn, _ = await _get(port, host, ctx, conn, request.encode())
        except FAILURES as err:
            tally.error(err)
            reused = conn is not None
            _close(conn)
            conn = None
            status = await _retry(port, host, ctx, request.encode(), tally) if reused else 0
        tally.non_200 += status not in (0, 200)
        if not keep:
            _close(conn)
            conn = None
    _close(conn)


async def _retry(port: int, host: str, ctx: ssl.SSLContext, request: bytes, tally: Tally) -> int:
    try:
        status, conn, _ = await _get(port, host, ctx, None, request)
    except FAILURES:
        tally.unrecovered += 1
        return 0
    _close(conn)
    return status


def _close(conn: Conn | None) -> None:
    if conn is not None:
        conn[1].close()


async def issue_latency(bench: Bench, names: int) -> list[float]:
    """Name ordered → a handshake for it verifies against pebble's root, for each new name."""
    root = bench.pebble.roots_file()
    times = []
    for i in range(names):
        host = f"n{i}.bench{os.getpid()}.test"
        started = time.monotonic()
        await bench.order(f"n{i}", host)
        async with asyncio.timeout(120):
            while True:
                try:
                    await asyncio.to_thread(served_chain, bench.https_port, host, root)
                    break
                except (ssl.SSLError, OSError):
                    await asyncio.sleep(0.02)
        times.append(time.monotonic() - started)
    return times


async def swaps_under_load(bench: Bench, args: argparse.Namespace) -> tuple[Tally, Tally, int]:
    """Keep-alive and new-connection HTTPS clients while the keeper renews by its timer."""
    host = bench.live[0].servernames[0]
    ctx = ssl.create_default_context(cafile=str(bench.pebble.roots_file()))
    stop, kept, fresh = asyncio.Event(), Tally(), Tally()
    tasks = [
        asyncio.create_task(client(bench.https_port, host, ctx, stop, kept, True))
        for _ in range(args.connections)
    ]
    tasks += [
        asyncio.create_task(client(bench.https_port, host, ctx, stop, fresh, False))
        for _ in range(args.clients)
    ]
    before = sum(isinstance(e, ev.CertificateRenewed) for e in bench.events)
    await asyncio.sleep(args.seconds)
    stop.set()
    await asyncio.gather(*tasks)
    renewals = sum(isinstance(e, ev.CertificateRenewed) for e in bench.events) - before
    return kept, fresh, renewals


def app_server(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    """busybox httpd serving one small page on 127.0.0.1."""
    busybox = shutil.which("busybox")
    assert busybox, "apt-get install busybox-static"
    (folder / "index.html").write_text("hello over tls\n")
    port = free_port()
    proc = subprocess.Popen([busybox, "httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", str(folder)])
    time.sleep(0.2)
    return proc, port


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="hd-bench-https-") as tmp:
        root = Path(tmp)
        root.chmod(0o711)  # nginx's workers (nobody) pass through to the HTTP-01 webroot
        (root / "app").mkdir()
        app, app_port = app_server(root / "app")
        nginx = Nginx(root / "nginx")
        routes = Routes(nginx, http_port=free_port(), workers=str(args.workers))
        pebble = Pebble(root / "pebble", routes.http_port).start()
        store = CertStore(root / "certs")
        store.prepare()
        issuer = AcmeIssuer(store, pebble.directory, "bench@example.com", pebble.ca_file)
        keeper = CertificateKeeper(store, issuer, emit=print, retry_s=1.0)
        bench = Bench(routes, keeper, pebble, free_port(), app_port)
        keeper.emit, keeper.changed = bench.events.append, [bench.refresh]
        timer = asyncio.create_task(keeper.run())
        try:
            await report(bench, args)
        finally:
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer
            await nginx.stop()
            pebble.close()
            app.terminate()
            app.wait(10)


async def report(bench: Bench, args: argparse.Namespace) -> None:
    times = await issue_latency(bench, args.names)
    ms = sorted(t * 1000 for t in times)
    p90 = ms[max(int(len(ms) * 0.9) - 1, 0)]
    print(
        f"name ordered -> HTTPS served with a verified chain ({args.names} names, pebble "
        f"PEBBLE_VA_NOSLEEP=1): p50 {statistics.median(ms):.0f} ms, p90 {p90:.0f} ms, "
        f"min {ms[0]:.0f}, max {ms[-1]:.0f}"
    )
    # pebble again, now issuing short-lived certificates: one name's renewals are the swaps
    bench.pebble.stop_pebble()
    bench.pebble.validity_s = args.validity
    bench.pebble.start()
    bench.live = []
    await bench.refresh()
    await bench.order("swapped", f"swapped.bench{os.getpid()}.test")
    async with asyncio.timeout(120):
        while not any(isinstance(e, ev.CertificateIssued) and e.host.startswith("swapped.")
                      for e in bench.events):  # fmt: skip
            await asyncio.sleep(0.05)
    kept, fresh, renewals = await swaps_under_load(bench, args)
    for label, tally in (("keep-alive", kept), ("new connection", fresh)):
        share = 100.0 * (tally.errors + tally.non_200) / max(tally.requests, 1)
        print(
            f"{label:>14}: {tally.requests} HTTPS requests, {tally.non_200} non-200, "
            f"{tally.errors} errors ({share:.4f}%) {tally.why or ''}, "
            f"{tally.unrecovered} failed again when retried on a new connection"
        )
    print(
        f"certificate swaps (renewals by the timer, tested reloads) in {args.seconds:.0f} s: "
        f"{renewals}"
    )
    with open("/proc/loadavg") as loadavg:
        print(f"load average {loadavg.read().split()[0]}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--names", type=int, default=10)
    parser.add_argument(
        "--validity", type=int, default=15, help="seconds pebble's certificates last"
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="load phase length")
    parser.add_argument("--connections", type=int, default=8, help="keep-alive clients")
    parser.add_argument("--clients", type=int, default=2, help="new-connection clients")
    parser.add_argument("--workers", type=int, default=2)
    asyncio.run(main(parser.parse_args()))
