"""The app's processes inside its ship: the scripts that run them under supervision, and what
the daemon reads back (their state in run/ps/, their output in run/logs/).

Supervision runs in the ship, so the processes outlive a daemon restart as the ship does:
`/hyperdrive/start` starts `/hyperdrive/supervise <type>` for each Procfile process (plain
POSIX sh: the busybox hull has no Python). The supervisor waits on its process (`wait`, no
polling), restarts it after 1 s, doubling up to BACKOFF_MAX_S while it keeps dying within
BACKOFF_RESET_S, and rewrites run/ps/<type> (key=value lines) at every start and exit. On
SIGTERM it passes the signal on, waits for its process and notes `state=stopped`. Output
goes through a FIFO to `/hyperdrive/logger`, which keeps run/logs/<type>.log under
LOG_LIMIT_BYTES by moving it to <type>.log.1 (so at most twice that per type on the host).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hyperdrive.files import OutsideTree, read_inside
from hyperdrive.procfile import CronJob, Procfile, cron_job

LOG_LIMIT_BYTES = 2 * 1024 * 1024
BACKOFF_MAX_S = 60
BACKOFF_RESET_S = 30  # a process that ran this long starts over at a 1 s delay
CRASH_LOOP_RESTARTS = 5  # restarts within one backoff run: the process is reported crashing
PS_LIMIT = 4096
PROCESSES_FILE = "processes.json"  # in the ship's folder, out of the ship's reach

SUPERVISE = f"""#!/bin/sh
# Written by Hyperdrive: runs /hyperdrive/proc/$1, restarts it with backoff, notes each start
# and exit in /hyperdrive/ps/$1; its output goes to /hyperdrive/logs/$1.log (rotated).
# Every fork may fail (the ship's pids limit), and a shell that cannot fork exits: the EXIT
# trap then starts this script again in the same process, after a second (`read -t` on a
# FIFO nobody writes: no fork), with its counts. Run by bash where there is one (Debian).
name=$1; ps=/hyperdrive/ps/$name; fifo=/hyperdrive/logs/.$name.fifo; tick=$fifo.tick
again() {{  # a process started before the shell died is stopped: one of each, always
  [ -n "$child" ] && kill -TERM "$child" 2>/dev/null
  read -t 1 _ 4<>"$tick" <&4
  set -- "$name" "$restarts" "$streak" "$delay" "$logger"
  [ -x /bin/bash ] && exec /bin/bash /hyperdrive/supervise "$@"
  exec /bin/sh /hyperdrive/supervise "$@"
}}
restarts=${{2:-0}}; streak=${{3:-0}}; delay=${{4:-1}}; logger=${{5:-}}; code=; exited=; child=
trap again EXIT
for f in "$fifo" "$tick"; do [ -p "$f" ] || {{ rm -f "$f"; mkfifo "$f"; }}; done
exec 3<>"$fifo"  # held read-write: writing to it never waits for a reader to open it
note() {{
  printf 'state=%s\\npid=%s\\nsupervisor=%s\\nrestarts=%s\\nstreak=%s\\nsince=%s\\n' \\
    "$1" "$child" "$$" "$restarts" "$streak" "$since" >"$ps.new"
  printf 'last_code=%s\\nlast_exit=%s\\n' "$code" "$exited" >>"$ps.new"
  mv -f "$ps.new" "$ps"
}}
log() {{  # the logger runs, or is started again
  if [ -z "$logger" ] || ! kill -0 "$logger" 2>/dev/null; then
    before=$!
    /bin/sh /hyperdrive/logger "/hyperdrive/logs/$name.log" {LOG_LIMIT_BYTES} <&3 3>&- &
    [ "$!" != "$before" ] && logger=$!  # else the fork failed: $! is an older process
  fi
}}
stop() {{
  trap '' TERM; trap - EXIT
  [ -n "$child" ] && kill -TERM "$child" 2>/dev/null
  wait "$child"; code=$?; exited=$(date +%s)
  note stopped
  exit 0
}}
trap '' HUP
trap stop TERM
while :; do
  log
  since=$(date +%s); before=$!
  /bin/sh "/hyperdrive/proc/$name" </dev/null >&3 2>&1 &
  if [ "$!" != "$before" ]; then
    child=$!; note running
    wait "$child"; code=$?
  else
    child=; code=254  # it could not be started (no fork): tried again after the backoff
  fi
  exited=$(date +%s)
  if [ $((exited - since)) -ge {BACKOFF_RESET_S} ]; then delay=1; streak=0; fi
  restarts=$((restarts + 1)); streak=$((streak + 1))
  echo "[hyperdrive] $name exited $code; restarting in $delay s" >&3
  note backoff
  sleep "$delay"
  delay=$((delay * 2)); [ "$delay" -gt {BACKOFF_MAX_S} ] && delay={BACKOFF_MAX_S}
