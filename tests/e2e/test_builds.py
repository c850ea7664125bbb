"""Builds as a user sees them: ordinary Python, Node and static apps deploy on their hulls and are
read through nginx; bad builds fail clearly while the running version keeps serving.

One squadron (default hull `debian`) serves the whole module; orders come from a headquarters
repo hosted on it. Python dependencies come from the package index of a world namespace of the
test's own (tests/e2e/world.py), reached by name through the ships' DNS and the host's
masquerade, as an index on the internet would be.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import shutil
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon
from tests.e2e.squadron import (
    AppRepo,
    behind_world,
    git,
    http_get,
    push_orders,
    wait_outcome,
)
from tests.e2e.world import World
from tests.e2e.world import make_wheel as make_named_wheel

pytestmark = [
    pytest.mark.root,
    pytest.mark.lxc,
    pytest.mark.nginx,
    pytest.mark.slow,
    pytest.mark.timeout(600),
]

WHEEL = "hdtdemo-1.0-py3-none-any.whl"
PY_APP = """\
import http.server, os

class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (GREETING + "\\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("", int(os.environ["PORT"])), Hello).serve_forever()
"""
NODE_SERVER = """\
require("http").createServer((req, res) => res.end("node says hi\\n")).listen(process.env.PORT);
"""
NODE_PACKAGE = '{"name": "nodeapp", "version": "1.0.0", "scripts": {"start": "node server.js"}}\n'
NODE_LOCK = """\
{
  "name": "nodeapp",
  "version": "1.0.0",
  "lockfileVersion": 3,
  "requires": true,
  "packages": {"": {"name": "nodeapp", "version": "1.0.0"}}
}
"""
PROCFILE = "web: python3 app.py\n"


def python_app(greeting: str) -> dict[str, str]:
    return {"app.py": f"GREETING = {greeting!r}\n" + PY_APP, "Procfile": PROCFILE}


class PackageIndex:
    """A PEP 503 simple index with one hand-made wheel, served on `host` (bench/hulls.py serves
    it on a bare bridge; the squadron's ships reach the world's index instead).

    Like PyPI it marks package files cacheable; it counts downloads of each file.
    """

    def __init__(self, root: Path, host: str) -> None:
        files = root / "files"
        files.mkdir(parents=True)
        digest = make_wheel(files / WHEEL)
        page = root / "simple" / "hdtdemo"
        page.mkdir(parents=True)
        (page / "index.html").write_text(
            f'<a href="../../files/{WHEEL}#sha256={digest}">{WHEEL}</a>\n'
        )
        self.downloads: list[str] = []
        index = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kw) -> None:  # type: ignore[no-untyped-def]
                super().__init__(*args, directory=str(root), **kw)

            def end_headers(self) -> None:
                if self.path.startswith("/files/"):
                    self.send_header("Cache-Control", "max-age=365000000, immutable, public")
                super().end_headers()

            def do_GET(self) -> None:
                if self.path.startswith("/files/"):
                    index.downloads.append(self.path)
                super().do_GET()

            def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
                pass

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}/simple/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def make_wheel(path: Path) -> str:
    """A pure-Python wheel of package `hdtdemo` 1.0; returns its sha256 (hex)."""
    files = {
        "hdtdemo/__init__.py": 'GREETING = "hello from a wheel"\n',
        "hdtdemo-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: hdtdemo\nVersion: 1.0\n",
        "hdtdemo-1.0.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{name},sha256={digest.decode()},{len(text.encode())}")
    files["hdtdemo-1.0.dist-info/RECORD"] = "\n".join([*record, "hdtdemo-1.0.dist-info/RECORD,,"])
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ordered(world: World) -> dict[str, str]:
    """Every app's orders in this module (a push of HQ replaces them all)."""
    pip_env = (
        f"export PIP_INDEX_URL={world.index_url}\nexport PIP_TRUSTED_HOST={world.index_host}\n"
    )
    return {
        "py": "export BUILD_TIMEOUT=5\n",
        "deps": pip_env,
        "cut": pip_env,
        "site": "hull busybox\n",
        "mem": "memory 64M\nhealthcheck / 30\n",
    }


def downloads(world: World) -> list[str]:
    """The package files the world's index handed out."""
    return [r["path"] for r in world.requests() if r["path"].startswith("/files/")]


@pytest.fixture(scope="module")
def squadron(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, World]]:
    root = tmp_path_factory.mktemp("builds")
    make_named_wheel(root / "wheels", "hdtdemo", greeting="hello from a wheel")
    with behind_world(root, root / "wheels", HYPERDRIVE_HULL="debian") as (d, world):
        push_orders(d, root / "hq", ordered(world))
        yield d, world


