"""Three squadrons as on three machines: each daemon in a network namespace of its own, with
its own name, data, ports, ship subnet, nginx and NATS node, the namespaces linked by veth
pairs to a test bridge. Everything made here carries one `hdt<hex>` tag and is removed by
`close`, even when a test failed.

The root namespace (the test, as the admirals and the forge) reaches each squadron at its
namespace's address; `hd` reaches it through its admin socket, a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import Daemon, free_subnet, wait_for
from tests.e2e.squadron import Admiral, keygen, make_squadron
from tests.e2e.squadron import http_get as squadron_get
from tests.e2e.squadron import teardown as squadron_teardown

JOIN = re.compile(r"hd fleet join (nats://\S+) --secret (\S+)")


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    """`ip …`, in `netns` when given; raise with its own words when it fails."""
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr}")
    return done.stdout


@dataclass
class NsDaemon(Daemon):
    """A daemon run in its namespace, reached at its namespace's address (see `launch`)."""

    netns: str = ""
    address: str = ""

    def start(self, timeout: float = 60) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115
        enter = ["nsenter", f"--net=/run/netns/{self.netns}", "unshare", "--mount"]
        launcher = [sys.executable, "-m", "tests.e2e.fleet_netns", str(self.root / "cgroup")]
        argv = [*enter, *launcher, sys.executable, "-m", "hyperdrive", "serve"]
        self.proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=log)
        log.close()
        wait_for(
            self.healthy, timeout, 0.05, lambda: f"hd serve to answer /healthz; log: {self.log()}"
        )

    def get(self, path: str, timeout: float = 5) -> dict:
        url = f"http://{self.address}:{self.api_port}{path}"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read())

    def fleet(self) -> dict:
        return json.loads(self.hd("status", "--json").stdout)["fleet"]

    def node_pid(self) -> int | None:
        """The managed nats-server's pid, when it runs (a zombie, killed and not yet reaped,
        has no command line)."""
        try:
            pid = int((self.data / "nats" / "nats.pid").read_text().strip())
            running = bool(Path(f"/proc/{pid}/cmdline").read_bytes())
        except (OSError, ValueError):
            return None
        return pid if running else None

    def kill_node(self) -> None:
        if (pid := self.node_pid()) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class NsAdmiral(Admiral):
    """The admiral, pushing over SSH to a squadron at its namespace's address."""

    def __init__(self, d: NsDaemon, key: Path) -> None:
        super().__init__(d, key)
        self.ns_d = d

    def remote(self, app: str) -> str:
        return f"ssh://git@{self.ns_d.address}:{self.ns_d.ssh_port}/{app}"


class FleetNet:
    """A bridge in the root namespace and, per squadron, a namespace with a veth into it."""

    def __init__(self) -> None:
        self.tag = f"hdt{secrets.token_hex(3)}"
        prefix = free_subnet().rsplit(".", 1)[0]  # a /24 no interface here uses
        self.gateway = f"{prefix}.1"
        self.prefix = prefix
        self.bridge = f"{self.tag}br"
        self.spaces: list[str] = []

    def open(self) -> FleetNet:
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        return self

    def add(self) -> tuple[str, str]:
        """A new namespace linked to the bridge: (its name, its address)."""
        index = len(self.spaces)
        netns, outer, inner = f"{self.tag}n{index}", f"{self.tag}v{index}", f"{self.tag}p{index}"
        address = f"{self.prefix}.{10 + index}"
        ip("netns", "add", netns)
        self.spaces.append(netns)
        ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        ip("link", "set", inner, "netns", netns)
        ip("link", "set", outer, "master", self.bridge, "up")
        ip("addr", "add", f"{address}/24", "dev", inner, netns=netns)
        ip("link", "set", inner, "up", netns=netns)
        ip("link", "set", "lo", "up", netns=netns)
        ip("route", "add", "default", "via", self.gateway, netns=netns)
        return netns, address

    def close(self) -> None:
        """Kill what still runs in the namespaces (ships, nginx, nats-server), then remove
        them, their veths and the bridge."""
        for netns in self.spaces:
            pids = ip("netns", "pids", netns, check=False).split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            ip("netns", "del", netns, check=False)
        for index in range(len(self.spaces)):
            ip("link", "del", f"{self.tag}v{index}", check=False)
        ip("link", "del", self.bridge, check=False)


