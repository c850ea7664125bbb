"""A real systemd host for tests: a privileged Debian bookworm LXC container with nesting,
booted with systemd as PID 1, where `./bootstrap` installs Hyperdrive as hyperdrive.service.

The base container (bootstrap's packages preinstalled, from the Debian mirror the host's own apt
sources name) is built once and kept stopped under /var/cache/hyperdrive-test, keyed by what
goes into it; each test boots an overlay snapshot of it under its own lxcpath and name, on a
bridge of its own (`<tag>br0`, a private 172.31.x.0/24). The container has no other network:
pip installs from a wheelhouse built on the host, bind-mounted at /wheels. Everything is
removed by `close()`, even when the test failed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from hyperdrive.hull_debian import DEFAULT_MIRROR, RELEASE, patch_debian_hull
from tests.conftest import ROOT, wait_for
from tests.e2e.squadron import GIT_ENV, keygen
from tests.integration.lxc_fixtures import require_lxc, subnet_in_use

CACHE = Path("/var/cache/hyperdrive-test")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What the test host needs beyond Debian's base; `./bootstrap` finds them installed.
EXTRA_MASKED = ("lxc.service", "lxc-net.service")  # autoboot waits for an lxcbr0 never made
HOST_LINES = (
    "lxc.include = /usr/share/lxc/config/nesting.conf",
    "lxc.apparmor.profile = unconfined",
    # systemd and the nested LXC both manage cgroups below the container's own
    "lxc.mount.auto = cgroup:rw:force proc:rw sys:rw",
)
BASE_VERSION = "1"  # bump when the way the base is made changes


def bootstrap_packages() -> list[str]:
    """The PACKAGES array of ./bootstrap: the test host has exactly what a user's would."""
    text = (ROOT / "bootstrap").read_text()
    found = re.search(r"^PACKAGES=\(([^)]*)\)", text, re.MULTILINE)
    assert found, "bootstrap has no PACKAGES=(...) line"
    return found.group(1).split()


def host_mirror() -> str:
    """The Debian mirror the host's own apt sources name (the one this machine can reach)."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    with contextlib.suppress(OSError):
        if found := re.search(r"^URIs:\s*(\S+)", sources.read_text(), re.MULTILINE):
            return found.group(1)
    with contextlib.suppress(OSError):
        if found := re.search(
            r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)",
            Path("/etc/apt/sources.list").read_text(),
            re.MULTILINE,
        ):
            return found.group(1)
    return DEFAULT_MIRROR


def _run(argv: list[str], timeout: float, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]


def _must(argv: list[str], timeout: float, **kw: object) -> str:
    result = _run(argv, timeout, **kw)
    assert result.returncode == 0, (
        f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


def base_key(packages: list[str]) -> str:
    text = json.dumps([BASE_VERSION, RELEASE, sorted(packages), HOST_LINES, EXTRA_MASKED])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@contextlib.contextmanager
def cache_lock() -> Iterator[None]:
    """One test run at a time fills the cache; the others wait, then use what it made."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def base_container(packages: list[str]) -> tuple[Path, str]:
    """(lxcpath, name) of the stopped base, built now if the cache lacks it."""
    lxcpath, name = CACHE / "systemd-host", f"sd-{base_key(packages)}"
    with cache_lock():
        if not (lxcpath / name / "ready").exists():
            lxcpath.mkdir(parents=True, exist_ok=True)
            _build_base(lxcpath, name, packages)
    return lxcpath, name


def _build_base(lxcpath: Path, name: str, packages: list[str]) -> None:
    """lxc-create -t debian with the packages, then patch it into a quiet systemd host."""
    _run(["lxc-destroy", "-P", str(lxcpath), "-n", name, "-f"], 120)
    shutil.rmtree(lxcpath / name, ignore_errors=True)
    env = {"PATH": PATH, "MIRROR": host_mirror(), "DEBIAN_FRONTEND": "noninteractive"}
    argv = ["lxc-create", "-P", str(lxcpath), "-n", name, "-t", "debian", "--"]
    argv += ["-r", RELEASE, f"--packages={','.join(packages)}"]
    _must(argv, 900, env=env, cwd="/")
    folder = lxcpath / name
    patch_debian_hull(folder)  # no DHCP, no network in its own config, slow units masked
    for unit in EXTRA_MASKED:
        link = folder / "rootfs" / "etc" / "systemd" / "system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    config = folder / "config"
    lines = [ln for ln in config.read_text().splitlines() if not ln.startswith("lxc.apparmor.")]
    config.write_text("\n".join([*lines, *HOST_LINES]) + "\n")
    (folder / "ready").write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))


def wheelhouse() -> Path:
    """Wheels of Hyperdrive's dependencies and its build backend, built on the host once per
    pyproject.toml (bootstrap installs Hyperdrive itself from its source, offline)."""
    pyproject = (ROOT / "pyproject.toml").read_bytes()
    folder = CACHE / f"wheels-{hashlib.sha256(pyproject).hexdigest()[:12]}"
    with cache_lock():
        if not (folder / "ready").exists():
            _build_wheels(folder)
    return folder


