"""The managed nats-server: its config under `$DATA/nats`, started detached, adopted again.

Like nginx, the node outlives `hd serve` (other squadrons keep their fleet while this daemon
restarts); under systemd it runs in its own `<name>-nats.scope`. The daemon supervises it:
it watches the process through a pidfd (no polling) and starts it again when it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hyperdrive import systemd
from hyperdrive.config import Listen
from hyperdrive.errors import FleetError
from hyperdrive.files import write_atomically
from hyperdrive.fleet.state import Creds
from hyperdrive.modes import SECRET_MODE

log = logging.getLogger(__name__)

BINARY = "nats-server"
START_TIMEOUT_S = 10.0
MAX_BACKOFF_S = 30.0


@dataclass(frozen=True)
class NodeSpec:
    """What one managed node is: its name, where it listens, the fleet's creds, its peers."""

    name: str
    folder: Path
    listen: Listen
    cluster_listen: Listen
    creds: Creds
    routes: Sequence[str] = ()  # peers' cluster URLs, nats://host:port (creds added here)


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(spec: NodeSpec) -> str:
    """The nats-server config: JetStream in `folder/jetstream`, auth always on.

    Two accounts: the fleet's (JetStream on) and the system account, whose user may remove
    a peer that left. A cluster block is written only with routes: nats-server 2.9 refuses
    a JetStream cluster without any, and a lone node is a standalone JetStream server.
    """
    user, password = _quoted(spec.creds.user), _quoted(spec.creds.password)
    system = spec.creds.system()
    lines = [
        f"server_name: {_quoted(spec.name)}",
        f"listen: {_quoted(str(spec.listen))}",
        f"pid_file: {_quoted(str(spec.folder / 'nats.pid'))}",
        f"log_file: {_quoted(str(spec.folder / 'nats.log'))}",
        f"jetstream {{ store_dir: {_quoted(str(spec.folder / 'jetstream'))} }}",
        "accounts {",
        f"  HD: {{ jetstream: enabled, users: [{{ user: {user}, password: {password} }}] }}",
        f"  SYS: {{ users: [{{ user: {_quoted(system.user)}, "
        f"password: {_quoted(system.password)} }}] }}",
        "}",
        "system_account: SYS",
    ]
    if spec.routes:
        routes = ", ".join(_quoted(_with_creds(r, spec.creds)) for r in spec.routes)
        lines += [
            "cluster {",
            "  name: hyperdrive",
            f"  listen: {_quoted(str(spec.cluster_listen))}",
            f"  authorization {{ user: {user}, password: {password} }}",
            f"  routes: [{routes}]",
            "}",
        ]
    return "\n".join(lines) + "\n"


def _with_creds(route: str, creds: Creds) -> str:
    scheme, _, rest = route.partition("://")
    return f"nats-route://{creds.user}:{creds.password}@{rest or scheme}"


class NatsNode:
    """One squadron's nats-server: write its config, start or adopt it, watch it, stop it."""

    def __init__(self, folder: Path, scope: str | None = None, binary: str = BINARY) -> None:
        self.folder = folder
        self.scope = systemd.check_unit(scope) if scope is not None else None
        self.binary = binary
        self.conf = folder / "nats.conf"
        self.pid_file = folder / "nats.pid"
        self._lock = asyncio.Lock()  # one start, stop or rebirth at a time

    def configure(self, spec: NodeSpec) -> None:
        """Write the config (0600: it holds the fleet's password) and the store folder."""
        (self.folder / "jetstream").mkdir(parents=True, exist_ok=True)
        write_atomically(self.conf, render(spec), mode=SECRET_MODE)

    def pid(self) -> int | None:
        """The pid of OUR running nats-server (pid file + /proc cmdline), or None."""
        try:
            pid = int(self.pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        mine = os.fsencode(str(self.conf))
        return pid if mine in cmdline and Path(os.fsdecode(cmdline[0])).name == BINARY else None

    async def start(self) -> int:
        """Adopt the running node, or start one detached on the config; its pid."""
        async with self._lock:
            return await self._start()

    async def reborn(self, spec: NodeSpec) -> int:
        """Restart on a new config with an empty JetStream store: a lone node becoming a
        cluster node (nats-server does not carry a lone node's streams into a cluster; the
        fleet's stream holds nothing that is not also in some squadron's spool)."""
        async with self._lock:
            await self._stop()
            shutil.rmtree(self.folder / "jetstream", ignore_errors=True)
            self.configure(spec)
            return await self._start()

    async def _start(self) -> int:
        if (pid := self.pid()) is not None:
            return pid
        if not self.conf.exists():
            raise FleetError(f"{self.conf} is missing: run `hd fleet init` or `hd fleet join`")
        if shutil.which(self.binary) is None:
            raise FleetError(f"{self.binary} is not installed (apt-get install nats-server)")
        # `setsid -f`: a session of its own and not our child (a daemon, like nginx), so a
        # signal to hd serve is not its and nothing here has to reap it
        argv = ["setsid", "-f", self.binary, "-c", str(self.conf)]
        if self.scope is not None:
            await systemd.stop_scope(self.scope)
            argv = systemd.scope_argv(self.scope, argv, f"Hyperdrive's NATS ({self.folder})")
        self.pid_file.unlink(missing_ok=True)
        if await _spawn(argv, self.folder / "start.log") != 0:
            raise FleetError(f"nats-server did not start; see {self.folder / 'start.log'}")
        return await self._wait_for_pid()

    async def _wait_for_pid(self) -> int:
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                while (pid := self.pid()) is None:  # noqa: ASYNC110 - a file another process writes
                    await asyncio.sleep(0.02)
                return pid
        except TimeoutError:
            raise FleetError(f"nats-server did not start; see {self.folder / 'nats.log'}") from None

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after a bounded wait; nothing to do when it is not running."""
        async with self._lock:
            await self._stop()

    async def _stop(self) -> None:
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not await _exited(pid, 10.0):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            await _exited(pid, 5.0)
        self.pid_file.unlink(missing_ok=True)

    async def supervise(self) -> None:
        """Keep the node running: wait for its exit on a pidfd, start it again (backoff)."""
        backoff = 1.0
        while True:
            try:
                pid = await self.start()
                backoff = 1.0
            except FleetError as err:
                log.warning("fleet: %s; trying again in %.0f s", err, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            await wait_for_exit(pid)
            log.warning("fleet: nats-server (pid %d) exited; starting it again", pid)
            await asyncio.sleep(min(backoff, 1.0))


async def _spawn(argv: list[str], log_path: Path) -> int | None:
    """Run the launcher (it returns once the node is forked off); output to a file, since
    the node would otherwise hold our pipe open. Its exit code, None when it hangs."""
    with log_path.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out
        )
        try:
            return await asyncio.wait_for(proc.wait(), START_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return None


async def wait_for_exit(pid: int) -> None:
    """Return when process `pid` has exited: its pidfd becomes readable (Linux 5.3+)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await exited
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def _exited(pid: int, within: float) -> bool:
    try:
        async with asyncio.timeout(within):
            await wait_for_exit(pid)
        return True
    except TimeoutError:
        return False
