"""Under a real systemd (PID 1 of a Debian container): `./bootstrap` installs hyperdrive.service,
a pushed app serves, and `systemctl restart hyperdrive` and an upgrade (`./bootstrap` again)
fail no request: nginx and the ship outlive the daemon (same pids), and the new daemon adopts
them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import wait_for
from tests.e2e.squadron import Prober, http_get
from tests.e2e.systemd_host import SystemdHost, systemd_host

pytestmark = [
    pytest.mark.root,
    pytest.mark.lxc,
    pytest.mark.nginx,
    pytest.mark.slow,
    pytest.mark.timeout(900),  # a fresh machine builds the base container first
]


PAGE = "served all along\n"


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SystemdHost]:
    """Installed with ./bootstrap as a user would, with one static app pushed over git+ssh."""
    with systemd_host(tmp_path_factory.mktemp("systemd")) as booted:
        out = booted.bootstrap("--admiral-key", "/root/admiral.pub")
        assert "system packages already installed" in out, out
        assert "started hyperdrive.service" in out, out
        assert booted.attach("systemctl", "is-active", "hyperdrive").stdout.strip() == "active"
        pushed = booted.push(booted.root / "site", "site", {"index.html": PAGE})
        assert "site deployed" in pushed, pushed
        yield booted


def restarted(host: SystemdHost, action: Callable[[], object], what: str) -> None:
    """Do `action`; the service's main pid changes and the daemon answers again."""
    before = host.main_pid()
    action()
    wait_for(lambda: host.main_pid() not in (0, before), 60, 0.2, f"a new daemon after {what}")
    wait_for(host.healthy, 60, 0.1, f"/healthz after {what}")


def test_restart_and_upgrade_fail_no_request(host: SystemdHost) -> None:
    assert http_get(80, "/site/", address=host.address) == (200, PAGE)
    nginx, ship = host.nginx_master(), host.status()["apps"][0]["ship"]
    ship_pid = host.ship_pid(ship)
    assert host.cgroup(nginx) == "/system.slice/hyperdrive-nginx.scope"
    assert host.cgroup(ship_pid) == f"/lxc.payload.{ship}"  # LXC's own, outside the service
    monitor = host.attach("pgrep", "-fx", f"\\[lxc monitor\\] /var/hyperdrive/containers {ship}")
    assert host.cgroup(int(monitor.stdout)) == f"/lxc.monitor.{ship}"

    with Prober(80, "/site/", address=host.address, limit=400) as client:
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


def test_a_killed_nginx_is_started_again_in_its_scope(host: SystemdHost) -> None:
    """SIGKILL of the master: the daemon sees it die and starts a new one in its scope (the
    orphaned workers let go first); a restart of the service then adopts that one."""
    killed = host.nginx_master()
    host.attach("kill", "-KILL", str(killed))
    serving = lambda: http_get(80, "/site/", address=host.address) == (200, PAGE)  # noqa: E731

    def replaced() -> bool:
        found = host.attach("cat", "/var/hyperdrive/nginx/run/nginx.pid", check=False)
        return found.stdout.strip() not in ("", str(killed)) and serving()

    wait_for(replaced, 30, 0.2, "the app through a new nginx")
    master = host.nginx_master()
    assert host.cgroup(master) == "/system.slice/hyperdrive-nginx.scope"
    restarted(host, lambda: host.attach("systemctl", "restart", "hyperdrive"), "a restart")
    wait_for(serving, 30, 0.2, "the app after the restart")
    assert host.nginx_master() == master, "the restart adopted the new nginx"
