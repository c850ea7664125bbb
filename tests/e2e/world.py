"""The world outside a squadron, for tests: a network namespace of the test's own, routed like an
upstream network (the host reaches it through a veth pair; ships reach it through the host's
masquerade), holding an HTTP server that records each client's source address, a PEP 503
simple index served from a folder of wheels, and a DNS server (dnsmasq) that names them.

No traffic leaves the machine: the namespace's only link is the veth to the host. Everything
carries the world's unique `hdt<hex>` name and is removed by `close()`, even after a failure.
Run as a script (`python world.py serve PORT WHEELS LOG`) it is the namespace's HTTP server.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import json
import re
import secrets
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

HTTP_PORT = 80
ALT_PORT = 8080  # the same server on a second port: for allow lists that name only one
THIRD_OCTETS = range(100, 190)


def sh(*argv: str, check: bool = True) -> str:
    """Run a program (argument list, timeout); raise with its own output when it fails."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr}{done.stdout}")
    return done.stdout


def free_world_subnet() -> str:
    """`10.214.X` (a /24) that no interface here uses."""
    used = set(re.findall(r"inet 10\.214\.(\d+)\.", sh("ip", "-4", "-o", "addr", "show")))
    start = secrets.randbelow(len(THIRD_OCTETS))
    for step in range(len(THIRD_OCTETS)):
        third = THIRD_OCTETS[(start + step) % len(THIRD_OCTETS)]
        if str(third) not in used:
            return f"10.214.{third}"
    raise RuntimeError("no free 10.214.x.0/24 left for a test world")


@dataclass
class World:
    """`<name>` namespace at SUBNET.2, the host's end of the veth at SUBNET.1.

    `index.<name>` and `web.<name>` resolve (through the world's DNS) to the namespace's
    address, where one HTTP server answers: `/simple/…` and `/files/…` from `wheels`, any
    other path with `hello from the world`.
    """

    root: Path
    wheels: Path
    name: str = field(default_factory=lambda: f"hdt{secrets.token_hex(3)}")
    prefix: str = field(default_factory=free_world_subnet)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def host_ip(self) -> str:
        """The host's address on the world's link: what the world sees ships come from."""
        return f"{self.prefix}.1"

    @property
    def ip(self) -> str:
        return f"{self.prefix}.2"

    @property
    def index_host(self) -> str:
        return f"index.{self.name}"

    @property
    def web_host(self) -> str:
        return f"web.{self.name}"

    @property
    def index_url(self) -> str:
        return f"http://{self.index_host}/simple/"

    @property
    def log(self) -> Path:
        return self.root / "requests.jsonl"

    def open(self) -> World:
        """Namespace, veth pair, addresses, routes, then the HTTP and DNS servers."""
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            self._link()
            self._serve_http()
            self._serve_dns()
        except BaseException:
            self.close()
            raise
        return self

    def _link(self) -> None:
        ns, host_end = self.name, f"{self.name}h"
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "addr", "add", f"{self.host_ip}/24", "dev", host_end)
        sh("ip", "link", "set", host_end, "up")
        inside = ("ip", "netns", "exec", ns, "ip")
        sh(*inside, "addr", "add", f"{self.ip}/24", "dev", "eth0")
        sh(*inside, "link", "set", "eth0", "up")
        sh(*inside, "link", "set", "lo", "up")

    def _inside(self, *argv: str) -> subprocess.Popen[bytes]:
        """Start a program in the namespace; it is stopped by close()."""
        with (self.root / f"{Path(argv[0]).name}.err").open("ab") as err:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.name, *argv], stdout=subprocess.DEVNULL, stderr=err
            )
        self.procs.append(proc)
        return proc

    def _serve_http(self) -> None:
        for port in (HTTP_PORT, ALT_PORT):
            serve = [sys.executable, __file__, "serve", str(port), str(self.wheels), str(self.log)]
            self._inside(*serve)
            url = f"http://{self.ip}:{port}/ready"
            self._wait(["curl", "-sf", "-o", "/dev/null", url], "HTTP server")

    def _serve_dns(self) -> None:
        # host records answer A, and AAAA with no data; other names under the world: NXDOMAIN
        records = [f"--host-record={host},{self.ip}" for host in (self.index_host, self.web_host)]
        records.append(f"--local=/{self.name}/")
        self._inside(
            "dnsmasq",
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--conf-file=/dev/null",
            "--bind-interfaces",
            f"--listen-address={self.ip}",
            "--port=53",
            f"--pid-file={self.root / 'dnsmasq.pid'}",
            *records,
        )
        deadline = time.monotonic() + 10
        while self.lookup(self.index_host) != [self.ip]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the world's DNS server did not come up: {self.root}")
            time.sleep(0.1)

    def lookup(self, host: str, server: str | None = None) -> list[str]:
        """The A records `server` (default: the world's DNS) gives for `host`; [] if none."""
        import dns.exception  # noqa: PLC0415 - this file also runs as a script (stdlib only)
        import dns.message  # noqa: PLC0415
        import dns.query  # noqa: PLC0415

        query = dns.message.make_query(host, "A")
        try:
            answer = dns.query.udp(query, server or self.ip, timeout=1)
        except (dns.exception.DNSException, OSError):
            return []
        return sorted(str(r) for rrset in answer.answer for r in rrset if r.rdtype == 1)

    def _wait(self, argv: list[str], what: str) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
            if done.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"the world's {what} did not come up: {argv}")

    def requests(self) -> list[dict[str, str]]:
        """Every request the world's HTTP server saw: client address and path."""
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]

    def close(self) -> None:
        """Stop the servers, remove the namespace and the veth; nothing left, never raises."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        self.procs.clear()
        sh("ip", "netns", "delete", self.name, check=False)
        sh("ip", "link", "delete", f"{self.name}h", check=False)


def make_wheel(folder: Path, name: str, version: str = "1.0", greeting: str = "hello") -> Path:
    """A pure-Python wheel of package `name` whose module says `GREETING`."""
    dist = f"{name}-{version}"
    files = {
        f"{name}/__init__.py": f"GREETING = {greeting!r}\n",
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    files[f"{dist}.dist-info/RECORD"] = "\n".join([*record, f"{dist}.dist-info/RECORD,,"])
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


# ---- the world's HTTP server (run as a script inside the namespace) ----


def _project(wheel: str) -> str:
    """PEP 503's normalised project name of a wheel file."""
    return re.sub(r"[-_.]+", "-", wheel.split("-", 1)[0]).lower()


