"""The systemd helpers: when a scope is used, and the systemd-run line that makes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyperdrive import systemd
from hyperdrive.errors import InvalidName
from hyperdrive.nginx_reload import Nginx


def test_booted_only_where_systemd_keeps_its_runtime_folder(tmp_path: Path) -> None:
    assert not systemd.booted(tmp_path / "missing")
    (tmp_path / "system").mkdir()
    assert systemd.booted(tmp_path / "system") == (systemd.shutil.which("systemd-run") is not None)


def test_scope_argv_runs_the_program_in_a_named_collected_scope() -> None:
    argv = systemd.scope_argv("hyperdrive-nginx", ["nginx", "-p", "/x/"], "nginx of /x")
    assert argv[: argv.index("--")] == [
        "systemd-run",
        "--scope",
        "--quiet",
        "--collect",
        "--unit=hyperdrive-nginx.scope",
        "--description=nginx of /x",
    ]
    assert argv[argv.index("--") + 1 :] == ["nginx", "-p", "/x/"]


@pytest.mark.parametrize("name", ["", "-x", "a b", "a;b", "../x", "x\n", "a/b"])
def test_unit_names_are_checked(name: str) -> None:
    with pytest.raises(InvalidName):
        systemd.scope_argv(name, ["true"], "")
    with pytest.raises(InvalidName):
        Nginx(Path("/tmp/nginx"), scope=name)


def test_nginx_has_no_scope_unless_given_one() -> None:
    assert Nginx(Path("/tmp/nginx")).scope is None
    assert Nginx(Path("/tmp/nginx"), scope="hdt1-nginx").scope == "hdt1-nginx"
