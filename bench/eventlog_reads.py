"""Reading event history without holding up the daemon: figures for a big events.jsonl.

(a) following one deploy (`hd deploy`, a push, `--deploy ID`): read through the index, which
    seeks to the deploy's first event, against a scan of the whole log (what it cost before)
(b) the start-up scan that builds the index (in a worker thread)
(c) `hd logs -n all` over the whole log in worker threads: the longest the event loop went
    without turning meanwhile (a ticker task measures its gaps)

    .venv/bin/python bench/eventlog_reads.py [--events 500000]
"""

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hyperdrive.eventlog import Filter, JsonlEventLog  # noqa: E402


def fill(log: JsonlEventLog, total: int) -> None:
    for n in range(total):
        deploy = f"d{n // 10}"
        log.append({"event": "StageFinished", "app": "web", "deploy": deploy, "stage": "x"})


async def read(log: JsonlEventLog, where: Filter) -> int:
    return sum([1 async for _ in log.read(where)])


async def main(total: int, folder: Path) -> None:
    log = JsonlEventLog(folder / "events.jsonl", max_bytes=1 << 40)
    log.open()
    fill(log, total)
    log.close()
    size = sum(p.stat().st_size for p in log.files()) / 1e6
    print(f"events.jsonl: {total:,} events, {size:.0f} MB")

    started = time.perf_counter()
    log = JsonlEventLog(folder / "events.jsonl", max_bytes=1 << 40)
    log.open()
    await read(log, Filter(deploy="warm-up"))
    print(f"  (b) index built at start (worker thread)   {time.perf_counter() - started:8.2f} s")

    last = f"d{(total - 1) // 10}"
    started = time.perf_counter()
    found = await read(log, Filter(deploy=last))
    indexed = time.perf_counter() - started
    started = time.perf_counter()
    scanned = sum(1 for _ in log.stored(Filter(deploy=last)))
    whole = time.perf_counter() - started
    assert found == scanned == 10
    print(f"  (a) one deploy via the index               {indexed * 1000:8.2f} ms")
    print(f"      the same by a scan of the whole log    {whole * 1000:8.2f} ms")

    gaps: list[float] = []
    reading = True

    async def ticker() -> None:
        before = time.perf_counter()
        while reading:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - before)
            before = now

    beat = asyncio.create_task(ticker())
    started = time.perf_counter()
    assert await read(log, Filter()) == total
    took = time.perf_counter() - started
    reading = False
    await beat
    print(f"  (c) all events, worker threads             {took:8.2f} s")
    print(f"      longest loop gap meanwhile             {max(gaps) * 1000:8.2f} ms")
    log.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=500_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(main(args.events, Path(folder)))
