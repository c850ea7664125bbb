"""`./bootstrap` as a new user runs it: install and start, upgrade in place, uninstall cleanly.

The system locations are pointed at a scratch root so the test leaves this machine as it was;
packages are installed by .ci/run (and by `./bootstrap --test`) beforehand.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import subprocess
import urllib.request
from pathlib import Path

import asyncssh
import pytest

from tests.conftest import ROOT, free_port, wait_for

pytestmark = pytest.mark.slow


def run_bootstrap(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(ROOT / "bootstrap"), *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"bootstrap {args} failed:\n{result.stdout}\n{result.stderr}"
    return result


NGINX_UNIT = """[Unit]
Description=the distribution's nginx (a scratch copy for the test)
[Service]
ExecStart=/usr/sbin/nginx -g 'daemon off;'
[Install]
WantedBy=multi-user.target
"""


def unit_tree(root: Path, enabled: bool) -> Path:
    """A unit tree `systemctl --root` manages offline: this machine's nginx and nats-server
    stay as they are."""
    (root / "etc" / "systemd" / "system").mkdir(parents=True)
    (root / "lib" / "systemd" / "system").mkdir(parents=True)
    for unit in ("nginx", "nats-server"):
        (root / "lib" / "systemd" / "system" / f"{unit}.service").write_text(NGINX_UNIT)
        if enabled:
            units(root, "enable", unit)
    return root


def units(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["systemctl", f"--root={root}", *args], capture_output=True, text=True, timeout=30
    )
    return done.stdout.strip()


def only_bootstrap_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """What a new user reads: bootstrap's own short lines; apt, git and pip go to the log."""
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if not line.startswith("bootstrap: ")]


def scratch_env(tmp_path: Path) -> tuple[dict[str, str], int]:
    """bootstrap's system locations under `tmp_path`; the API port."""
    api = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYPERDRIVE_")}
    env.update(
        HYPERDRIVE_PREFIX=str(tmp_path / "opt"),
        HYPERDRIVE_CONF_DIR=str(tmp_path / "etc"),
        HYPERDRIVE_BIN_LINK=str(tmp_path / "bin" / "hd"),
        HYPERDRIVE_PIDFILE=str(tmp_path / "run.pid"),
        HYPERDRIVE_SKIP_PACKAGES="1",
        HYPERDRIVE_NO_SYSTEMD="1",
        HYPERDRIVE_SYSTEMD_ROOT=str(tmp_path / "systemd"),
        HYPERDRIVE_NAME=f"hdb{secrets.token_hex(3)}",  # never the machine's own `hyperdrive`
        HYPERDRIVE_DATA=str(tmp_path / "data"),
        HYPERDRIVE_VAR=str(tmp_path / "var"),
        HYPERDRIVE_API_LISTEN=f"127.0.0.1:{api}",
        HYPERDRIVE_SSH_LISTEN=f"127.0.0.1:{free_port()}",
        HYPERDRIVE_HTTP_PORT=str(free_port()),
        COLUMNS="80",  # `hd`'s output for people as with no terminal, whatever runs the tests
    )
    (tmp_path / "bin").mkdir()
    return env, api


def stop_supervisor(tmp_path: Path) -> None:
    pidfile = tmp_path / "run.pid"
    if pidfile.exists():
        subprocess.run(["kill", "-TERM", pidfile.read_text().strip()], check=False)


