"""Admiral commands over SSH: `ssh -p 2222 git@HOST status | logs [-f] [APP] [--app] | ps [APP]
| deploy APP [SHA] | rollback APP | enter APP | run APP -- COMMAND`. Each becomes the same
trigger or read as its `hd` twin; a captain gets the ones hyperdrive.access allows, for their
own apps only."""

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

from hyperdrive import access, applogs
from hyperdrive.access import Identity
from hyperdrive.enter import enter_argv
from hyperdrive.errors import HyperdriveError, InvalidName
from hyperdrive.eventlog import EventLog, Filter, tail
from hyperdrive.follow import Outcome, follow_async
from hyperdrive.history import parse_history
from hyperdrive.names import check_sha, sanitize_app_name
from hyperdrive.pipeline.oneoff import shell_line
from hyperdrive.procview import MAX_LINES, ProcessView, ps_text
from hyperdrive.render import describe, status_text
from hyperdrive.spool import Spool
from hyperdrive.sshlib import asyncssh
from hyperdrive.triggers import Trigger

Process = asyncssh.SSHServerProcess[bytes]
FOLLOW_LIMIT_S = 3600.0


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
    logs.add_argument("-n", "--lines", type=_lines, default=100, help="a number or 'all'")
    logs.add_argument("--deploy")
    logs.add_argument("--app", dest="output", action="store_true")
    ps = verbs.add_parser("ps", add_help=False)
    ps.add_argument("app", nargs="?")
    ps.add_argument("--json", action="store_true")
    run = verbs.add_parser("run", add_help=False)
    run.add_argument("app")
    run.add_argument("command", nargs=argparse.REMAINDER)
    deploy = verbs.add_parser("deploy", add_help=False)
    deploy.add_argument("app")
    deploy.add_argument("sha", nargs="?")
    verbs.add_parser("rollback", add_help=False).add_argument("app")
    verbs.add_parser("enter", add_help=False).add_argument("app")
    return top


def _lines(value: str) -> int | None:
    """`-n N` or `-n all`, as `hd logs` takes it."""
    try:
        return parse_history(value)
    except ValueError as err:
        raise _Refused(f"-n: {err}") from None


def _write(process: Process, text: str, err: bool = False) -> None:
    stream = process.stderr if err else process.stdout
    stream.write(text.encode(errors="replace"))


