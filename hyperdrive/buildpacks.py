"""Build detection: how to build and start an app from the files it has, no special files needed.

The first row that matches decides the build; a Procfile `web:` line always wins for the start,
and its other lines (`release:`, workers, `cron…:`) mean what they mean on Heroku and piku
(procfile.py); a Procfile with processes but no `web:` is a worker-only app (no route).

| the app has                        | build (in the ship, in /app)           | start (default)    |
|------------------------------------|----------------------------------------|--------------------|
| `bin/build` or `.hyperdrive/build` | that script (must be executable)       | Procfile, required |
| `requirements.txt`                 | venv /app/.venv, `pip install -r …`    | `python3 app.py`   |
| … and a Django `manage.py`         | then `manage.py collectstatic`         |                    |
| `pyproject.toml`                   | venv /app/.venv, `pip install .`       | (main/server.py)   |
| `package.json`                     | `npm ci` (no lock file: `npm install`) | `npm start`        |
| a `Procfile` only                  | none                                   | its `web:` line    |
| `index.html` or `public/`          | none                                   | a tiny web server  |

* The runtime versions the app asks for (`.python-version`, `runtime.txt`, `requires-python`,
  `package.json` engines) choose the hull before the build (runtimes.py).
* The app runs with `/app/.venv/bin` (Python) or `/app/node_modules/.bin` (Node) first on PATH.
* Environment: the orders' `export`s and PORT; pip and npm caches live in
  `$VAR/cache/<app>` (mounted at /var/cache/hyperdrive), so a rebuild with unchanged
  dependencies does not download them again; npm's audit, fund and update checks are off.
* `export BUILD_TIMEOUT=<seconds>` in the orders (or `$DATA/includes/*.env`) bounds the build
  (default 15 minutes); a build that runs longer is killed and the deploy fails.
* A Procfile with a bad line or without any process, or a build script that is not
  executable, fails the deploy with a message saying so; the running ship keeps serving.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from hyperdrive.errors import DeployError
from hyperdrive.files import OutsideTree, read_inside
from hyperdrive.procfile import Procfile, ProcfileError, parse

VENV = "/app/.venv"
APP_FILE_LIMIT = 1024 * 1024  # a Procfile, package.json… larger than this is not an app's
BUILD_TIMEOUT_S = 15 * 60
# Defaults under the orders' env: quiet, offline-friendly package managers, unbuffered logs.
BUILD_ENV = {
    "PYTHONUNBUFFERED": "1",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "PIP_NO_INPUT": "1",
    "npm_config_audit": "false",
    "npm_config_fund": "false",
    "npm_config_update_notifier": "false",
}


# A Django app's static files, gathered as Heroku's Python buildpack does (whitenoise serves
# them from STATIC_ROOT); `export DISABLE_COLLECTSTATIC=1` in the orders skips it.
COLLECTSTATIC = (
    f'if [ -z "${{DISABLE_COLLECTSTATIC:-}}" ] && {VENV}/bin/python -c "import django" '
    f"2>/dev/null; then {VENV}/bin/python manage.py collectstatic --noinput; fi"
)


@dataclass(frozen=True)
class BuildPlan:
    """What to run in the ship: a build script (sh) or nothing, then the start command (sh)
    of `web` ("" for a worker-only app); `procfile` holds every process, `web` included."""

    kind: str
    build: str | None
    start: str
    path_prefix: str = ""
    env: Mapping[str, str] = field(default_factory=lambda: dict(BUILD_ENV))
    procfile: Procfile = field(default_factory=Procfile)

    def __post_init__(self) -> None:
        if self.start and self.procfile.web != self.start:
            processes = {"web": self.start, **self.procfile.workers}
            object.__setattr__(self, "procfile", replace(self.procfile, processes=processes))


def read_procfile(app_dir: Path) -> Procfile | None:
    """The app's Procfile, None without one; DeployError names a bad line, or says that
    there is no process in it."""
    text = read_app_file(app_dir, "Procfile", "build")
    if text is None:
        return None
    try:
        procfile = parse(text)
    except ProcfileError as err:
        raise DeployError("build", str(err)) from None
    if not procfile.processes and not procfile.cron:
        raise DeployError(
            "build", "the Procfile runs nothing: add `web: <command>` (or a worker, or cron)"
        )
    return procfile


def read_app_file(app_dir: Path, name: str, stage: str) -> str | None:
    """An app file the daemon itself reads, None if absent; DeployError when it is a link out
    of the app's files (it would show a host file) or larger than APP_FILE_LIMIT."""
    try:
        data = read_inside(app_dir, name, APP_FILE_LIMIT)
    except OutsideTree as err:
        raise DeployError(stage, f"{err}: commit the file itself") from err
    if data is not None and len(data) > APP_FILE_LIMIT:
        raise DeployError(stage, f"{name} is larger than {APP_FILE_LIMIT // 2**20} MiB")
    return None if data is None else data.decode("utf-8", "replace")