class _Handler(http.server.BaseHTTPRequestHandler):
    wheels: Path
    log: Path

    def do_GET(self) -> None:
        with self.log.open("a") as fh:
            fh.write(json.dumps({"client": self.client_address[0], "path": self.path}) + "\n")
        path = self.path.split("?", 1)[0]
        if path.startswith("/simple/"):
            self._simple(path.removeprefix("/simple/").strip("/"))
        elif path.startswith("/files/"):
            self._file(path.removeprefix("/files/"))
        else:
            self._send(200, b"hello from the world\n", "text/plain")

    def _simple(self, project: str) -> None:
        wheels = sorted(p for p in self.wheels.glob("*.whl") if _project(p.name) == project)
        if project and not wheels:
            self._send(404, b"no such project\n", "text/plain")
            return
        if not project:
            names = sorted({_project(p.name) for p in self.wheels.glob("*.whl")})
            links = [f'<a href="{n}/">{n}</a>' for n in names]
        else:
            links = []
            for wheel in wheels:
                digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
                links.append(f'<a href="/files/{wheel.name}#sha256={digest}">{wheel.name}</a>')
        self._send(200, ("\n".join(links) + "\n").encode(), "text/html")

    def _file(self, name: str) -> None:
        wheel = self.wheels / name
        if "/" in name or not wheel.is_file():
            self._send(404, b"no such file\n", "text/plain")
            return
        # like PyPI, package files are cacheable for ever (pip's HTTP cache keeps them)
        cache = "max-age=365000000, immutable, public"
        self._send(200, wheel.read_bytes(), "application/octet-stream", cache)

    def _send(self, status: int, body: bytes, kind: str, cache: str = "") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        if cache:
            self.send_header("Cache-Control", cache)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    _Handler.wheels, _Handler.log = Path(sys.argv[3]), Path(sys.argv[4])
    with contextlib.suppress(KeyboardInterrupt):
        server = http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[2])), _Handler)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        server.serve_forever()