class AdmiralCommands:
    """The handler GitServer calls for every command that is not git."""

    def __init__(
        self,
        eventlog: EventLog,
        spool: Spool,
        status: Callable[[], Mapping[str, Any]],
        lxcpath: Path,
        refusals: access.Refusals | None = None,
        *,
        view: ProcessView | None = None,
    ) -> None:
        self.eventlog = eventlog
        self.spool = spool
        self.status = status
        self.lxcpath = lxcpath
        self._refusals = refusals
        self.view = view

    async def __call__(self, identity: Identity, argv: list[str], process: Process) -> int:
        try:
            args = _parser().parse_args(argv)
            app = sanitize_app_name(args.app) if getattr(args, "app", None) else None
            access.check(identity, args.verb, app)
            return int(await getattr(self, f"cmd_{args.verb}")(identity, args, process))
        except access.NotAllowed as err:
            return self._refused(err, process)
        except (_Refused, InvalidName) as err:
            _write(process, f"hyperdrive: {err}\n", err=True)
            return 2
        except HyperdriveError as err:
            _write(process, f"hyperdrive: {err}\n", err=True)
            return 1

    def _refused(self, err: access.NotAllowed, process: Process) -> int:
        """A captain asked for what is not theirs: one line to them, one event."""
        if self._refusals is None:  # one tally for git and commands: bootstrap passes it
            self._refusals = access.Refusals(self.eventlog.append)
        self._refusals(err)
        _write(process, f"hyperdrive: {err}\n", err=True)
        return 1

    async def cmd_status(
        self, identity: Identity, args: argparse.Namespace, process: Process
    ) -> int:
        """The same view as `hd status`, as wide as the terminal (80 without one); a captain
        sees their own apps only."""
        status = _seen_by(identity, self.status())
        if args.json:
            _write(process, json.dumps(status, indent=2) + "\n")
            return 0
        width = process.get_terminal_size()[0] if process.get_terminal_type() else 0
        _write(process, status_text(status, width or 80, color=width > 0))
        return 0

    async def cmd_logs(self, identity: Identity, args: argparse.Namespace, process: Process) -> int:
        app = sanitize_app_name(args.app) if args.app else None
        if args.output:
            return await self._output(app, args, process)
        where = Filter(app=app, deploy=args.deploy)
        stream = tail(self.eventlog, where, history=args.lines, follow=args.follow)
        async for event in stream:
            _write(process, (json.dumps(event) if args.json else describe(event)) + "\n")
            await process.stdout.drain()
        return 0

    async def _output(self, app: str | None, args: argparse.Namespace, process: Process) -> int:
        """`logs APP --app [-f]`: what the app's processes print (hyperdrive/applogs.py)."""
        if app is None or self.view is None:
            raise _Refused("logs --app needs an app: logs APP --app")
        ship_dir = self.view.ship_dir(app)
        lines = 100 if args.lines is None else args.lines
        shown, live = min(lines, MAX_LINES), self.view.follow(app)
        async for line in applogs.app_output(ship_dir, shown, args.follow, live):
            _write(process, line + "\n")
            await process.stdout.drain()
        return 0

    async def cmd_ps(self, identity: Identity, args: argparse.Namespace, process: Process) -> int:
        """`hd ps [APP]`'s table; a captain sees their own apps' processes only."""
        if self.view is None:
            raise HyperdriveError("ps is not served here")
        app = sanitize_app_name(args.app) if args.app else None
        ps = await asyncio.to_thread(self.view.ps, app)
        ps["processes"] = [r for r in ps["processes"] if identity.commands(r["app"])]
        if args.json:
            _write(process, json.dumps(ps, indent=2) + "\n")
            return 0
        width = process.get_terminal_size()[0] if process.get_terminal_type() else 0
        _write(process, ps_text(ps, width or 80, color=width > 0))
        return 0

    async def cmd_run(self, identity: Identity, args: argparse.Namespace, process: Process) -> int:
        """`run APP -- COMMAND` in a one-off ship: on a PTY with `ssh -t`, else its output;
        the command's exit status is the session's."""
        argv = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not argv or self.view is None or self.view.oneoff is None:
            raise _Refused("usage: run APP -- COMMAND")
        app, oneoff = sanitize_app_name(args.app), self.view.oneoff
        if process.get_terminal_type():
            async with oneoff.ship(app) as ship:
                attach = ["lxc-attach", "-P", str(self.lxcpath), "-n", ship, "--"]
                return await _run_in_pty([*attach, *shell_line(argv)], process)

        def show(line: str) -> None:
            _write(process, line + "\n")

        return await oneoff.run(app, argv, show)

    async def cmd_deploy(
        self, identity: Identity, args: argparse.Namespace, process: Process
    ) -> int:
        sha = check_sha(args.sha) if args.sha else None
        trigger = Trigger.deploy(sanitize_app_name(args.app), sha, identity.who)
        return await self._trigger(trigger, process)

    async def cmd_rollback(
        self, identity: Identity, args: argparse.Namespace, process: Process
    ) -> int:
        trigger = Trigger.rollback(sanitize_app_name(args.app), identity.who)
        return await self._trigger(trigger, process)

    async def _trigger(self, trigger: Trigger, process: Process) -> int:
        """Durable trigger, then its events until the outcome (Ctrl-C leaves it running); the
        exit status is `hd deploy`'s: 0 only when the deploy finished."""

        def show(event: Mapping[str, Any]) -> None:
            _write(process, describe(event) + "\n")

        with self.eventlog.subscribe(Filter(deploy=trigger.id)) as events:
            await self.spool.put(trigger)
            _write(process, f"{trigger.kind} {trigger.id} queued\n")
            try:
                async with asyncio.timeout(FOLLOW_LIMIT_S):
                    outcome = await follow_async(events, trigger.id, show)
            except TimeoutError:
                outcome = Outcome(trigger.id)
        if (hint := outcome.hint("ssh … logs")) is not None:
            _write(process, hint + "\n")
        return outcome.exit_code

    async def cmd_enter(
        self, identity: Identity, args: argparse.Namespace, process: Process
    ) -> int:
        argv = enter_argv(self.status(), sanitize_app_name(args.app), self.lxcpath)
        return await _run_in_pty(argv, process)


def _seen_by(identity: Identity, status: Mapping[str, Any]) -> dict[str, Any]:
    """The status as `identity` may see it: a captain's lists only the apps they command."""
    shown = dict(status)
    if not identity.admiral:
        shown["apps"] = [row for row in shown.get("apps", []) if identity.commands(row["app"])]
    return shown


async def _run_in_pty(argv: list[str], process: Process) -> int:
    """An interactive program on a pseudo-terminal, wired to the SSH channel both ways."""
    master, slave = pty.openpty()
    _resize(master, process.get_terminal_size())
    # the terminal must be the program's controlling one (`setsid -c`): lxc-attach prints
    # nothing without; the slave stays open here until the output is read, or Linux drops
    # what is still buffered when the program exits
    proc = await asyncio.create_subprocess_exec(
        "setsid", "-w", "-c", *argv, stdin=slave, stdout=slave, stderr=slave
    )
    loop = asyncio.get_running_loop()
    loop.add_reader(master, _pump_out, master, process)
    feeder = asyncio.create_task(_pump_in(process, master))
    try:
        code = await proc.wait()
        _drain(master, process)  # what it printed just before it exited
        return code
    finally:
        loop.remove_reader(master)
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder
        os.close(slave)
        os.close(master)


def _drain(master: int, process: Process) -> None:
    """Output still in the terminal after the program exited (a quick command's all of it)."""
    os.set_blocking(master, False)
    for _ in range(1024):  # bounded: at most 64 MiB
        try:
            data = os.read(master, 65536)
        except OSError:  # EAGAIN: nothing left; EIO: the other side is closed
            return
        if not data:
            return
        process.stdout.write(data)


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
