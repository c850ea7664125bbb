"""Preview push → served, against a normal deploy of the app itself (busybox hull, static app).

A real `hd serve` (its own name, subnet, nginx) and real `git push` over SSH. Each round pushes
new content to master (a normal deploy, served at /web/) and to a new branch `bench/<n>` (a new
preview, served at /web--bench-<n>/; `previews on max 5`, so the oldest are retired as it
goes). The clock starts when git starts and stops at the first answer with the new content (a
thread GETs every 2 ms); a second push to the branch measures a preview's update. Run as root:
    .venv/bin/python bench/previews.py [--rounds 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path
from tempfile import TemporaryDirectory

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import open_for_ships, wait_for
from tests.e2e.squadron import (
    Admiral,
    http_get,
    keygen,
    make_squadron,
    settled,
    teardown,
)


def served_after(port: int, path: str, body: str, push: threading.Thread) -> float:
    """Seconds from starting `push` to the first answer of `path` with `body`."""
    t0 = time.monotonic()
    push.start()
    deadline = t0 + 120
    while time.monotonic() < deadline:
        if http_get(port, path, timeout=2) == (200, body):
            seconds = time.monotonic() - t0
            push.join(60)
            return seconds
        time.sleep(0.002)
    raise RuntimeError(f"{path} never served {body!r}")


def pusher(admiral: Admiral, work: Path, branch: str) -> threading.Thread:
    return threading.Thread(
        target=admiral.git, args=("push", "-q", "hyperdrive", branch), kwargs={"cwd": work}
    )


def squadron(root: Path) -> tuple[object, Admiral, Path]:
    d = make_squadron(root / "hd")
    key = keygen(root / "admiral")
    (d.root / "admirals.pub").write_text(Path(f"{key}.pub").read_text())
    d.start()
    admiral = Admiral(d, key)
    hq = admiral.working_copy(root / "hq", "headquarters")
    orders = "previews on max 5\nhealthcheck / 10\n"
    admiral.commit(
        hq, {"authorized_keys/a.pub": Path(f"{key}.pub").read_text(), "web/orders": orders}
    )
    admiral.git("push", "-q", "hyperdrive", "master", cwd=hq)
    d.wait_event("AppOrdered", 30, app="web")
    work = admiral.working_copy(root / "web", "web")
    admiral.commit(work, {"index.html": "warm\n"})
    admiral.git("push", "-q", "hyperdrive", "master", cwd=work)
    wait_for(lambda: http_get(d.http_port, "/web/") == (200, "warm\n"), 120, 0.1, "warm-up")
    return d, admiral, work


def one_round(d: object, admiral: Admiral, work: Path, n: int) -> tuple[float, float, float]:
    port = d.http_port  # type: ignore[attr-defined]
    admiral.commit(work, {"index.html": f"live {n}\n"})
    live = served_after(port, "/web/", f"live {n}\n", pusher(admiral, work, "master"))
    settled(d)  # type: ignore[arg-type]
    branch = f"bench/{n}"
    admiral.git("checkout", "-q", "-b", branch, cwd=work)
    admiral.commit(work, {"index.html": f"preview {n}\n"})
    path = f"/web--bench-{n}/"
    preview = served_after(port, path, f"preview {n}\n", pusher(admiral, work, branch))
    settled(d)  # type: ignore[arg-type]
    admiral.commit(work, {"index.html": f"preview {n} again\n"})
    again = served_after(port, path, f"preview {n} again\n", pusher(admiral, work, branch))
    admiral.git("checkout", "-q", "master", cwd=work)
    settled(d)  # type: ignore[arg-type]
    return live, preview, again


def show(name: str, samples: list[float]) -> None:
    ms = sorted(s * 1000 for s in samples)
    p90 = ms[min(len(ms) - 1, int(len(ms) * 0.9))]
    print(f"{name:>16}: p50 {statistics.median(ms):6.0f} ms  p90 {p90:6.0f} ms  "
          f"min {ms[0]:5.0f}  max {ms[-1]:5.0f}  (n={len(ms)})")  # fmt: skip


def main() -> None:
    args = argparse.ArgumentParser()
    args.add_argument("--rounds", type=int, default=10)
    rounds = args.parse_args().rounds
    with TemporaryDirectory(prefix="hd-bench-previews-") as tmp:
        root = Path(tmp)
        open_for_ships(root)
        d, admiral, work = squadron(root)
        try:
            results = [one_round(d, admiral, work, n) for n in range(rounds)]
        finally:
            teardown(d)  # type: ignore[arg-type]
    show("normal deploy", [r[0] for r in results])
    show("new preview", [r[1] for r in results])
    show("preview update", [r[2] for r in results])


if __name__ == "__main__":
    main()
