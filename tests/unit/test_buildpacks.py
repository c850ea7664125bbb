"""Build detection: the files an app has decide its build and start, per buildpacks' table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hyperdrive.buildpacks import APP_FILE_LIMIT, BUILD_TIMEOUT_S, build_timeout, detect
from hyperdrive.errors import DeployError


def app(tmp_path: Path, files: dict[str, str], executable: tuple[str, ...] = ()) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if name in executable:
            path.chmod(0o755)
    return tmp_path


def test_requirements_txt_builds_a_venv_and_puts_it_on_path(tmp_path: Path) -> None:
    plan = detect(app(tmp_path, {"requirements.txt": "flask\n", "app.py": ""}))
    assert plan.kind == "python"
    assert (
        plan.build == "python3 -m venv /app/.venv && /app/.venv/bin/pip install -r requirements.txt"
    )
    assert plan.start == "python3 app.py"
    assert plan.path_prefix == "/app/.venv/bin"


def test_a_django_app_gathers_its_static_files_after_pip_as_heroku_does(tmp_path: Path) -> None:
    files = {"requirements.txt": "django\n", "manage.py": "", "Procfile": "web: gunicorn x\n"}
    build = detect(app(tmp_path, files)).build
    assert build is not None
    install, collect = build.split(" && if ")
    assert install.endswith("pip install -r requirements.txt")
    assert '[ -z "${DISABLE_COLLECTSTATIC:-}" ]' in collect
    assert collect.endswith("/app/.venv/bin/python manage.py collectstatic --noinput; fi")


def test_pyproject_installs_the_project(tmp_path: Path) -> None:
    plan = detect(app(tmp_path, {"pyproject.toml": "", "main.py": ""}))
    assert plan.build is not None
    assert plan.build.endswith("/app/.venv/bin/pip install .")
    assert plan.start == "python3 main.py"


def test_python_without_an_entry_point_says_what_to_add(tmp_path: Path) -> None:
    with pytest.raises(DeployError, match=r"Procfile `web:` line or an app\.py"):
        detect(app(tmp_path, {"requirements.txt": ""}))


def test_node_uses_npm_ci_with_a_lock_file_and_npm_install_without(tmp_path: Path) -> None:
    locked = detect(app(tmp_path / "a", {"package.json": "{}", "package-lock.json": "{}"}))
    assert (locked.kind, locked.build, locked.start) == ("node", "npm ci", "npm start")
    assert locked.path_prefix == "/app/node_modules/.bin"
    assert locked.env["npm_config_audit"] == "false"
    unlocked = detect(app(tmp_path / "b", {"package.json": "{}"}))
    assert unlocked.build == "npm install"


def test_procfile_web_line_wins_for_the_start(tmp_path: Path) -> None:
    files = {"package.json": "{}", "Procfile": "worker: x\nweb: node server.js --port $PORT\n"}
    assert detect(app(tmp_path, files)).start == "node server.js --port $PORT"


def test_a_procfile_alone_runs_its_web_line_without_a_build(tmp_path: Path) -> None:
    plan = detect(app(tmp_path, {"Procfile": "web: python3 -m http.server $PORT\n"}))
    assert (plan.kind, plan.build, plan.start) == (
        "procfile",
        None,
        "python3 -m http.server $PORT",
    )


def test_a_procfile_without_web_is_a_worker_only_app(tmp_path: Path) -> None:
    plan = detect(app(tmp_path, {"Procfile": "worker: python3 worker.py\n", "index.html": ""}))
    assert plan.start == ""
    assert dict(plan.procfile.processes) == {"worker": "python3 worker.py"}


def test_the_default_start_is_the_web_process_beside_the_workers(tmp_path: Path) -> None:
    files = {"requirements.txt": "", "app.py": "", "Procfile": "web: gunicorn app\nq: rq\n"}
    assert dict(detect(app(tmp_path, files)).procfile.processes) == {
        "web": "gunicorn app",
        "q": "rq",
    }
    plan = detect(app(tmp_path / "b", {"requirements.txt": "", "app.py": ""}))
    assert dict(plan.procfile.processes) == {"web": "python3 app.py"}


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("web: ./serve\nworker ./work\n", "Procfile line 2: 'worker ./work' has no `type:`"),
        ("web:\n", "Procfile line 1: `web:` has no command"),
        ("web: a\n\nweb: b\n", "Procfile line 3: `web:` is there twice"),
        ("cron: 61 * * * * ./x\n", "Procfile line 1: cannot read the minute field '61'"),
        ("# only a comment\n", "the Procfile runs nothing"),
    ],
)
def test_a_bad_procfile_is_refused_with_its_line(tmp_path: Path, text: str, said: str) -> None:
    with pytest.raises(DeployError, match=re.escape(said)):
        detect(app(tmp_path, {"Procfile": text, "index.html": ""}))


@pytest.mark.parametrize("script", ["bin/build", ".hyperdrive/build"])
def test_custom_build_script_runs_and_needs_a_procfile(tmp_path: Path, script: str) -> None:
    files = {script: "#!/bin/sh\n", "Procfile": "web: ./serve\n", "requirements.txt": ""}
    plan = detect(app(tmp_path, files, executable=(script,)))
    assert (plan.kind, plan.build, plan.start) == ("custom", f"/app/{script}", "./serve")
    (tmp_path / "Procfile").unlink()
    with pytest.raises(DeployError, match="needs a Procfile"):
        detect(tmp_path)


def test_a_build_script_that_is_not_executable_says_chmod(tmp_path: Path) -> None:
    with pytest.raises(DeployError, match=r"bin/build is not executable: run `chmod \+x"):
        detect(app(tmp_path, {"bin/build": "#!/bin/sh\n", "Procfile": "web: x\n"}))


def test_static_sites_get_a_tiny_server(tmp_path: Path) -> None:
    plan = detect(app(tmp_path / "a", {"index.html": "hi"}))
    assert plan.kind == "static"
    assert 'busybox httpd -f -p "$PORT" -h /app;' in plan.start
    assert 'python3 -m http.server "$PORT" --directory /app' in plan.start
    public = detect(app(tmp_path / "b", {"public/index.html": "hi"}))
    assert "-h /app/public" in public.start


def test_nothing_recognisable_lists_what_would_work(tmp_path: Path) -> None:
    with pytest.raises(DeployError, match="cannot tell how to run this app"):
        detect(app(tmp_path, {"README": "hello"}))


def test_build_timeout_comes_from_the_env_with_a_15_minute_default() -> None:
    assert build_timeout({}) == BUILD_TIMEOUT_S == 900
    assert build_timeout({"BUILD_TIMEOUT": "42"}) == 42
    for bad in ("soon", "0", "-5", "1e9"):
        with pytest.raises(DeployError, match="BUILD_TIMEOUT"):
            build_timeout({"BUILD_TIMEOUT": bad})


def test_a_procfile_larger_than_an_app_file_can_be_is_a_clear_failure(tmp_path: Path) -> None:
    huge = "web: x\n" + "#" * APP_FILE_LIMIT
    with pytest.raises(DeployError, match="Procfile is larger than 1 MiB"):
        detect(app(tmp_path, {"Procfile": huge}))
