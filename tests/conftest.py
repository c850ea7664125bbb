"""Fixtures shared by every ring: free ports and a real `hd serve` in a temp folder."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parent.parent
# No test depends on the machine's speed: hypothesis's 200 ms deadline per example fails on a
# loaded CI machine for reasons that are not the code's.
settings.register_profile("hyperdrive", deadline=None)
settings.load_profile("hyperdrive")
SHIP_PASSAGE = 0o711  # others may pass, not list
# git as a test runs it: no user or system config, a fixed author
GIT_ENV = {
    "HOME": "/nonexistent",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
    "PATH": os.environ["PATH"],
}


def open_for_ships(folder: str | Path) -> Path:
    """A temp folder the ships' root may pass through (benchmarks make theirs with tempfile)."""
    os.chmod(folder, SHIP_PASSAGE)
    return Path(folder)


def pytest_configure(config: pytest.Config) -> None:
    """Ships run as an unprivileged uid, and LXC mounts their trees as that uid: it must pass
    through the tests' folders, which pytest makes 0700. As root, each run gets its own base
    folder (pytest re-closes its shared one whenever another run starts) and every temp folder
    is opened to passing, never to listing."""
    if os.geteuid() != 0 or config.option.basetemp:
        return
    base = Path(tempfile.gettempdir()) / "hd-pytest"
    base.mkdir(exist_ok=True)
    base.chmod(SHIP_PASSAGE)
    config.option.basetemp = str(base / f"run-{os.getpid()}")
    made = pytest.TempPathFactory.mktemp

    def mktemp(self: pytest.TempPathFactory, basename: str, numbered: bool = True) -> Path:
        path = made(self, basename, numbered)
        for folder in (self.getbasetemp(), path):
            folder.chmod(SHIP_PASSAGE)
        return path

    pytest.TempPathFactory.mktemp = mktemp  # type: ignore[method-assign]


def pytest_unconfigure(config: pytest.Config) -> None:
    """This run's base folder goes with it (containers' trees in it are gone by teardown), and
    no bridge or nft table of a daemon it made stays on the host: any left is named, removed."""
    if os.geteuid() == 0 and _MADE:
        left = left_on_host(list(_MADE))
        for name in left:
            remove_host_state(name)
        if left:
            sys.stderr.write(f"\nleft on the host by this run's daemons, removed: {left}\n")
    basetemp = config.option.basetemp
    if os.geteuid() == 0 and basetemp and Path(basetemp).parent.name == "hd-pytest":
        shutil.rmtree(basetemp, ignore_errors=True)