def _build_wheels(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    _must([*pip, "wheel", "-w", str(folder), str(ROOT)], 600, cwd="/")
    _must([*pip, "download", "-d", str(folder), "setuptools>=68", "wheel"], 600, cwd="/")
    for own in folder.glob("hyperdrive-*.whl"):
        own.unlink()
    (folder / "ready").write_text("ok\n")


def free_subnet() -> IPv4Network:
    """A private /24 of 172.31.100–199 that nothing on this host holds."""
    for _ in range(50):
        subnet = IPv4Network(f"172.31.{100 + secrets.randbelow(100)}.0/24")
        if not subnet_in_use(subnet):
            return subnet
    raise AssertionError("no free 172.31.x.0/24 for the systemd test host")


def copy_checkout(target: Path) -> None:
    """The working tree's files (tracked and new, not ignored), as a user's checkout has them."""
    listed = _must(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"], 60)
    for rel in filter(None, listed.split("\0")):
        source = ROOT / rel
        if source.is_file():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / rel)


@dataclass
class SystemdHost:
    """One booted test host: its name, lxcpath, bridge, address and the admiral's key."""

    root: Path
    tag: str = field(default_factory=lambda: "hdt" + secrets.token_hex(3))
    subnet: IPv4Network = field(default_factory=free_subnet)
    lxcpath: Path = field(init=False)
    key: Path = field(init=False)

    def __post_init__(self) -> None:
        self.lxcpath = self.root / "lxc"
        self.key = self.root / "admiral"

    @property
    def address(self) -> IPv4Address:
        return self.subnet.network_address + 2

    @property
    def gateway(self) -> IPv4Address:
        return self.subnet.network_address + 1

    @property
    def bridge(self) -> str:
        return f"{self.tag}br0"

    def up(self) -> None:
        """Snapshot the base, give it a veth, the wheels, a checkout, a key; boot it."""
        require_lxc()
        assert shutil.which("debootstrap"), "the systemd test host needs debootstrap"
        wheels = wheelhouse()
        base_path, base = base_container(bootstrap_packages())
        self.lxcpath.mkdir(parents=True)
        argv = ["lxc-copy", "-P", str(base_path), "-n", base, "-p", str(self.lxcpath)]
        _must([*argv, "-N", self.tag, "-s", "-B", "overlayfs"], 120)
        self._make_bridge()
        self._configure(wheels)
        self._seed(self.upper())
        _must(
            [
                "lxc-start",
                "-P",
                str(self.lxcpath),
                "-n",
                self.tag,
                "-l",
                "INFO",
                "-o",
                str(self.root / "start.log"),
            ],
            60,
        )
        wait_for(self._booted, 90, 0.5, f"systemd in {self.tag} to finish booting")

    def _make_bridge(self) -> None:
        _must(["ip", "link", "add", self.bridge, "type", "bridge"], 10)
        _must(
            ["ip", "addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge], 10
        )
        _must(["ip", "link", "set", self.bridge, "up"], 10)

    def _configure(self, wheels: Path) -> None:
        """The snapshot's own lines: its address on our bridge and two bind mounts.

        /var/hyperdrive comes from the test's folder: ships are overlay snapshots, and an
        overlay's upper folder cannot itself lie on the container's overlay root."""
        var = self.root / "var"
        var.mkdir()
        mac = "02:00:" + ":".join(f"{b:02x}" for b in self.address.packed)
        lines = [
            "lxc.net.0.type = veth",
            f"lxc.net.0.link = {self.bridge}",
            "lxc.net.0.name = eth0",
            "lxc.net.0.flags = up",
            f"lxc.net.0.hwaddr = {mac}",
            f"lxc.net.0.ipv4.address = {self.address}/{self.subnet.prefixlen}",
            f"lxc.net.0.ipv4.gateway = {self.gateway}",
            f"lxc.mount.entry = {wheels} wheels none ro,bind,create=dir 0 0",
            f"lxc.mount.entry = {var} var/hyperdrive none bind,create=dir 0 0",
        ]
        config = self.lxcpath / self.tag / "config"
        config.write_text(config.read_text() + "\n".join(lines) + "\n")

    def upper(self) -> Path:
        """The snapshot's writable layer: files put there before boot are in its root."""
        config = (self.lxcpath / self.tag / "config").read_text()
        found = re.search(
            r"^lxc\.rootfs\.path\s*=\s*overlay(?:fs)?:[^:]+:(\S+)", config, re.MULTILINE
        )
        assert found, f"{self.tag} is not an overlay snapshot:\n{config}"
        return Path(found.group(1))

    def _seed(self, upper: Path) -> None:
        """A checkout in /root/hyperdrive, the admiral's key, main.conf with the busybox hull."""
        copy_checkout(upper / "root" / "hyperdrive")
        keygen(self.key)
        shutil.copy(f"{self.key}.pub", upper / "root" / "admiral.pub")
        conf = upper / "etc" / "hyperdrive" / "main.conf"
        conf.parent.mkdir(parents=True)
        conf.write_text(
            "# written by the systemd e2e test: bootstrap's defaults, with the busybox hull\n"
            "HYPERDRIVE_NAME=hyperdrive\nHYPERDRIVE_DATA=/data/hyperdrive\n"
            "HYPERDRIVE_VAR=/var/hyperdrive\nHYPERDRIVE_REMOTE=/root/hyperdrive\n"
            "HYPERDRIVE_HTTP_PORT=80\nHYPERDRIVE_HULL=busybox\n"
            "HYPERDRIVE_ADMIRAL_KEYS=/etc/hyperdrive/admirals.pub\n"
        )

    def _booted(self) -> bool:
        state = self.attach("systemctl", "is-system-running", check=False).stdout.strip()
        if state == "degraded":
            failed = self.attach("systemctl", "--failed", "--no-pager", check=False).stdout
            raise AssertionError(f"systemd in {self.tag} is degraded:\n{failed}")
        return state == "running"

    def attach(
        self, *argv: str, timeout: float = 60, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command as root inside the host, with a clean environment."""
        command = ["lxc-attach", "-P", str(self.lxcpath), "-n", self.tag, "--clear-env"]
        for key, value in {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", **(env or {})}.items():
            command += ["-v", f"{key}={value}"]
        result = _run([*command, "--", *argv], timeout, cwd="/")
        if check:
            assert result.returncode == 0, (
                f"{argv} in {self.tag} exited {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def bootstrap(self, *args: str) -> str:
        """`./bootstrap` inside, offline: pip from the wheelhouse, apt only if packages lack."""
        env = {
            "PIP_NO_INDEX": "1",
            "PIP_FIND_LINKS": "/wheels",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        }
        result = self.attach("/root/hyperdrive/bootstrap", *args, timeout=300, env=env)
        return result.stdout + result.stderr

    def main_pid(self) -> int:
        return int(
            self.attach("systemctl", "show", "-p", "MainPID", "--value", "hyperdrive").stdout
        )

    def healthy(self) -> bool:
        try:
            url = f"http://{self.address}:8421/healthz"
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(json.loads(response.read())["status"] == "ok")
        except (OSError, ValueError):
            return False

    def status(self) -> dict:
        return json.loads(self.attach("hd", "status", "--json").stdout)

    def nginx_master(self) -> int:
        return int(self.attach("cat", "/var/hyperdrive/nginx/run/nginx.pid").stdout)

    def cgroup(self, pid: int) -> str:
        """The process's cgroup as systemd tracks it (the unified hierarchy's line)."""
        lines = self.attach("cat", f"/proc/{pid}/cgroup").stdout.splitlines()
        return next(ln.partition("::")[2] for ln in lines if ln.startswith("0::"))

    def ship_pid(self, ship: str) -> int:
        out = self.attach(
            "lxc-info", "-P", "/var/hyperdrive/containers", "-n", ship, "-p", "-H"
        ).stdout
        return int(out)

    def ssh_command(self) -> str:
        return (
            f"ssh -F /dev/null -i {self.key} -o IdentitiesOnly=yes -o StrictHostKeyChecking=no "
            "-o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR"
        )

    def push(self, work: Path, app: str, files: dict[str, str]) -> str:
        """Commit `files` in `work` and `git push` them to the host's SSH port, like a user."""
        env = {
            **GIT_ENV,
            "PATH": PATH,
            "HOME": str(self.root),
            "GIT_SSH_COMMAND": self.ssh_command(),
        }
        if not (work / ".git").exists():
            work.mkdir(parents=True)
            _must(["git", "init", "-q", "-b", "master"], 30, cwd=work, env=env)
        for name, text in files.items():
            (work / name).write_text(text)
        _must(["git", "add", "-A"], 30, cwd=work, env=env)
        _must(["git", "commit", "-q", "-m", "change"], 30, cwd=work, env=env)
        remote = f"ssh://git@{self.address}:2222/{app}"
        pushed = _run(["git", "push", remote, "master"], 300, cwd=work, env=env)
        assert pushed.returncode == 0, f"git push: {pushed.stdout}{pushed.stderr}"
        return pushed.stdout + pushed.stderr

    def close(self) -> None:
        """Stop and destroy the snapshot (its ships go with it), then the bridge."""
        if (self.lxcpath / self.tag / "config").exists():
            _run(["lxc-stop", "-P", str(self.lxcpath), "-n", self.tag, "-k"], 60)
            _run(["lxc-destroy", "-P", str(self.lxcpath), "-n", self.tag, "-f"], 120)
        _run(["ip", "link", "del", self.bridge], 10)


@contextlib.contextmanager
def systemd_host(root: Path) -> Iterator[SystemdHost]:
    host = SystemdHost(root)
    try:
        host.up()
        yield host
    finally:
        host.close()
