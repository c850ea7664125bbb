"""Keep `hd serve` running where systemd is not PID 1: restart it when it fails.

`python -m hyperdrive.supervisor --pidfile P --log L`. A clean exit (0) ends supervision;
SIGTERM/SIGINT are passed on to the daemon, which drains before it stops.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

MAX_BACKOFF_S = 30.0


class Supervisor:
    def __init__(self, log: Path) -> None:
        self.log = log
        self.child: subprocess.Popen[bytes] | None = None
        self.stopping = False

    def forward(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)

    def run(self) -> int:
        backoff = 1.0
        while not self.stopping:
            started = time.monotonic()
            code = self._run_once()
            if code == 0 or self.stopping:
                return code
            if time.monotonic() - started > 60:
                backoff = 1.0
            self._note(f"hd serve exited {code}; restarting in {backoff:.0f} s")
            time.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)
        return 0

    def _run_once(self) -> int:
        with open(self.log, "ab") as out:
            self.child = subprocess.Popen(
                [sys.executable, "-m", "hyperdrive", "serve"], stdout=out, stderr=out
            )
            return self.child.wait()

    def _note(self, message: str) -> None:
        with open(self.log, "a") as out:
            out.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} supervisor: {message}\n")


def main() -> int:
    parser = argparse.ArgumentParser(prog="hyperdrive.supervisor")
    parser.add_argument("--pidfile", type=Path, required=True)
    parser.add_argument("--log", type=Path, required=True)
    args = parser.parse_args()
    os.umask(0o027)  # the daemon's log is data: 0640, like everything it keeps (README: Security)
    args.log.parent.mkdir(parents=True, exist_ok=True)
    args.pidfile.write_text(f"{os.getpid()}\n")
    supervisor = Supervisor(args.log)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, supervisor.forward)
    try:
        return supervisor.run()
    finally:
        args.pidfile.unlink(missing_ok=True)


if __name__ == "__main__":
    raise SystemExit(main())
