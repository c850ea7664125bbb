"""Secrets stay out of sight: a token in an autodeploy URL is never shown, and what the daemon
keeps on disk is not readable by other local users (issue 14).

The forge is a bare repository served over dumb HTTP by `python -m http.server` on loopback, and
the orders name it as `http://deploy:TOKEN@127.0.0.1:PORT/site.git`: the daemon's real git
fetches through that URL.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_for
from tests.e2e.squadron import Admiral, admiral_squadron, forge_repo, http_get

pytestmark = [pytest.mark.root, pytest.mark.lxc, pytest.mark.nginx, pytest.mark.slow]

TOKEN = "hdtok3n5ecret9f2"


@contextlib.contextmanager
def dumb_http(folder: Path) -> Iterator[int]:
    """`folder` served over HTTP on loopback (git's dumb protocol reads plain files)."""
    port = free_port()
    argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    server = subprocess.Popen(
        [*argv, "--directory", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: http_get(port, "/")[0] == 200, 10, 0.1, "the forge's HTTP server")
        yield port
    finally:
        server.terminate()
        server.wait(timeout=10)


def forge_repo_for_http(admiral: Admiral, tmp_path: Path) -> Path:
    """A bare repository with one commit of a static site, ready for dumb HTTP."""
    forge, _ = forge_repo(admiral, tmp_path, {"index.html": "behind a token\n"})
    subprocess.run(["git", f"--git-dir={forge}", "update-server-info"], check=True, timeout=30)
    return forge


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def squeezed(text: str) -> str:
    """Text without whitespace: rich folds long paths at any width."""
    return "".join(text.split())


def test_a_token_in_an_autodeploy_url_is_shown_nowhere(tmp_path: Path) -> None:
    with admiral_squadron(tmp_path) as (d, admiral):
        forge = forge_repo_for_http(admiral, tmp_path)
        with dumb_http(forge.parent) as port:
            url = f"http://deploy:{TOKEN}@127.0.0.1:{port}/site.git"
            hq = admiral.working_copy(tmp_path / "hq", "headquarters")
            admiral.commit(
                hq,
                {
                    "authorized_keys/admiral.pub": Path(f"{admiral.key}.pub").read_text(),
                    "site/orders": f"autodeploy {url}\nhealthcheck / 10\n",
                    "gone/orders": f"autodeploy http://deploy:{TOKEN}@127.0.0.1:{port}/gone.git\n",
                },
            )
            pushed = admiral.git("push", "hyperdrive", "master", cwd=hq)
            wait_for(
                lambda: http_get(d.http_port, "/site/") == (200, "behind a token\n"),
                90,
                0.3,
                "the app fetched through the URL with a token",
            )
            failed = d.wait_event("DeployFailed", timeout=60, app="gone")
            fetched = d.wait_event("StageFinished", app="site", stage="fetch")
        assert f"http://127.0.0.1:{port}/site.git" in fetched["message"]
        assert "gone" in failed["message"]
        shown = {
            "push output": pushed.stdout + pushed.stderr,
            "events.jsonl": (d.data / "events.jsonl").read_text(),
            "hd status": d.hd("status").stdout + d.hd("status", "--json").stdout,
            "hd logs": d.hd("logs").stdout + d.hd("logs", "--json").stdout,
        }
        for where, text in shown.items():
            assert TOKEN not in text, where
        assert f"http://127.0.0.1:{port}/site.git" in shown["hd status"]


def test_secrets_and_data_are_not_readable_by_other_users(tmp_path: Path) -> None:
    with admiral_squadron(tmp_path) as (d, admiral):
        conf = d.root / "main.conf"
        app = admiral.working_copy(tmp_path / "web", "web")
        build = "#!/bin/sh\necho building\n"
        (app / "bin").mkdir()
        (app / "bin" / "build").write_text(build)
        (app / "bin" / "build").chmod(0o755)
        admiral.commit(
            app,
            {
                "bin/build": build,
                "Procfile": "web: busybox httpd -f -p $PORT -h /app\n",
                "index.html": "private\n",
            },
        )
        admiral.git("push", "hyperdrive", "master", cwd=app)
        wait_for(lambda: http_get(d.http_port, "/web/")[0] == 200, 90, 0.3, "web served")
        assert mode(conf) == 0o600
        setup_logs = list((d.data / "lxc").glob("*/setup.log"))
        assert setup_logs
        kept = [d.data / "events.jsonl", d.data / "spool" / "journal.jsonl", *setup_logs]
        for path in kept:
            assert mode(path) & 0o007 == 0, f"{path} is {mode(path):04o}"
        for folder in (d.data / "records", d.data / "spool", d.var / "nginx" / "logs"):
            assert mode(folder) & 0o007 == 0, f"{folder} is {mode(folder):04o}"
        doctor = d.hd("doctor", check=False).stdout
        assert "ok   file modes:" in doctor, doctor

        os.chmod(conf, 0o644)
        doctor = d.hd("doctor", check=False)
        assert doctor.returncode == 1
        said = squeezed(doctor.stdout)
        assert squeezed(f"FAIL file modes: too open: {conf} is 0644 (at most 0600)") in said
        assert squeezed(f"fix: chmod 0600 {conf}") in said
