"""`hd ps [APP]`, `hd logs APP --app` and `hd run APP -- COMMAND` on the admin API, and the
`hd ps` table (`ssh … ps` draws the same).

GET /ps[?app=APP]: each process of each live ship (state, restarts, uptime, last exit code)
and each cron job (running, or when it is due next). GET /apps/APP/output[?lines=N&follow=1]:
the app's output as text lines. POST /apps/APP/run {"command": …}: the command's output as
text lines, then a last line `{"exit": CODE}` (pipeline/oneoff.py makes the ship).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from hyperdrive import applogs
from hyperdrive.config import Config
from hyperdrive.errors import HyperdriveError
from hyperdrive.names import sanitize_app_name
from hyperdrive.pipeline import processes
from hyperdrive.pipeline.conductor import Conductor, LiveShip
from hyperdrive.pipeline.model import Records
from hyperdrive.pipeline.oneoff import OneOff
from hyperdrive.procfile import CronJob

MAX_LINES = 10_000
RunLines = Callable[[str, Sequence[str], Callable[[str], None]], Coroutine[Any, Any, int]]


@dataclass
class ProcessView:
    """What the live ships run, read from their run/ps and the conductor's cron timer."""

    config: Config
    records: Records
    conductor: Conductor
    run: RunLines | None = None  # `hd run`: (app, argv, on_line) → exit code
    oneoff: OneOff | None = None  # `ssh -t … run`: the ship, for a command on a PTY

    def ps(self, app: str | None = None) -> dict[str, Any]:
        rows: list[dict[str, Any]] = []
        now = time.time()
        for live in self.conductor.live():
            if app is not None and live.app != app:
                continue
            ship_dir = self.config.ship_dir(live.ship)
            recorded = processes.recorded(ship_dir)
            for state in processes.read_states(ship_dir, recorded.processes):
                rows.append({"app": live.app, "ship": live.ship, **state.to_json(now)})
            for job in recorded.cron:
                rows.append({"app": live.app, "ship": live.ship, **self._cron_row(live, job)})
        return {"processes": rows}

    def _cron_row(self, live: LiveShip, job: CronJob) -> dict[str, Any]:
        due = job.schedule.next_after(self.conductor.now())
        return {
            "process": job.name,
            "state": "running" if self.conductor.is_running(live.app, job.name) else "cron",
            "schedule": job.spec,
            "next": due.isoformat(timespec="minutes") if due else None,
        }

    def ship_dir(self, app: str) -> Path:
        """The app's live ship's folder; HyperdriveError when it has none."""
        live = self.records.get(app).live if self.records.known(app) else None
        if live is None:
            raise HyperdriveError(f"{app} has no live ship")
        return self.config.ship_dir(live)

    def follow(self, app: str) -> applogs.LiveDir:
        """How `hd logs --app -f` moves on to the app's next live ship."""

        def current() -> Path | None:
            with contextlib.suppress(HyperdriveError):
                return self.ship_dir(app)
            return None

        return applogs.LiveDir(self.config.apps_records_dir / f"{app}.json", current)

    def _found(self, app: str) -> Path:
        try:
            return self.ship_dir(app)
        except HyperdriveError as err:
            raise web.HTTPNotFound(text=f"{err}\n") from None

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/ps", self.get_ps)
        app.router.add_get("/apps/{app}/output", self.get_output)
        app.router.add_post("/apps/{app}/run", self.post_run)

    async def get_ps(self, request: web.Request) -> web.Response:
        name = _app(request.query.get("app")) if request.query.get("app") else None
        if name is not None and not self.records.known(name):
            raise web.HTTPNotFound(text=f"no app named {name}\n")
        return web.json_response(await asyncio.to_thread(self.ps, name))

    async def get_output(self, request: web.Request) -> web.StreamResponse:
        name = _app(request.match_info["app"])
        ship_dir = self._found(name)
        try:
            lines = max(0, min(MAX_LINES, int(request.query.get("lines", "100"))))
        except ValueError:
            raise web.HTTPBadRequest(text="lines: a number\n") from None
        follow = request.query.get("follow") == "1"
        response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionResetError):
            async for line in applogs.app_output(ship_dir, lines, follow, self.follow(name)):
                await response.write(line.encode("utf-8", "replace") + b"\n")
        return response

    async def post_run(self, request: web.Request) -> web.StreamResponse:
        """A one-off command's output, then its exit status as the last line (JSON)."""
        name = _app(request.match_info["app"])
        self._found(name)
        body = await request.json()
        argv = body.get("argv") if isinstance(body, dict) else None
        if not argv or not all(isinstance(a, str) for a in argv) or self.run is None:
            raise web.HTTPBadRequest(text="run needs a command: hd run APP -- COMMAND\n")
        response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        await response.prepare(request)
        queue: asyncio.Queue[str] = asyncio.Queue()
        task = asyncio.create_task(self.run(name, argv, queue.put_nowait))
        try:
            code = await _pump(task, queue, response)
        except HyperdriveError as err:
            await response.write(f"hyperdrive: {err}\n".encode())
            code = 1
        finally:
            task.cancel()
        await response.write(json.dumps({"exit": code}).encode() + b"\n")
        return response


async def _pump(task: asyncio.Task[int], queue: asyncio.Queue[str], out: web.StreamResponse) -> int:
    """Lines to the client as the command prints them, until it exits."""
    while not (task.done() and queue.empty()):
        getter = asyncio.ensure_future(queue.get())
        await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            await out.write(getter.result().encode("utf-8", "replace") + b"\n")
        else:
            getter.cancel()
    return task.result()


def _app(name: str | None) -> str:
    try:
        return sanitize_app_name(name or "")
    except HyperdriveError as err:
        raise web.HTTPBadRequest(text=f"{err}\n") from None


def _uptime(seconds: Any) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def ps_table(ps: Mapping[str, Any]) -> Any:
    """The `hd ps` table: app, process, state, restarts, uptime (or a cron job's next run)."""
    from rich.table import Table  # noqa: PLC0415 - rich costs ~25 ms: only for people

    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("app", "process", "state", "restarts", "uptime / next"):
        table.add_column(column)
    for row in ps.get("processes", []):
        if row.get("schedule") is not None:
            when = f"{row['schedule']} → {row.get('next') or 'never'}"
            table.add_row(row["app"], row["process"], row["state"], "", when)
            continue
        state = row["state"]
        if row.get("last_code") is not None:
            state += f" (last exit {row['last_code']})"
        uptime = _uptime(row.get("uptime_s"))
        table.add_row(row["app"], row["process"], state, str(row["restarts"]), uptime)
    return table


def ps_text(ps: Mapping[str, Any], width: int = 80, color: bool = False) -> str:
    """The table drawn as text (an SSH channel)."""
    from rich.console import Console  # noqa: PLC0415

    out = io.StringIO()
    console = Console(
        file=out, width=width, highlight=False, color_system="standard" if color else None
    )
    if not ps.get("processes"):
        return "no processes: no app has a live ship\n"
    console.print(ps_table(ps))
    return out.getvalue()
