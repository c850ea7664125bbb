"""Under a real systemd (PID 1 of a Debian container): `./bootstrap` installs hyperdrive.service,
a pushed app serves, and `systemctl restart hyperdrive` and an upgrade (`./bootstrap` again)
fail no request: nginx and the ship outlive the daemon (same pids), and the new daemon adopts
them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.e2e.systemd_host import Client, SystemdHost, get, systemd_host

pytestmark = [
    pytest.mark.root,
    pytest.mark.lxc,
    pytest.mark.nginx,
    pytest.mark.slow,
    pytest.mark.timeout(900),  # a fresh machine builds the base container first
]


@pytest.fixture
def host(tmp_path: Path) -> Iterator[SystemdHost]:
    with systemd_host(tmp_path) as booted:
        yield booted


def installed(host: SystemdHost) -> None:
    """Install with ./bootstrap as a user would, and push one static app over git+ssh."""
    out = host.bootstrap("--admiral-key", "/root/admiral.pub")
    assert "system packages already installed" in out, out
    assert "started hyperdrive.service" in out, out
    assert host.attach("systemctl", "is-active", "hyperdrive").stdout.strip() == "active"
    pushed = host.push(host.root / "site", "site", {"index.html": "served all along\n"})
    assert "site deployed" in pushed, pushed


def restarted(host: SystemdHost, action: Callable[[], object], what: str) -> None:
    """Do `action`; the service's main pid changes and the daemon answers again."""
    before = host.main_pid()
    action()
    wait_for(lambda: host.main_pid() not in (0, before), 60, 0.2, f"a new daemon after {what}")
    wait_for(host.healthy, 60, 0.1, f"/healthz after {what}")


def test_restart_and_upgrade_fail_no_request(host: SystemdHost) -> None:
    installed(host)
    url = host.url(80, "/site/")
    assert get(url) == (200, "served all along\n")
    nginx, ship = host.nginx_master(), host.status()["apps"][0]["ship"]
    ship_pid = host.ship_pid(ship)
    assert host.cgroup(nginx) == "/system.slice/hyperdrive-nginx.scope"
    assert "hyperdrive.service" not in host.cgroup(ship_pid)

    with Client(url) as client:
        time.sleep(1)
        restarted(host, lambda: host.attach("systemctl", "restart", "hyperdrive"), "a restart")
        host.attach("touch", "/root/hyperdrive/UPGRADED")  # a change the upgrade must bring
        restarted(host, host.bootstrap, "an upgrade")
        time.sleep(1)

    assert client.failures == [], client.failures[:10]
    assert client.served > 50, client.served
    assert host.attach("test", "-e", "/opt/hyperdrive/src/UPGRADED", check=False).returncode == 0
    assert host.nginx_master() == nginx, "nginx was restarted"
    assert host.ship_pid(ship) == ship_pid, "the ship was restarted"
    assert host.status()["apps"][0]["ship"] == ship
    assert host.attach("systemctl", "is-active", "hyperdrive").stdout.strip() == "active"
