"""A whole squadron for e2e tests: a real daemon with its own name, subnet, LXC and nginx.

Everything it makes on the host (containers, bridge, nft table, nginx master) carries its
unique name and is removed by `teardown`, even when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hyperdrive.triggers import RefUpdate, Trigger, write_incoming
from tests.conftest import Daemon, make_daemon, remove_host_state, wait_for
from tests.e2e.world import World

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Admiral",
    "GIT_AUTHOR_EMAIL": "admiral@example.invalid",
    "GIT_COMMITTER_NAME": "Admiral",
    "GIT_COMMITTER_EMAIL": "admiral@example.invalid",
}


def make_squadron(root: Path, **extra: str) -> Daemon:
    """A daemon (named `hdt<hex>` on a subnet of its own, see `make_daemon`) that deploys
    quickly: short drains and no guard."""
    settings = {
        "HYPERDRIVE_HULL": "busybox",
        "HYPERDRIVE_DRAIN_SECONDS": "0.5",
        # old ships stop right after their drain; tests/e2e/test_guard.py orders a guard
        "HYPERDRIVE_GUARD": "off",
        **extra,
    }
    return make_daemon(root, **settings)


def teardown(d: Daemon) -> None:
    """Stop the daemon, then remove every host-wide thing this squadron made."""
    if d.proc is not None and d.proc.poll() is None:
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(10)
    name = d.env["HYPERDRIVE_NAME"]
    lxcpath = d.var / "containers"
    if lxcpath.exists():
        listed = subprocess.run(
            ["lxc-ls", "-P", str(lxcpath), "-1"], capture_output=True, text=True, timeout=30
        )
        names = listed.stdout.split()
        # ships first: a hull with snapshots cannot be destroyed
        for ship in sorted(names, key=lambda n: "-hull-" in n):
            subprocess.run(
                ["lxc-destroy", "-P", str(lxcpath), "-n", ship, "-f"],
                capture_output=True,
                timeout=60,
            )
        # the daemon's lxc-monitor (healing.py) started LXC's monitor daemon for this lxcpath
        subprocess.run(["lxc-monitor", "-P", str(lxcpath), "-Q"], capture_output=True, timeout=10)
    pid_file = d.var / "nginx" / "run" / "nginx.pid"
    if pid_file.exists():
        with contextlib.suppress(ValueError, ProcessLookupError):
            os.kill(int(pid_file.read_text().strip()), signal.SIGQUIT)
    remove_host_state(name)


def http_get(
    port: int,
    path: str,
    host: str | None = None,
    timeout: float = 3,
    address: str = "127.0.0.1",
) -> tuple[int, str]:
    """(status, body) of a GET on a new connection; (0, why) when nothing answered."""
    request = urllib.request.Request(f"http://{address}:{port}{path}")
    if host:
        request.add_header("Host", host)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        body = err.read().decode(errors="replace")
        err.close()
        return err.code, body
    except (urllib.error.URLError, OSError) as err:
        return 0, f"no answer: {err}"


def git(*args: str, cwd: Path) -> str:
    result = subprocess.run(
        ["git", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **GIT_ENV},
    )
    assert result.returncode == 0, f"git {' '.join(args)}: {result.stderr}"
    return result.stdout.strip()


class AppRepo:
    """A working copy whose commits are pushed straight into the squadron's hosted repo."""

    def __init__(self, d: Daemon, app: str, workdir: Path) -> None:
        self.d, self.app, self.dir = d, app, workdir
        self.bare = d.data / "git" / f"{app}.git"
        if not self.bare.exists():
            self.bare.parent.mkdir(parents=True, exist_ok=True)
            git("init", "-q", "--bare", "-b", "master", str(self.bare), cwd=self.bare.parent)
        workdir.mkdir(parents=True, exist_ok=True)
        git("init", "-q", "-b", "master", cwd=workdir)

    def commit(
        self, files: dict[str, str], message: str = "change", executable: tuple[str, ...] = ()
    ) -> str:
        for name, text in files.items():
            path = self.dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            if name.startswith("bin/") or name in executable:
                path.chmod(0o755)
        git("add", "-A", cwd=self.dir)
        git("commit", "-q", "-m", message, cwd=self.dir)
        return git("rev-parse", "HEAD", cwd=self.dir)

    def push_trigger(self, sha: str, ref: str = "refs/heads/master") -> str:
        """What git push + post-receive do: update the ref, then drop a durable trigger."""
        old = git("rev-parse", "--verify", "-q", ref, cwd=self.bare) if self._has(ref) else "0" * 40
        git("push", "-q", "-f", str(self.bare), f"{sha}:{ref}", cwd=self.dir)
        trigger = Trigger.push(self.app, RefUpdate(ref, old, sha), "test")
        write_incoming(self.d.data / "spool", trigger)
        return trigger.id

    def _has(self, ref: str) -> bool:
        result = subprocess.run(
            ["git", "rev-parse", "--verify", "-q", ref],
            cwd=self.bare,
            capture_output=True,
            timeout=10,
        )
        return result.returncode == 0