class Fleet:
    """Three squadrons in three namespaces, one admiral (the same key on each)."""

    def __init__(self, root: Path, count: int = 3, **settings: str) -> None:
        self.root = root
        self.net = FleetNet()
        self.key = keygen(root / "admiral")
        self.squadrons: list[NsDaemon] = []
        self.settings = settings
        self.count = count

    def open(self) -> Fleet:
        self.net.open()
        for index in range(self.count):
            self.squadrons.append(self._squadron(self.root / f"sq{index}"))
        return self

    def _squadron(self, root: Path) -> NsDaemon:
        netns, address = self.net.add()
        d = make_squadron(root, **self.settings)
        listen = {
            "HYPERDRIVE_API_LISTEN": f"{address}:{d.api_port}",
            "HYPERDRIVE_SSH_LISTEN": f"{address}:{d.ssh_port}",
            # the standard NATS ports: each squadron has an address of its own, as on a machine
            "HYPERDRIVE_FLEET_LISTEN": f"{address}:4222",
            "HYPERDRIVE_FLEET_CLUSTER_LISTEN": f"{address}:6222",
        }
        (d.root / "admirals.pub").write_text(Path(f"{self.key}.pub").read_text())
        ns = NsDaemon(d.root, {**d.env, **listen}, d.api_port, d.ssh_port, d.http_port)
        ns.netns, ns.address = netns, address
        ns.start()
        return ns

    def admiral(self, d: NsDaemon) -> NsAdmiral:
        return NsAdmiral(d, self.key)

    def form(self) -> None:
        """`hd fleet init` on the first, `hd fleet join` (a node, by default) on the others."""
        first, *others = self.squadrons
        out = first.hd("fleet", "init", "--advertise", first.address, timeout=60).stdout
        found = JOIN.search(out)
        assert found, out
        url, secret = found.group(1), found.group(2)
        assert url == f"nats://{first.address}:4222"
        for d in others:
            joined = d.hd(
                "fleet", "join", url, "--secret", secret, "--advertise", d.address, timeout=60
            )
            assert "a NATS node runs here too" in joined.stdout, joined.stdout
            wait_for(lambda d=d: d.fleet()["state"] == "connected", 60, 0.2, "joined")
        self.wait_connected()
        last = self.squadrons[-1]  # the third node's join grows the fleet to R3
        wait_for(lambda: last.fleet()["replicas"] == 3, 90, 0.5, "the stream on three nodes")

    def wait_connected(self, timeout: float = 60) -> None:
        wait_for(
            lambda: all(d.fleet()["state"] == "connected" for d in self.squadrons),
            timeout,
            0.2,
            "every squadron connected to the fleet",
        )

    def close(self) -> None:
        for d in self.squadrons:
            with contextlib.suppress(Exception):
                squadron_teardown(d)
            d.kill_node()
        self.net.close()


def http_get(d: NsDaemon, path: str, timeout: float = 3) -> tuple[int, str]:
    """(status, body) of a GET to the squadron's nginx at its namespace's address."""
    return squadron_get(d.http_port, path, address=d.address, timeout=timeout)


def post_hook(d: NsDaemon, provider: str, headers: dict[str, str], body: bytes) -> tuple[int, dict]:
    """A forge's webhook delivery to the squadron's API at its namespace's address."""
    url = f"http://{d.address}:{d.api_port}/hooks/{provider}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        answer = err.read()
        err.close()
        return err.code, {"raw": answer.decode(errors="replace")}


def launch(keep: Path, argv: list[str]) -> None:
    """In the squadron's network and a mount namespace of its own: a sysfs of its network
    namespace over /sys (LXC finds its ship bridge there) with the host's cgroups kept under
    it, then exec `argv`. (`ip netns exec` mounts that sysfs too, but hides the cgroups.)"""
    keep.mkdir(exist_ok=True)
    steps = [
        ["mount", "--make-rprivate", "/"],
        ["mount", "--rbind", "/sys/fs/cgroup", str(keep)],
        ["mount", "-t", "sysfs", "sysfs", "/sys"],
        ["mount", "--rbind", str(keep), "/sys/fs/cgroup"],
    ]
    for step in steps:
        subprocess.run(step, check=True, timeout=20)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    launch(Path(sys.argv[1]), sys.argv[2:])