class App:
    """An app repo whose commits replace the whole tree (so a bad file never lingers)."""

    def __init__(self, d: Daemon, name: str, work: Path) -> None:
        self.d, self.name, self.repo = d, name, AppRepo(d, name, work)

    def deploy(self, files: dict[str, str], modes: dict[str, int] | None = None) -> dict:
        for entry in self.repo.dir.iterdir():
            if entry.name != ".git":
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        sha = self.repo.commit(files) if not modes else self._commit_with_modes(files, modes)
        return wait_outcome(self.d, self.repo.push_trigger(sha), timeout=400)

    def _commit_with_modes(self, files: dict[str, str], modes: dict[str, int]) -> str:
        for name, text in files.items():
            path = self.repo.dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            path.chmod(modes.get(name, 0o644))
        git("add", "-A", cwd=self.repo.dir)
        git("commit", "-q", "-m", "change", cwd=self.repo.dir)
        return git("rev-parse", "HEAD", cwd=self.repo.dir)

    def served(self) -> tuple[int, str]:
        return http_get(self.d.http_port, f"/{self.name}/")

    def events(self, deploy: str) -> list[dict]:
        return [e for e in self.d.events() if e.get("deploy") == deploy]


def finished(outcome: dict) -> dict:
    assert outcome["event"] == "DeployFinished", outcome.get("message")
    return outcome


def failed(outcome: dict, stage: str, *words: str) -> str:
    message = str(outcome.get("message"))
    assert outcome["event"] == "DeployFailed", message
    assert outcome["stage"] == stage, message
    assert "keeps serving" in message, message
    for word in words:
        assert word in message, message
    return message


def test_python_app_from_a_procfile_runs_on_debian_and_bad_builds_fail_clearly(
    squadron: tuple[Daemon, World], tmp_path: Path
) -> None:
    d, _ = squadron
    app = App(d, "py", tmp_path / "py")
    outcome = finished(app.deploy(python_app("python v1")))
    assert app.served() == (200, "python v1\n")
    assembled = next(e for e in app.events(outcome["deploy"]) if e["event"] == "ShipAssembled")
    assert "hull-debian-" in assembled["message"]

    build_script = {".hyperdrive/build": "#!/bin/sh\necho built\n", **python_app("v2")}
    failed(app.deploy(build_script), "build", ".hyperdrive/build is not executable", "chmod +x")
    assert app.served() == (200, "python v1\n")

    hangs = {"bin/build": "#!/bin/sh\necho thinking\nsleep 600\n", **python_app("v3")}
    started = time.monotonic()
    failed(app.deploy(hangs), "build", "build timed out after 5 s")
    assert time.monotonic() - started < 60
    assert app.served() == (200, "python v1\n")

    twice = {**python_app("v4"), "Procfile": "web: python3 app.py\nweb: python3 app.py\n"}
    failed(app.deploy(twice), "build", "Procfile line 2", "`web:` is there twice")
    assert app.served() == (200, "python v1\n")


def test_node_app_with_a_lock_file_and_no_dependencies(
    squadron: tuple[Daemon, World], tmp_path: Path
) -> None:
    d, _ = squadron
    app = App(d, "node", tmp_path / "node")
    files = {"package.json": NODE_PACKAGE, "package-lock.json": NODE_LOCK, "server.js": NODE_SERVER}
    outcome = finished(app.deploy(files))
    assert app.served() == (200, "node says hi\n")
    built = [e for e in app.events(outcome["deploy"]) if e["event"] == "ShipBuilt"]
    assert built, "npm ci ran as the build"
    assert "node build completed" in built[0]["message"]


def test_static_site_on_the_busybox_hull(squadron: tuple[Daemon, World], tmp_path: Path) -> None:
    d, _ = squadron
    app = App(d, "site", tmp_path / "site")
    outcome = finished(app.deploy({"index.html": "static and small\n"}))
    assert app.served() == (200, "static and small\n")
    assembled = next(e for e in app.events(outcome["deploy"]) if e["event"] == "ShipAssembled")
    assert "hull-busybox-" in assembled["message"]


def test_pip_dependencies_are_cached_and_a_missing_package_fails_clearly(
    squadron: tuple[Daemon, World], tmp_path: Path
) -> None:
    d, world = squadron
    app = App(d, "deps", tmp_path / "deps")
    uses_wheel = "from hdtdemo import GREETING\n" + PY_APP
    files = {"requirements.txt": "hdtdemo==1.0\n", "app.py": uses_wheel}
    finished(app.deploy(files))
    assert app.served() == (200, "hello from a wheel\n")
    assert downloads(world) == [f"/files/{WHEEL}"]
    clients = {r["client"] for r in world.requests() if r["path"].startswith("/simple/")}
    assert clients == {world.host_ip}, "the index sees the host's address, never the ship's"

    files["app.py"] = "# a change that leaves the dependencies alone\n" + uses_wheel
    finished(app.deploy(files))
    assert app.served() == (200, "hello from a wheel\n")
    assert downloads(world) == [f"/files/{WHEEL}"], "the rebuild downloaded the wheel again"
    assert any((d.var / "cache" / "deps" / "pip").iterdir())

    missing = {"requirements.txt": "hdtdemo==1.0\nnosuchpkg-hdt==1.0\n", "app.py": uses_wheel}
    message = failed(app.deploy(missing), "build", "python build exited 1", "nosuchpkg-hdt")
    assert "setup.log" in message
    assert app.served() == (200, "hello from a wheel\n")