def push_orders(d: Daemon, work: Path, orders: dict[str, str]) -> None:
    """Push `<app>/orders` to the hosted headquarters, as an admiral's push would."""
    hq = AppRepo(d, "headquarters", work)
    sha = hq.commit({f"{app}/orders": text for app, text in orders.items()}, "orders")
    ref = git("symbolic-ref", "HEAD", cwd=hq.bare)  # the branch HQ follows (made at start)
    git("push", "-q", "-f", str(hq.bare), f"{sha}:{ref}", cwd=work)
    trigger = Trigger.hq_push(RefUpdate(ref, "0" * 40, sha), "test")
    write_incoming(d.data / "spool", trigger)
    d.wait_event("HeadquartersSynced", timeout=30, deploy=trigger.id)


def wait_outcome(d: Daemon, deploy: str, timeout: float = 120) -> dict:
    """The DeployFinished / DeployFailed / DeploySuperseded event of `deploy`."""
    terminal = {
        "DeployFinished",
        "DeployFailed",
        "DeploySuperseded",
        "AppRetired",
        "TriggerIgnored",
    }

    def outcome() -> dict | None:
        for event in d.events():
            if event.get("deploy") == deploy and event["event"] in terminal:
                return event
        return None

    return wait_for(
        outcome, timeout, 0.1, lambda: f"the outcome of deploy {deploy}; log: {d.log()}"
    )