def build_timeout(env: Mapping[str, str]) -> float:
    """`BUILD_TIMEOUT` (seconds) from the app's env, else 15 minutes; a bad value is an error."""
    text = env.get("BUILD_TIMEOUT", "").strip()
    if not text:
        return BUILD_TIMEOUT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0
    if not 0 < seconds <= 24 * 3600:
        raise DeployError("build", f"BUILD_TIMEOUT={text!r}: give a number of seconds up to 86400")
    return seconds


def _custom(app_dir: Path) -> str | None:
    for candidate in ("bin/build", ".hyperdrive/build"):
        script = app_dir / candidate
        if script.is_file():
            if not script.stat().st_mode & 0o111:
                raise DeployError(
                    "build",
                    f"{candidate} is not executable: run `chmod +x {candidate}` "
                    f"(or `git update-index --chmod=+x {candidate}`) and push again",
                )
            return f"/app/{candidate}"
    return None


def _python_build(app_dir: Path) -> str:
    if (app_dir / "requirements.txt").is_file():
        install = "pip install -r requirements.txt"
    else:
        install = "pip install ."
    build = f"python3 -m venv {VENV} && {VENV}/bin/{install}"
    return f"{build} && {COLLECTSTATIC}" if (app_dir / "manage.py").is_file() else build


def _python_start(app_dir: Path) -> str:
    for name in ("app.py", "main.py", "server.py"):
        if (app_dir / name).is_file():
            return f"python3 {name}"
    raise DeployError(
        "build", "a Python app needs a Procfile `web:` line or an app.py, main.py or server.py"
    )


def _node_build(app_dir: Path) -> str:
    return "npm ci" if (app_dir / "package-lock.json").is_file() else "npm install"


def _static_root(app_dir: Path) -> str | None:
    if (app_dir / "public").is_dir():
        return "/app/public"
    if (app_dir / "index.html").is_file():
        return "/app"
    return None


def static_server(root: str) -> str:
    """busybox httpd where busybox is (busybox hull), else Python's http.server (Debian hull)."""
    return (
        f'if command -v busybox >/dev/null; then exec busybox httpd -f -p "$PORT" -h {root}; '
        f'else exec python3 -m http.server "$PORT" --directory {root}; fi'
    )


def detect(app_dir: Path) -> BuildPlan:
    """Decide how this app is built and started; DeployError says what is missing."""
    procfile = read_procfile(app_dir)
    plan = _detect(app_dir, procfile)
    return plan if procfile is None else replace(plan, procfile=procfile)


def _detect(app_dir: Path, procfile: Procfile | None) -> BuildPlan:
    """The build (and default start) from the app's files; a Procfile that has processes
    but no `web:` runs no default web process."""
    web = procfile.web if procfile else None
    if procfile is not None and web is None:
        web = ""  # a worker-only app: nothing answers HTTP
    custom = _custom(app_dir)
    if custom is not None:
        if web is None:
            raise DeployError("build", "a custom build needs a Procfile to say what to run")
        return BuildPlan("custom", custom, web)
    if (app_dir / "requirements.txt").is_file() or (app_dir / "pyproject.toml").is_file():
        start = web if web is not None else _python_start(app_dir)
        return BuildPlan("python", _python_build(app_dir), start, path_prefix=f"{VENV}/bin")
    if (app_dir / "package.json").is_file():
        return BuildPlan(
            "node",
            _node_build(app_dir),
            "npm start" if web is None else web,
            path_prefix="/app/node_modules/.bin",
        )
    if web is not None:
        return BuildPlan("procfile", None, web)
    static = _static_root(app_dir)
    if static is not None:
        return BuildPlan("static", None, static_server(static))
    raise DeployError(
        "build",
        "cannot tell how to run this app: add a Procfile with a `web:` line, a requirements.txt, "
        "a pyproject.toml, a package.json, or an index.html",
    )
