"""A PEP 503 simple index over any folder of wheels, served over HTTP on an address of the test's
choosing (the ships' bridge address today; a "world" namespace's address tomorrow).

The wheels themselves come from WHEELS (`.ci/run` downloads the pinned ones there before the
tests): nothing is fetched from outside while a test runs.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import threading
from pathlib import Path

WHEELS = Path(os.environ.get("HYPERDRIVE_TEST_WHEELS", "/var/cache/hyperdrive-test/wheels"))


def project_of(wheel: str) -> str:
    """`Django-5.2.19-py3-none-any.whl` → `django` (PEP 503's normalized name)."""
    return re.sub(r"[-_.]+", "-", wheel.split("-", 1)[0]).lower()


def write_simple_index(wheels: Path, root: Path) -> list[str]:
    """`root/simple/<project>/index.html` linking to `root/files/<wheel>#sha256=…`; the wheels
    are linked, not copied. Returns the projects."""
    files, simple = root / "files", root / "simple"
    files.mkdir(parents=True, exist_ok=True)
    links: dict[str, list[str]] = {}
    for wheel in sorted(wheels.glob("*.whl")):
        target = files / wheel.name
        if not target.exists():
            target.symlink_to(wheel.resolve())
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        link = f'<a href="../../files/{wheel.name}#sha256={digest}">{wheel.name}</a>'
        links.setdefault(project_of(wheel.name), []).append(link)
    for project, anchors in links.items():
        (simple / project).mkdir(parents=True, exist_ok=True)
        (simple / project / "index.html").write_text("\n".join(anchors) + "\n")
    (simple / "index.html").write_text(
        "\n".join(f'<a href="{p}/">{p}</a>' for p in sorted(links)) + "\n"
    )
    return sorted(links)


class WheelIndex:
    """The index of `wheels`, served on `host` (a free port); `requests` lists every path asked
    for, so a test can tell whether pip ever came."""

    def __init__(self, wheels: Path, root: Path, host: str) -> None:
        self.projects = write_simple_index(wheels, root)
        self.requests: list[str] = []
        index = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kw) -> None:  # type: ignore[no-untyped-def]
                super().__init__(*args, directory=str(root), **kw)

            def do_GET(self) -> None:
                index.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
                pass

        self.host = host
        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}/simple/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def pip_env(self) -> str:
        """The lines of an includes file (or orders' exports) that send pip here."""
        return f"PIP_INDEX_URL={self.url}\nPIP_TRUSTED_HOST={self.host}\n"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def require_wheels(*projects: str) -> Path:
    """WHEELS, holding a wheel of every project; a missing one fails the test and says how to
    get it (the download needs the network, so the tests never make it themselves)."""
    have = {project_of(w.name) for w in WHEELS.glob("*.whl")} if WHEELS.is_dir() else set()
    missing = sorted(set(projects) - have)
    assert not missing, (
        f"no wheels of {', '.join(missing)} in {WHEELS}: run the `pip download` of .ci/run "
        "(or set HYPERDRIVE_TEST_WHEELS to a folder that has them)"
    )
    return WHEELS
