"""`pip install` of a built wheel, as a pip or pipx user gets Hyperdrive: a fresh virtualenv
outside the checkout, `hd serve` from it, and a push over SSH whose post-receive hook (package
data of the wheel) deploys the app."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, wait_for
from tests.e2e.squadron import Admiral, http_get, keygen, make_squadron, teardown

pytestmark = [
    pytest.mark.root,
    pytest.mark.lxc,
    pytest.mark.nginx,
    pytest.mark.slow,
    pytest.mark.timeout(900),
]
SCRATCH = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
)


def run(*argv: str | Path, cwd: Path, timeout: float = 600) -> str:
    result = subprocess.run(
        [str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{argv} exited {result.returncode}:\n{result.stderr[-3000:]}"
    return result.stdout


def build_wheel(tmp_path: Path) -> Path:
    """`pip wheel` of a copy of the checkout, so the build leaves the checkout untouched."""
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=SCRATCH)
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp_path / "wheels",
        source, cwd=tmp_path)  # fmt: skip
    [wheel] = (tmp_path / "wheels").glob("hyperdrive-*.whl")
    shutil.rmtree(source)
    return wheel


def fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    run(venv / "bin" / "pip", "install", "-q", wheel, cwd=tmp_path)
    return venv


def test_a_wheel_in_a_fresh_venv_serves_and_deploys_a_push(tmp_path: Path) -> None:
    venv = fresh_venv(tmp_path, build_wheel(tmp_path))
    where = run(venv / "bin" / "python", "-c", "import hyperdrive; print(hyperdrive.__file__)",
                cwd=tmp_path)  # fmt: skip
    assert where.startswith(str(venv)), where
    d = make_squadron(tmp_path / "hd")
    del d.env["PYTHONPATH"]  # the daemon imports the wheel's code, never the checkout's
    key = keygen(tmp_path / "admiral")
    (d.root / "admirals.pub").write_text(Path(f"{key}.pub").read_text())
    try:
        with open(d.log_path, "ab") as log:
            d.proc = subprocess.Popen(
                [str(venv / "bin" / "hd"), "serve"], env=d.env, cwd=tmp_path, stdout=log,
                stderr=log,
            )  # fmt: skip
        wait_for(d.healthy, 60, 0.1, lambda: f"the wheel's hd serve to answer; log: {d.log()}")
        environ = Path(f"/proc/{d.proc.pid}/environ").read_bytes().split(b"\0")
        assert not any(item.startswith(b"PYTHONPATH=") for item in environ)
        assert not Path(f"/proc/{d.proc.pid}/cwd").resolve().is_relative_to(ROOT)

        admiral = Admiral(d, key)
        work = admiral.working_copy(tmp_path / "site", "site")
        admiral.commit(work, {"index.html": "served by a wheel\n"})
        pushed = admiral.git("push", "hyperdrive", "master", cwd=work)
        assert "site deployed" in pushed.stdout + pushed.stderr, pushed.stderr
        assert http_get(d.http_port, "/site/") == (200, "served by a wheel\n")
        hooks = run("git", "config", "core.hooksPath", cwd=d.data / "git" / "site.git").strip()
        assert Path(hooks).is_relative_to(venv), f"the repo's hooks are {hooks}"
        assert os.access(Path(hooks) / "post-receive", os.X_OK)
        # the dashboard's templates and static assets are package data of the wheel too
        status, page = http_get(d.api_port, "/sign-in")
        assert (status, '<label for="token">Token</label>' in page) == (200, True), page
        assert http_get(d.api_port, "/static/live.js")[0] == 200
    finally:
        teardown(d)