done
"""

LOGGER = """#!/bin/sh
# Written by Hyperdrive: appends each line read to $1, moved to $1.1 once it holds $2 bytes.
# SIGTERM is for the processes: what they print while they stop is still kept.
trap '' TERM HUP
file=$1; limit=$2; size=0
[ -f "$file" ] && size=$(wc -c <"$file")
exec 3>>"$file"
while IFS= read -r line; do
  printf '%s\\n' "$line" >&3
  size=$((size + ${#line} + 1))
  if [ "$size" -ge "$limit" ]; then
    exec 3>&-; mv -f "$file" "$file.1"; exec 3>>"$file"; size=0
  fi
done
"""

# A supervisor already running for a type (a kept ship revived twice) is not started again;
# a pid noted before the ship last stopped may be another process's now: its cmdline says.
START_HEAD = """#!/bin/sh
# Written by Hyperdrive: starts each process of the Procfile under /hyperdrive/supervise.
up() {  # a new ship has no ps file: no sed (a process) for it
  [ -f "/hyperdrive/ps/$1" ] || return 1
  pid=$(sed -n 's/^supervisor=//p' "/hyperdrive/ps/$1" 2>/dev/null)
  [ -n "$pid" ] && grep -q supervise "/proc/$pid/cmdline" 2>/dev/null
}
sh=/bin/sh; [ -x /bin/bash ] && sh=/bin/bash  # bash survives a failed fork; ash and dash do not
"""
START_ONE = (
    'up {name} || $sh -c \'trap "" HUP; exec "$0" /hyperdrive/supervise {name}\' $sh '
    "</dev/null >/dev/null 2>&1 &\n"
)


def command_script(command: str) -> str:
    """A process, release or cron script: the app's env, in /app, then the command."""
    return f". /hyperdrive/env\ncd /app\n{command}\n"


def write_scripts(ship_dir: Path, procfile: Procfile) -> list[Path]:
    """The supervisor, logger, start, each process's, release and cron scripts in run/, and
    processes.json beside run/ (what the daemon reads back: the ship cannot change it)."""
    run = ship_dir / "run"
    written = {
        "supervise": SUPERVISE,
        "logger": LOGGER,
        "start": START_HEAD + "".join(START_ONE.format(name=n) for n in procfile.processes),
    }
    for name, command in procfile.processes.items():
        written[f"proc/{name}"] = command_script(command)
    for job in procfile.cron:
        written[f"cron/{job.name}"] = command_script(job.command)
    if procfile.release is not None:
        written["release"] = command_script(procfile.release)
    folders = [run / name for name in ("proc", "cron", "ps", "logs")]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    for relative, text in written.items():
        (run / relative).write_text(text)
    (ship_dir / PROCESSES_FILE).write_text(json.dumps(describe(procfile), indent=1) + "\n")
    scripts = [run / name for name in written if "/" not in name]
    return scripts + folders  # a folder is handed over with what is in it


def describe(procfile: Procfile) -> dict[str, object]:
    cron = [{"name": j.name, "spec": j.spec, "command": j.command} for j in procfile.cron]
    return {"processes": dict(procfile.processes), "release": procfile.release, "cron": cron}


@dataclass(frozen=True)
class ShipProcesses:
    """A built ship's Procfile as the daemon recorded it (processes.json)."""

    processes: dict[str, str]
    cron: tuple[CronJob, ...]

    @property
    def web(self) -> bool:
        return "web" in self.processes


def recorded(ship_dir: Path) -> ShipProcesses:
    """processes.json of a ship; a ship built before it existed ran `web` only."""
    try:
        data = json.loads((ship_dir / PROCESSES_FILE).read_text())
        jobs = tuple(cron_job(c["name"], f"{c['spec']} {c['command']}") for c in data["cron"])
        return ShipProcesses(dict(data["processes"]), jobs)
    except (OSError, ValueError, KeyError, TypeError):
        return ShipProcesses({"web": ""}, ())


@dataclass(frozen=True)
class ProcessState:
    """One supervised process as its supervisor last wrote it (run/ps/<type>)."""

    name: str
    state: str  # running, backoff, stopped (after SIGTERM), or missing (never started)
    restarts: int = 0
    streak: int = 0  # restarts since it last ran BACKOFF_RESET_S
    since: float | None = None
    last_code: int | None = None
    last_exit: float | None = None

    def uptime(self, now: float | None = None) -> float | None:
        if self.state != "running" or self.since is None:
            return None
        return max(0.0, (now or time.time()) - self.since)

    @property
    def crashing(self) -> bool:
        return self.streak >= CRASH_LOOP_RESTARTS

    def to_json(self, now: float | None = None) -> dict[str, object]:
        return {
            "process": self.name,
            "state": "crashing" if self.crashing else self.state,
            "restarts": self.restarts,
            "uptime_s": None if (up := self.uptime(now)) is None else round(up),
            "last_code": self.last_code,
        }


def read_states(ship_dir: Path, names: Iterable[str]) -> list[ProcessState]:
    """Each named process's state; the ship owns run/ps, so what is read is checked."""
    return [_state(ship_dir / "run", name) for name in names]


def _state(run: Path, name: str) -> ProcessState:
    try:
        data = read_inside(run, f"ps/{name}", PS_LIMIT)
    except (OutsideTree, OSError):
        data = None
    if not data:
        return ProcessState(name, "missing")
    fields = dict(line.partition("=")[::2] for line in data.decode("utf-8", "replace").splitlines())
    state = fields.get("state", "")
    return ProcessState(
        name,
        state if state in ("running", "backoff", "stopped") else "missing",
        _int(fields.get("restarts")) or 0,
        _int(fields.get("streak")) or 0,
        _float(fields.get("since")),
        _int(fields.get("last_code")),
        _float(fields.get("last_exit")),
    )


def _int(text: str | None) -> int | None:
    with contextlib.suppress(TypeError, ValueError):
        return int(text)  # type: ignore[arg-type]
    return None


def _float(text: str | None) -> float | None:
    value = _int(text)
    return None if value is None else float(value)


def log_tail(ship_dir: Path, name: str, limit: int) -> list[str]:
    """The last lines of a process's output (at most `limit` bytes read), whole lines only."""
    try:  # from run/: a run/logs that is a link out is refused too
        data = read_inside(ship_dir / "run", f"logs/{name}.log", limit, tail=True)
    except OutsideTree:
        return [f"[hyperdrive: /hyperdrive/logs/{name}.log is a link out of the ship]"]
    lines = data.decode("utf-8", "replace").splitlines() if data else []
    return lines[1:] if data and len(data) > limit else lines
