"""Admiral commands over SSH: `ssh -p 2222 git@HOST status | logs [-f] [APP] | deploy APP [SHA]
| rollback APP | enter APP`. Each becomes the same trigger or read as its `hd` twin."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import pty
import struct
import termios
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import asyncssh

from hyperdrive.errors import HyperdriveError, InvalidName
from hyperdrive.eventlog import EventLog, Filter
from hyperdrive.names import check_sha, sanitize_app_name
from hyperdrive.outcomes import OUTCOMES
from hyperdrive.render import describe
from hyperdrive.spool import FileSpool
from hyperdrive.triggers import Trigger

Process = asyncssh.SSHServerProcess[bytes]
FOLLOW_LIMIT_S = 3600.0
ENTER_SHELL = ("/bin/sh", "-c", "cd /app 2>/dev/null; . /hyperdrive/env 2>/dev/null; exec /bin/sh")


class _Refused(Exception):
    """A bad admiral command line; the text is shown to the admiral."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise _Refused(message)


def _parser() -> _Parser:
    top = _Parser(prog="ssh … ", add_help=False)
    verbs = top.add_subparsers(dest="verb")
    verbs.add_parser("status", add_help=False).add_argument("--json", action="store_true")
    logs = verbs.add_parser("logs", add_help=False)
    logs.add_argument("app", nargs="?")
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("--json", action="store_true")
    logs.add_argument("-n", "--lines", type=int, default=100)
    deploy = verbs.add_parser("deploy", add_help=False)
    deploy.add_argument("app")
    deploy.add_argument("sha", nargs="?")
    verbs.add_parser("rollback", add_help=False).add_argument("app")
    verbs.add_parser("enter", add_help=False).add_argument("app")
    return top


def _write(process: Process, text: str, err: bool = False) -> None:
    stream = process.stderr if err else process.stdout
    stream.write(text.encode(errors="replace"))


class AdmiralCommands:
    """The handler GitServer calls for every command that is not git."""

    def __init__(
        self,
        eventlog: EventLog,
        spool: FileSpool,
        status: Callable[[], Mapping[str, Any]],
        lxcpath: Path,
    ) -> None:
        self.eventlog = eventlog
        self.spool = spool
        self.status = status
        self.lxcpath = lxcpath

    async def __call__(self, admiral: str, argv: list[str], process: Process) -> int:
        try:
            args = _parser().parse_args(argv)
            return int(await getattr(self, f"cmd_{args.verb}")(admiral, args, process))
        except (_Refused, InvalidName) as err:
            _write(process, f"hyperdrive: {err}\n", err=True)
            return 2
        except HyperdriveError as err:
            _write(process, f"hyperdrive: {err}\n", err=True)
            return 1

    async def cmd_status(self, admiral: str, args: argparse.Namespace, process: Process) -> int:
        status = dict(self.status())
        if args.json:
            _write(process, json.dumps(status, indent=2) + "\n")
            return 0
        lines = [
            f"{status['name']} {status['version']}: {len(status['apps'])} apps, "
            f"{status['pending']} pending triggers"
        ]
        for app in status["apps"]:
            lines.append(
                f"  {app['app']:<20} {app['sha'] or '-':<8} {app['ship'] or '-':<40} "
                f"{app['last_deploy'] or '-'}"
            )
        _write(process, "\n".join(lines) + "\n")
        return 0

    async def cmd_logs(self, admiral: str, args: argparse.Namespace, process: Process) -> int:
        app = sanitize_app_name(args.app) if args.app else None
        stream = self.eventlog.tail(Filter(app=app), history=args.lines, follow=args.follow)
        async for event in stream:
            _write(process, (json.dumps(event) if args.json else describe(event)) + "\n")
            await process.stdout.drain()
        return 0

    async def cmd_deploy(self, admiral: str, args: argparse.Namespace, process: Process) -> int:
        sha = check_sha(args.sha) if args.sha else None
        trigger = Trigger.deploy(sanitize_app_name(args.app), sha, admiral)
        return await self._trigger(trigger, process)

    async def cmd_rollback(self, admiral: str, args: argparse.Namespace, process: Process) -> int:
        return await self._trigger(Trigger.rollback(sanitize_app_name(args.app), admiral), process)

    async def _trigger(self, trigger: Trigger, process: Process) -> int:
        """Durable trigger, then its events until the outcome (Ctrl-C leaves it running)."""
        with self.eventlog.subscribe(Filter(deploy=trigger.id)) as events:
            await self.spool.put(trigger)
            _write(process, f"{trigger.kind} {trigger.id} queued\n")
            async with asyncio.timeout(FOLLOW_LIMIT_S):
                async for event in events:
                    _write(process, describe(event) + "\n")
                    if event["event"] in OUTCOMES:
                        return 0 if event["event"] == "DeployFinished" else 1
        return 1

    async def cmd_enter(self, admiral: str, args: argparse.Namespace, process: Process) -> int:
        app = sanitize_app_name(args.app)
        row = next((a for a in self.status()["apps"] if a["app"] == app), None)
        if row is None or not row.get("ship"):
            raise HyperdriveError(f"{app} has no live ship to enter")
        argv = ["lxc-attach", "-P", str(self.lxcpath), "-n", row["ship"], "--", *ENTER_SHELL]
        return await _run_in_pty(argv, process)


async def _run_in_pty(argv: list[str], process: Process) -> int:
    """An interactive program on a pseudo-terminal, wired to the SSH channel both ways."""
    master, slave = pty.openpty()
    _resize(master, process.get_terminal_size())
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True
    )
    os.close(slave)
    loop = asyncio.get_running_loop()
    loop.add_reader(master, _pump_out, master, process)
    feeder = asyncio.create_task(_pump_in(process, master))
    try:
        return await proc.wait()
    finally:
        loop.remove_reader(master)
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder
        os.close(master)


def _resize(fd: int, size: tuple[int, int, int, int]) -> None:
    cols, rows = size[0] or 80, size[1] or 24
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _pump_out(master: int, process: Process) -> None:
    try:
        data = os.read(master, 65536)
    except OSError:
        data = b""
    if data:
        process.stdout.write(data)


async def _pump_in(process: Process, master: int) -> None:
    with contextlib.suppress(asyncssh.Error, OSError, asyncssh.TerminalSizeChanged):
        while True:
            try:
                data = await process.stdin.read(65536)
            except asyncssh.TerminalSizeChanged as change:
                _resize(master, (change.width, change.height, 0, 0))
                continue
            if not data:
                return
            os.write(master, data)
