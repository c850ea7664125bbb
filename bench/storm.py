"""Load while faults happen (issue 18): signed GitHub webhooks at `--rate` a second for
`--seconds`, `--per-app` concurrent `git push`es over SSH to each of `--apps` apps (busybox
hull), a client GETting every app all along, and the daemon SIGKILLed `--kill-after` s after
the first push is in, while the others and the deploys are under way (then started again, as
its supervisor would; a pusher whose push the kill cut short pushes again). Prints acknowledged
triggers lost, apps on their newest commit, and failed requests. Run as root:
    .venv/bin/python bench/storm.py [--apps 10 --per-app 2 --rate 100 --seconds 60]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import open_for_ships
from tests.e2e.squadron import admiral_squadron
from tests.e2e.storm import storm
from tests.fixtures.webhooks.forge import SECRET


def main(args: argparse.Namespace) -> None:
    with TemporaryDirectory(prefix="hd-bench-storm-") as tmp:
        root = open_for_ships(tmp)
        with admiral_squadron(root, HYPERDRIVE_WEBHOOK_SECRET=SECRET) as (d, admiral):
            t0 = time.monotonic()
            r = storm(
                d, admiral, root, apps=args.apps, per_app=args.per_app, rate=args.rate,
                seconds=args.seconds, kill_after=args.kill_after,
            )  # fmt: skip
            took = time.monotonic() - t0
    pushes = len(r.pushes)
    print(
        f"{r.webhooks_sent} webhooks sent in {args.seconds:.0f} s ({args.rate:.0f}/s): "
        f"{len(r.acknowledged)} acknowledged (202 queued), refused {r.refused or 'none'} "
        f"(0 = no answer while the daemon was down)"
    )
    print(
        f"{pushes} concurrent pushes to {args.apps} apps: {r.pushes_in} in and queued "
        f"(exit codes {sorted(r.pushes)}: a push streams its deploy, which the kill cuts); "
        f"daemon SIGKILLed at {r.killed_at:.1f} s, answering again {r.back_after:.2f} s later"
    )
    print(
        f"acknowledged triggers lost: {len(r.lost)}; apps on their newest commit: "
        f"{sum(r.newest.values())}/{len(r.newest)}; client requests {r.requests}, "
        f"failed {len(r.failed)}; whole run {took:.0f} s; load {os.getloadavg()[0]:.2f}"
    )
    for said in sorted(set(r.push_errors))[:5]:
        print("  a push that failed:", said.replace("\n", " | "))
    for line in r.failed[:10]:
        print("  failed:", line)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--apps", type=int, default=10)
    parser.add_argument("--per-app", type=int, default=2)
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--kill-after", type=float, default=0.3)
    main(parser.parse_args())
