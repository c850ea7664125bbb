"""Build detection: how to build and start an app from the files it has, no special files needed.

- `bin/build` or `.hyperdrive/build`: that script; the start command comes from the Procfile.
- `requirements.txt` or `pyproject.toml`: a venv in /app/.venv and pip install; start:
  `python3 app.py` (or main.py, server.py).
- `package.json`: `npm ci` with a lock file, else `npm install`; start: `npm start`.
- `index.html` or `public/`: no build; a tiny static web server.
- only a `Procfile`: no build; its `web:` line.

A Procfile `web:` line always wins for the start command.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from hyperdrive.errors import DeployError

VENV = "/app/.venv"
PROCFILE_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")


@dataclass(frozen=True)
class BuildPlan:
    """What to run in the ship: a build script (sh) or nothing, then the start command (sh)."""

    kind: str
    build: str | None
    start: str
    path_prefix: str = ""


def procfile_web(app_dir: Path) -> str | None:
    """The `web:` command of the Procfile; DeployError if there is a Procfile without one."""
    procfile = app_dir / "Procfile"
    if not procfile.is_file():
        return None
    for line in procfile.read_text(errors="replace").splitlines():
        match = PROCFILE_LINE.match(line.strip())
        if match and match.group(1) == "web":
            return match.group(2).strip()
    raise DeployError("build", "the Procfile has no `web:` line: add `web: <command>`")


def _custom(app_dir: Path) -> str | None:
    for candidate in ("bin/build", ".hyperdrive/build"):
        script = app_dir / candidate
        if script.is_file():
            if not script.stat().st_mode & 0o111:
                raise DeployError("build", f"{candidate} is not executable: chmod +x {candidate}")
            return f"/app/{candidate}"
    return None


def _python_build(app_dir: Path) -> str:
    install = (
        "pip install -r requirements.txt"
        if (app_dir / "requirements.txt").is_file()
        else ("pip install .")
    )
    return f"python3 -m venv {VENV} && {VENV}/bin/{install}"


def _python_start(app_dir: Path) -> str:
    for name in ("app.py", "main.py", "server.py"):
        if (app_dir / name).is_file():
            return f"python3 {name}"
    raise DeployError("build", "a Python app needs a Procfile `web:` line or an app.py/main.py")


def _node_build(app_dir: Path) -> str:
    return "npm ci" if (app_dir / "package-lock.json").is_file() else "npm install"


def _static_root(app_dir: Path) -> str | None:
    if (app_dir / "public").is_dir():
        return "/app/public"
    if (app_dir / "index.html").is_file():
        return "/app"
    return None


def static_server(root: str) -> str:
    """busybox httpd where busybox is, else Python's http.server (the Debian hull has both)."""
    return (
        f'if command -v busybox >/dev/null; then busybox httpd -f -p "$PORT" -h {root}; '
        f'else python3 -m http.server "$PORT" --directory {root}; fi'
    )


def detect(app_dir: Path) -> BuildPlan:
    """Decide how this app is built and started; DeployError says what is missing."""
    web = procfile_web(app_dir)
    custom = _custom(app_dir)
    if custom is not None:
        if web is None:
            raise DeployError("build", "a custom build needs a Procfile `web:` line to start")
        return BuildPlan("custom", custom, web)
    if (app_dir / "requirements.txt").is_file() or (app_dir / "pyproject.toml").is_file():
        start = web or _python_start(app_dir)
        return BuildPlan("python", _python_build(app_dir), start, path_prefix=f"{VENV}/bin")
    if (app_dir / "package.json").is_file():
        return BuildPlan(
            "node", _node_build(app_dir), web or "npm start", path_prefix="/app/node_modules/.bin"
        )
    static = _static_root(app_dir)
    if web is not None:
        return BuildPlan("procfile", None, web)
    if static is not None:
        return BuildPlan("static", None, static_server(static))
    raise DeployError(
        "build",
        "cannot tell how to run this app: add a Procfile with a `web:` line, a requirements.txt, "
        "a package.json, or an index.html",
    )