def containers(d: Daemon) -> set[str]:
    """What `lxc-ls -P $VAR/containers` lists."""
    listed = subprocess.run(
        ["lxc-ls", "-P", str(d.var / "containers"), "-1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert listed.returncode == 0, listed.stderr
    return set(listed.stdout.split())


def recorded_ships(d: Daemon) -> set[str]:
    """Every ship the squadron's records know, over all apps."""
    ships = set()
    for path in (d.data / "records" / "apps").glob("*.json"):
        ships |= {s["name"] for s in json.loads(path.read_text())["ships"]}
    return ships


def assert_no_orphans(d: Daemon) -> None:
    """Every container is a hull or a recorded ship, and every recorded ship exists."""
    hull = f"{d.env['HYPERDRIVE_NAME']}-hull-"
    ships = {c for c in containers(d) if not c.startswith(hull)}
    assert ships == recorded_ships(d), f"containers {ships} vs records {recorded_ships(d)}"


class Prober:
    """A client that GETs one path on a new connection every `step` s, in a thread, and counts
    the answers: while it runs, a user can tell whether the app ever stopped serving."""

    def __init__(
        self,
        port: int,
        path: str,
        step: float = 0.02,
        host: str | None = None,
        address: str = "127.0.0.1",
        limit: float = 600,
    ) -> None:
        self.port, self.path, self.step, self.host = port, path, step, host
        self.address, self.limit = address, limit
        self.answers: dict[tuple[int, str], int] = {}
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                answer = http_get(self.port, self.path, self.host, 3, self.address)
            except OSError as err:
                self.failures.append(f"{type(err).__name__}: {err}")
            else:
                self.answers[answer] = self.answers.get(answer, 0) + 1
                if answer[0] != 200:
                    self.failures.append(f"HTTP {answer[0]}: {answer[1][:80]}")
            self._stop.wait(self.step)

    @property
    def served(self) -> int:
        return sum(n for (status, _), n in self.answers.items() if status == 200)

    @property
    def bodies(self) -> set[str]:
        return {body for (status, body) in self.answers if status == 200}


def settled(d: Daemon, timeout: float = 30) -> None:
    """Wait until no trigger is pending and no command runs (drains and retires included)."""

    def idle() -> bool:
        status = json.loads(d.hd("status", "--json").stdout)
        return status["pending"] == 0 and status["inflight"] == 0

    wait_for(idle, timeout, 0.1, "the squadron to settle")


def keygen(path: Path) -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", path],
        check=True,
        timeout=30,
    )
    return path


@dataclass
class Admiral:
    """A person at a workstation: a key, a working copy, and the real git/ssh clients."""

    d: Daemon
    key: Path

    def ssh_command(self) -> str:
        return shlex.join(
            [
                "ssh",
                "-F",
                "/dev/null",
                "-i",
                str(self.key),
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "LogLevel=ERROR",
            ]
        )

    def env(self) -> dict[str, str]:
        return {**os.environ, **GIT_ENV, "GIT_SSH_COMMAND": self.ssh_command()}

    def git(self, *args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["git", *args], cwd=cwd, env=self.env(), capture_output=True, text=True, timeout=180
        )
        if check:
            assert result.returncode == 0, f"git {args}: {result.stdout}{result.stderr}"
        return result

    def ssh(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [
            *shlex.split(self.ssh_command()),
            "-p",
            str(self.d.ssh_port),
            "git@127.0.0.1",
            *command,
        ]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=180)
        if check:
            assert result.returncode == 0, f"ssh {command}: {result.stdout}{result.stderr}"
        return result

    def remote(self, app: str) -> str:
        return f"ssh://git@127.0.0.1:{self.d.ssh_port}/{app}"

    def working_copy(self, folder: Path, app: str) -> Path:
        folder.mkdir(parents=True)
        self.git("init", "-q", "-b", "master", cwd=folder)
        self.git("remote", "add", "hyperdrive", self.remote(app), cwd=folder)
        return folder

    def commit(self, folder: Path, files: dict[str, str], message: str = "change") -> None:
        for name, text in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
        self.git("add", "-A", cwd=folder)
        self.git("commit", "-q", "-m", message, cwd=folder)


def forge_repo(admiral: Admiral, root: Path, files: dict[str, str]) -> tuple[Path, Path]:
    """A bare "forge" repository at `root/forge/site.git` with one commit of `files` on master,
    pushed from a work tree at `root/site`: (forge, work). Served as it is over file:// or, after
    `git update-server-info`, over dumb HTTP."""
    forge = root / "forge" / "site.git"
    subprocess.run(
        ["git", "init", "-q", "--bare", "-b", "master", str(forge)], check=True, timeout=30
    )
    work = root / "site"
    work.mkdir()
    admiral.git("init", "-q", "-b", "master", cwd=work)
    admiral.git("remote", "add", "origin", str(forge), cwd=work)
    admiral.commit(work, files)
    admiral.git("push", "-q", "origin", "master", cwd=work)
    return forge, work


@contextlib.contextmanager
def admiral_squadron(root: Path, **extra: str) -> Iterator[tuple[Daemon, Admiral]]:
    """A started squadron whose bootstrap admiral key is a fresh key of the test's."""
    d = make_squadron(root / "hd", **extra)
    key = keygen(root / "admiral")
    (d.root / "admirals.pub").write_text(Path(f"{key}.pub").read_text())
    try:
        d.start()
        yield d, Admiral(d, key)
    finally:
        teardown(d)


@contextlib.contextmanager
def behind_world(
    root: Path, wheels: Path, *, mirror: bool = False, **settings: str
) -> Iterator[tuple[Daemon, World]]:
    """A started squadron whose ships resolve names through a world namespace of its own, which
    serves `wheels` as a package index; `mirror`: every build's pip uses that index (a
    squadron-wide include, as an air-gapped server would set it). Both are removed after."""
    world = World(root / "world", wheels).open()
    d = make_squadron(root / "hd", HYPERDRIVE_SHIP_DNS=world.ip, **settings)
    try:
        if mirror:
            includes = d.data / "includes"
            includes.mkdir(parents=True, exist_ok=True)
            index = f"PIP_INDEX_URL={world.index_url}\nPIP_TRUSTED_HOST={world.index_host}\n"
            (includes / "mirrors.env").write_text(index)
        d.start()
        yield d, world
    finally:
        teardown(d)
        world.close()
