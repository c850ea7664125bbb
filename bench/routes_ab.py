"""Route changes at 1, 40 and 100 apps, this tree against an older one, alternating in one run.

A real nginx (its own prefix, a free port) routes N apps to one local HTTP server; then, for
`--rounds` rounds, an app is added, removed, and an unchanged set is applied again (what every
redeploy's swap does) through `Routes.apply`. Each tree runs in a child process of its own
(its own imports); trees alternate `--repeat` times. Printed: p50 wall ms and p50 CPU ms
(the process's own + its children's: nginx -t) of each change. Needs nginx; run as root:
    git archive <commit> | tar -x -C /tmp/old
    .venv/bin/python bench/routes_ab.py /tmp/old [--apps 1,40,100] [--rounds 7] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
CHANGES = ("add", "remove", "unchanged")

CHILD = r"""
import asyncio, http.server, json, os, resource, shutil, sys, tempfile, threading, time
from pathlib import Path
from hyperdrive.nginx_reload import AppRoute, Nginx, Routes
from tests.conftest import free_port

class Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass

class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 256  # the verify asks every app at once: 5 refuses some under load

def cpu():
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime) * 1000

async def timed(routes, apps, fresh):
    t0, c0 = time.perf_counter(), cpu()
    await routes.apply(apps, fresh=fresh)
    return (time.perf_counter() - t0) * 1000, cpu() - c0

async def main(n, rounds):
    server = Server(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    prefix = Path(tempfile.mkdtemp(prefix="hdbench-routes-"))
    nginx = Nginx(prefix)
    routes = Routes(nginx, http_port=free_port(), workers="2")
    apps = [AppRoute(f"app{i:03d}", "127.0.0.1", port) for i in range(n)]
    got = {"add": [], "remove": [], "unchanged": []}
    try:
        await routes.apply(apps)
        for k in range(rounds):
            more = [*apps, AppRoute(f"new{k:03d}", "127.0.0.1", port)]
            got["add"].append(await timed(routes, more, {f"new{k:03d}"}))
            got["remove"].append(await timed(routes, apps, set()))
            got["unchanged"].append(await timed(routes, apps, {apps[0].app}))
    finally:
        await nginx.stop()
        shutil.rmtree(prefix, ignore_errors=True)
    print(json.dumps(got))

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""


def run(tree: Path, n: int, rounds: int) -> dict[str, list[list[float]]]:
    """One child process on `tree`'s code: each change's (wall ms, CPU ms) per round."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(n), str(rounds)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return json.loads(done.stdout.splitlines()[-1])


def main(args: argparse.Namespace) -> None:
    trees = {"old": Path(args.old).resolve(), "new": HERE}
    counts = [int(n) for n in args.apps.split(",")]
    seen: dict[tuple[str, int, str], list[list[float]]] = {}
    for _ in range(args.repeat):
        for n in counts:
            for name, tree in trees.items():
                for change, figures in run(tree, n, args.rounds).items():
                    seen.setdefault((name, n, change), []).extend(figures)
    print("| apps | change | old: wall / CPU ms (p50) | new: wall / CPU ms (p50) |")
    print("|---|---|---|---|")
    for n in counts:
        for change in CHANGES:
            cells = []
            for name in trees:
                figures = seen[(name, n, change)]
                wall = statistics.median(f[0] for f in figures)
                cpu = statistics.median(f[1] for f in figures)
                cells.append(f"{wall:.1f} / {cpu:.1f}")
            print(f"| {n} | {change} | " + " | ".join(cells) + " |")
    print(f"\n{args.repeat} x {args.rounds} rounds each; load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("old", help="a tree of the older code (git archive … | tar -x -C DIR)")
    parser.add_argument("--apps", default="1,40,100")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3)
    main(parser.parse_args())
