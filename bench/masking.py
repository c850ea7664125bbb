"""Figure: what masking costs each line a build prints (setup.log and the event log both mask
it), by how many secrets the squadron holds, against the regex alternation it replaced; and
what masking history again costs a read of every stored event (`hd logs -n all`).

    .venv/bin/python bench/masking.py [--lines 20000] [--events 200000]
"""

import argparse
import re
import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from hyperdrive.eventlog import JsonlEventLog
from hyperdrive.masking import Masker, shown_forms

LINE = (
    "Collecting django==5.1 (from -r requirements.txt (line 1)) "
    "Downloading http://10.0.0.1/files/django-5.1-py3-none-any.whl (8.2 MB)"
)


def per_line(mask: Callable[[str], str], text: str, lines: int) -> float:
    """Microseconds per call, best of 3."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(lines):
            mask(text)
        best = min(best, (time.perf_counter() - t0) / lines)
    return best * 1e6


def alternation(values: list[str]) -> Callable[[str], str]:
    """The plain way: one regex of every form, longest first."""
    forms = sorted({f for v in values for f in shown_forms(v)}, key=lambda f: -len(f))
    pattern = re.compile("|".join(map(re.escape, forms)))
    return lambda text: pattern.sub("********", text)


def history(events: int, mask: Masker) -> None:
    """Seconds to read every stored event, without and with the mask (best of 3)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "events.jsonl"
        log = JsonlEventLog(path, max_bytes=1 << 40)
        log.open()
        for n in range(events):
            log.append({"event": "BuildOutput", "app": "web", "deploy": f"d{n}", "message": LINE})
        log.close()
        for name, masked in (("unmasked", None), ("masked", mask)):
            reader = JsonlEventLog(path, max_bytes=1 << 40, mask=masked)
            reader.open()
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                for _ in reader.stored():
                    pass
                best = min(best, time.perf_counter() - t0)
            reader.close()
            print(f"read {events} events, {name}: {best:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
    print("secrets | build the mask | clean line | line with a secret | regex alternation")
    for count in (10, 100, 1000):
        values = [secrets.token_urlsafe(8 + n % 24) for n in range(count)]
        t0 = time.perf_counter()
        masker = Masker.of(values)
        built = (time.perf_counter() - t0) * 1000
        clean = per_line(masker, LINE, args.lines)
        dirty = per_line(masker, LINE + values[count // 2], args.lines)
        plain = per_line(alternation(values), LINE, max(1, args.lines // 10))
        print(f"{count} | {built:.1f} ms | {clean:.1f} µs | {dirty:.1f} µs | {plain:.1f} µs")
    history(args.events, Masker.of(secrets.token_urlsafe(16) for _ in range(100)))


if __name__ == "__main__":
    main()