# Below the kernel's ephemeral range (ip_local_port_range, 32768-60999 by default), where the
# clients' own ends of connections take their ports: a port found free there may be a busy
# connection's local port a moment later, and the daemon's bind then fails.
TEST_PORTS = range(20000, 32768)
_HANDED_OUT: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on, outside the ephemeral range, never handed out twice in one
    run (a daemon's API, SSH and HTTP ports must differ)."""
    for _ in range(200):
        port = secrets.choice(TEST_PORTS)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise AssertionError("no free port in 200 tries")


def wait_for(predicate, timeout: float = 10.0, step: float = 0.02, what: object = "condition"):
    """Bounded wait for a condition a test needs; fails with `what` on timeout (a callable
    `what` is called then: a daemon's log as it is at the failure, not at the start)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(step)
    said = what() if callable(what) else what
    raise AssertionError(f"timed out after {timeout} s waiting for {said}")


@dataclass
class Daemon:
    """A real `hd serve` process with its own data, var, ports and main.conf."""

    root: Path
    env: dict[str, str]
    api_port: int
    ssh_port: int
    http_port: int
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.root / "daemon.log"

    @property
    def data(self) -> Path:
        return Path(self.env["HYPERDRIVE_DATA"])

    @property
    def var(self) -> Path:
        return Path(self.env["HYPERDRIVE_VAR"])

    def hd(
        self, *args: str, timeout: float = 30, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "hyperdrive", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"hd {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result

    def start(self, timeout: float = 20) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hyperdrive", "serve"], env=self.env, stdout=log, stderr=log
        )
        log.close()
        wait_for(
            self.healthy, timeout, 0.05, lambda: f"hd serve to answer /healthz; log: {self.log()}"
        )

    def healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"hd serve exited {self.proc.returncode}: {self.log()}")
        try:
            return self.get("/healthz")["status"] == "ok"
        except OSError:
            return False

    def get(self, path: str, timeout: float = 5) -> dict:
        url = f"http://127.0.0.1:{self.api_port}{path}"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read())

    def events(self) -> list[dict]:
        lines = (self.data / "events.jsonl").read_text().splitlines()
        events = []
        for line in lines:
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events

    def wait_event(self, name: str, timeout: float = 10, **fields: object) -> dict:
        def found() -> dict | None:
            for event in self.events():
                if event.get("event") == name and all(event.get(k) == v for k, v in fields.items()):
                    return event
            return None

        return wait_for(found, timeout, 0.05, f"event {name} {fields}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(
                f"hd serve did not stop within {timeout} s: {self.log()}"
            ) from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""


_SUBNETS_GIVEN: set[int] = set()


def free_subnet() -> str:
    """A /24 in 10.213.100-189 that no interface here uses and, while there are others, no
    daemon of this run was given: two daemons on one subnet would route each other's ships."""
    listed = subprocess.run(
        ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, timeout=10, check=True
    )
    used = {int(part.split(".")[2]) for part in listed.stdout.split() if part.startswith("10.213.")}
    free = [third for third in range(100, 190) if third not in used]
    fresh = [third for third in free if third not in _SUBNETS_GIVEN]
    if not fresh:  # all given once: those no interface uses now were torn down since
        _SUBNETS_GIVEN.clear()
        fresh = free
    if not fresh:
        raise RuntimeError("no free 10.213.x.0/24 left for a test daemon")
    third = secrets.choice(fresh)
    _SUBNETS_GIVEN.add(third)
    return f"10.213.{third}.0/24"


_MADE: dict[str, Path] = {}  # every daemon this run made: its name, its folder


def make_daemon(root: Path, **extra: str) -> Daemon:
    """A daemon in `root`, named `hdt<hex>` on a subnet of its own unless `extra` says: its
    bridge and nft table never meet a real squadron's on this host (see `remove_host_state`)."""
    root.mkdir(parents=True, exist_ok=True)
    extra.setdefault("HYPERDRIVE_NAME", f"hdt{secrets.token_hex(3)}")
    if "HYPERDRIVE_SUBNET" not in extra:
        extra["HYPERDRIVE_SUBNET"] = free_subnet()
    _MADE[extra["HYPERDRIVE_NAME"]] = root
    api, ssh, http, https = free_port(), free_port(), free_port(), free_port()
    conf = root / "main.conf"
    # HTTPS on a port of its own; ACME off unless a test points HYPERDRIVE_ACME_DIRECTORY at
    # its own pebble (tests/pebble.py): no test ever asks a real CA
    conf.write_text(
        "# written by the test suite\n"
        f"HYPERDRIVE_DATA={root / 'data'}\n"
        f"HYPERDRIVE_VAR={root / 'var'}\n"
        f"HYPERDRIVE_API_LISTEN=127.0.0.1:{api}\n"
        f"HYPERDRIVE_SSH_LISTEN=127.0.0.1:{ssh}\n"
        f"HYPERDRIVE_HTTP_PORT={http}\n"
        f"HYPERDRIVE_HTTPS_PORT={https}\n"
        "HYPERDRIVE_ACME_DIRECTORY=\n"
        f"HYPERDRIVE_ADMIRAL_KEYS={root / 'admirals.pub'}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYPERDRIVE_")}
    # `hd`'s output for people is as wide as with no terminal, whatever runs the tests;
    # busybox unless asked: a daemon with an unbuilt `debian` default builds it at start
    env.update(
        {
            "HYPERDRIVE_CONFIG": str(conf),
            "PYTHONPATH": str(ROOT),
            "COLUMNS": "80",
            "HYPERDRIVE_HULL": "busybox",
        }
    )
    env.update(extra)
    env["HYPERDRIVE_DATA"] = str(root / "data")
    env["HYPERDRIVE_VAR"] = str(root / "var")
    return Daemon(root, env, api, ssh, http)


def nginx_masters_under(folder: Path) -> list[int]:
    """Pids of nginx masters whose prefix lies under `folder` (the daemon leaves them running)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if cmdline.startswith("nginx: master process") and f" {folder}" in cmdline:
            pids.append(int(entry.name))
    return pids


def stop_nginx_under(folder: Path) -> None:
    """Stop the nginx masters that daemons under `folder` left running (they do, on purpose)."""
    for pid in nginx_masters_under(folder):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)


def remove_host_state(name: str) -> None:
    """Remove the nft table and bridge a daemon named `name` made (gone already: nothing)."""
    subprocess.run(["nft", "delete", "table", "ip", name], capture_output=True, timeout=10)
    subprocess.run(["ip", "link", "del", f"{name}br0"], capture_output=True, timeout=10)


def left_on_host(names: list[str]) -> list[str]:
    """Those of `names` whose nft table or bridge still exists."""
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, timeout=10)
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, timeout=10)
    have = set(tables.stdout.split()) | {f.rstrip(":").split("@")[0] for f in links.stdout.split()}
    return sorted({n for n in names if n in have or f"{n}br0" in have})


@pytest.fixture(autouse=True)
def _reap_nginx(tmp_path: Path) -> Iterator[None]:
    """Ships and nginx outlive `hd serve` on purpose; a test's nginx must not outlive the
    test, nor the bridge and table of a daemon it made in its own folder (a module's shared
    squadrons live in folders of their own, and are their fixture's to remove)."""
    yield
    stop_nginx_under(tmp_path)
    if os.geteuid() == 0:
        for name, root in list(_MADE.items()):
            if root.is_relative_to(tmp_path):
                remove_host_state(name)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A started daemon; stopped (and checked to stop cleanly) after the test."""
    d = make_daemon(tmp_path / "hd")
    d.start()
    yield d
    d.stop()