def healthz(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return json.loads(response.read())["status"] == "ok"
    except OSError:
        return False


def clone_headquarters(private_key: Path, ssh_port: int, target: Path) -> str:
    """What the README's first HQ step does, with the real git and ssh clients."""
    ssh = shlex.join([
        "ssh", "-F", "/dev/null", "-i", str(private_key), "-o", "IdentitiesOnly=yes",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
    ])  # fmt: skip
    url = f"ssh://git@127.0.0.1:{ssh_port}/headquarters"
    result = subprocess.run(
        ["git", "clone", url, str(target)], env={**os.environ, "GIT_SSH_COMMAND": ssh},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, f"git clone {url}: {result.stderr}"
    return result.stderr


def test_install_upgrade_uninstall(tmp_path: Path) -> None:
    secret = asyncssh.generate_private_key("ssh-ed25519")
    private = tmp_path / "alice"
    private.write_bytes(secret.export_private_key())
    private.chmod(0o600)
    key = tmp_path / "alice.pub"
    key.write_text(secret.export_public_key().decode())
    env, api = scratch_env(tmp_path)
    ssh_port = int(env["HYPERDRIVE_SSH_LISTEN"].rsplit(":", 1)[1])
    systemd = unit_tree(tmp_path / "systemd", enabled=True)
    try:
        installed = run_bootstrap(env, "--admiral-key", str(key))
        out = installed.stdout
        assert "git remote add hyperdrive ssh://git@" in out
        assert only_bootstrap_lines(installed) == []
        log = (tmp_path / "data" / "bootstrap.log").read_text()
        assert "Successfully installed" in log, "pip's output is kept in bootstrap.log"
        assert "ready: hyperdrive " in log
        assert units(systemd, "is-enabled", "nginx") == "disabled"
        assert units(systemd, "is-enabled", "nats-server") == "disabled", "it would hold 4222"
        assert healthz(api)
        hd = str(tmp_path / "bin" / "hd")
        status = json.loads(
            subprocess.run(
                [hd, "status", "--json"],
                env=env,
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout
        )
        assert status["api"] == f"127.0.0.1:{api}"
        cloned = clone_headquarters(private, ssh_port, tmp_path / "hq")
        assert "cloned an empty repository" in cloned, "headquarters exists from the first start"
        doctor = subprocess.run([hd, "doctor"], env=env, capture_output=True, text=True, timeout=30)
        assert "daemon: running" in doctor.stdout
        assert "ok   file modes:" in doctor.stdout, "bootstrap leaves nothing too open"
        conf = tmp_path / "etc" / "main.conf"
        assert conf.stat().st_mode & 0o777 == 0o600, "main.conf holds the webhook secret"
        admirals = (tmp_path / "etc" / "admirals.pub").read_text()
        assert key.read_text().split()[1] in admirals
        records = (tmp_path / "data" / "records" / "system.files").read_text().split()
        assert str(tmp_path / "etc" / "main.conf") in records
        assert str(tmp_path / "bin" / "hd") in records

        conf = tmp_path / "etc" / "main.conf"
        conf.write_text(conf.read_text() + "# kept across upgrades\n")
        (tmp_path / "data" / "mine").write_text("data survives")
        upgraded = run_bootstrap(env)
        assert only_bootstrap_lines(upgraded) == []
        wait_for(lambda: healthz(api), 30, 0.2, "the upgraded daemon")
        assert "# kept across upgrades" in conf.read_text()
        assert (tmp_path / "data" / "mine").exists()

        out = run_bootstrap(env, "--uninstall").stdout
        assert not healthz(api)
        for path in records:
            assert not Path(path).exists(), f"{path} left behind by --uninstall"
        assert (tmp_path / "data" / "mine").exists(), "data is kept without --purge"
        assert "use --purge" in out
        assert units(systemd, "is-enabled", "nginx") == "enabled", "uninstall restores nginx"
        assert units(systemd, "is-enabled", "nats-server") == "enabled"
        log = (tmp_path / "data" / "bootstrap.log").read_text()
        assert log.count("=== ./bootstrap install") == 2
        assert "=== ./bootstrap uninstall" in log
    finally:
        stop_supervisor(tmp_path)


def test_uninstall_leaves_a_disabled_nginx_disabled(tmp_path: Path) -> None:
    """Only what install changed is restored: an admin's disabled nginx stays disabled.

    The source is a checkout owned by another user, as with `sudo ./bootstrap` from one's own
    clone (or Vagrant's /vagrant): git's ownership check must not stop the install."""
    env, api = scratch_env(tmp_path)
    systemd = unit_tree(tmp_path / "systemd", enabled=False)
    checkout = tmp_path / "someone" / "hyperdrive"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(checkout)], check=True, timeout=60)
    subprocess.run(["chown", "-R", "nobody", str(checkout.parent)], check=True, timeout=60)
    env["HYPERDRIVE_REMOTE"] = str(checkout)
    try:
        run_bootstrap(env)
        assert healthz(api)
        assert (tmp_path / "opt" / "src" / "bootstrap").is_file()
        out = run_bootstrap(env, "--uninstall", "--purge").stdout
        assert units(systemd, "is-enabled", "nginx") == "disabled"
        assert units(systemd, "is-enabled", "nats-server") == "disabled"
        assert "nginx.service" not in out
        assert "nats-server.service" not in out
        assert not (tmp_path / "data").exists()
    finally:
        stop_supervisor(tmp_path)