def test_egress_off_makes_the_same_pip_build_fail_clearly_and_the_old_ship_serves(
    squadron: tuple[Daemon, World], tmp_path: Path
) -> None:
    d, world = squadron
    app = App(d, "cut", tmp_path / "cut")
    uses_wheel = "from hdtdemo import GREETING\n" + PY_APP
    files = {"requirements.txt": "hdtdemo==1.0\n", "app.py": uses_wheel}
    finished(app.deploy(files))
    assert app.served() == (200, "hello from a wheel\n")
    orders = ordered(world)
    push_orders(d, tmp_path / "hq", {**orders, "cut": orders["cut"] + "egress off\n"})
    try:
        files["requirements.txt"] = "hdtdemo==1.0\n# pip runs again\n"
        message = failed(app.deploy(files), "build", "egress is off for this app: cut/orders:3")
        assert "python build exited 1" in message
        assert app.served() == (200, "hello from a wheel\n")
    finally:
        push_orders(d, tmp_path / "hq-again", orders)


def test_a_build_printing_100_mb_is_capped_in_the_log_and_deploys(
    squadron: tuple[Daemon, World], tmp_path: Path
) -> None:
    d, _ = squadron
    app = App(d, "noisy", tmp_path / "noisy")
    noisy = "#!/bin/sh\nhead -c 100000000 /dev/zero | tr '\\0' x | fold -w 999\necho done\n"
    outcome = finished(app.deploy({"bin/build": noisy, **python_app("survived")}))
    assert app.served() == (200, "survived\n")
    ship = next(e["ship"] for e in app.events(outcome["deploy"]) if e["event"] == "ShipBuilt")
    log = d.data / "lxc" / ship / "setup.log"
    assert 16 * 2**20 <= log.stat().st_size < 17 * 2**20
    with log.open("rb") as handle:
        handle.seek(-200, 2)
        assert b"output beyond 16 MiB is not kept" in handle.read()
    lines = [e for e in app.events(outcome["deploy"]) if e["event"] == "BuildOutput"]
    assert len(lines) <= 5001


def test_an_app_that_needs_more_memory_than_ordered_is_killed_and_reported(
    squadron: tuple[Daemon, World], tmp_path: Path
) -> None:
    d, _ = squadron
    app = App(d, "mem", tmp_path / "mem")
    finished(app.deploy(python_app("light")))
    assert app.served() == (200, "light\n")
    hungry = python_app("hungry")
    hungry["app.py"] = "BALLAST = bytearray(300 * 2**20)\n" + hungry["app.py"]
    started = time.monotonic()
    failed(app.deploy(hungry), "health", "killed for memory", "64M")
    assert time.monotonic() - started < 30, "the kill is noticed before the health check ends"
    assert app.served() == (200, "light\n")


def test_hd_assemble_makes_new_hull_versions_that_new_ships_use(
    squadron: tuple[Daemon, World], tmp_path: Path
) -> None:
    d, _ = squadron
    app = App(d, "later", tmp_path / "later")
    outcome = finished(app.deploy({"index.html": "on the first hull\n"}))
    first = next(e for e in app.events(outcome["deploy"]) if e["event"] == "ShipAssembled")
    versions = json.loads((d.data / "records" / "hulls.json").read_text())

    assembled = d.hd("assemble", timeout=900)
    assert "hull-build" in assembled.stdout, assembled.stdout
    after = json.loads((d.data / "records" / "hulls.json").read_text())
    assert {k: row["version"] for k, row in after.items()} == {
        kind: row["version"] + 1 for kind, row in versions.items()
    }, "every kind built here before, and only those (no debian-13 nobody asked for)"
    assert app.served() == (200, "on the first hull\n"), "old ships keep their hull"

    outcome = finished(app.deploy({"index.html": "on the new hull\n"}))
    again = next(e for e in app.events(outcome["deploy"]) if e["event"] == "ShipAssembled")
    assert again["message"] != first["message"]
    assert f"hull-debian-{after['debian']['version']}" in again["message"]
    assert app.served() == (200, "on the new hull\n")
