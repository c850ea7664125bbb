"""`git push hyperdrive master` and headquarters pushes, end to end, with the real git and ssh
clients against the real daemon, LXC and nginx."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon, wait_for
from tests.e2e.squadron import Admiral, admiral_squadron, http_get, keygen

pytestmark = [pytest.mark.root, pytest.mark.lxc, pytest.mark.nginx, pytest.mark.slow]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Daemon, Admiral]]:
    with admiral_squadron(tmp_path) as pair:
        yield pair


def test_git_push_deploys_and_streams_the_deploy(
    fleet: tuple[Daemon, Admiral], tmp_path: Path
) -> None:
    d, admiral = fleet
    work = admiral.working_copy(tmp_path / "site", "site")
    admiral.commit(work, {"index.html": "pushed over ssh\n"})
    pushed = admiral.git("push", "hyperdrive", "master", cwd=work)
    output = pushed.stdout + pushed.stderr
    assert "remote:" in output
    assert "site deployed" in output, output
    assert "/site/" in output
    assert http_get(d.http_port, "/site/") == (200, "pushed over ssh\n")

    admiral.commit(work, {"index.html": "second\n"})
    pushed = admiral.git("push", "-o", "nowait", "hyperdrive", "master", cwd=work)
    assert "site deployed" not in pushed.stdout + pushed.stderr
    wait_for(
        lambda: http_get(d.http_port, "/site/") == (200, "second\n"),
        60,
        0.2,
        "the nowait push to be served",
    )

    status = admiral.ssh("status")
    assert "site" in status.stdout
    logs = admiral.ssh("logs", "site")
    assert "TrafficSwapped" in logs.stdout or "traffic:" in logs.stdout
    unknown = admiral.ssh("reboot", check=False)
    assert unknown.returncode == 1
    assert "unknown command" in unknown.stderr


def test_ssh_deploy_and_rollback(fleet: tuple[Daemon, Admiral], tmp_path: Path) -> None:
    d, admiral = fleet
    work = admiral.working_copy(tmp_path / "site", "site")
    admiral.commit(work, {"index.html": "one\n"})
    admiral.git("push", "hyperdrive", "master", cwd=work)
    admiral.commit(work, {"index.html": "two\n"})
    admiral.git("push", "hyperdrive", "master", cwd=work)
    assert http_get(d.http_port, "/site/") == (200, "two\n")

    rolled = admiral.ssh("rollback", "site")
    assert rolled.returncode == 0, rolled.stdout
    said = rolled.stdout.splitlines()
    back = next(i for i, line in enumerate(said) if "site rolled back to" in line)
    assert any("is live at" in line for line in said[back + 1 :]), "said before the outcome"
    assert http_get(d.http_port, "/site/") == (200, "one\n")

    redeployed = d.hd("deploy", "site")
    assert redeployed.returncode == 0
    assert http_get(d.http_port, "/site/") == (200, "two\n")


def test_unknown_key_is_refused(fleet: tuple[Daemon, Admiral], tmp_path: Path) -> None:
    d, _ = fleet
    stranger = Admiral(d, keygen(tmp_path / "stranger"))
    result = stranger.ssh("status", check=False)
    assert result.returncode == 255
    assert "Permission denied" in result.stderr


def hq_files(admiral_pub: str, healthcheck: str = "/ 5") -> dict[str, str]:
    return {
        "authorized_keys/alice.pub": admiral_pub,
        "site/orders": (
            f"# the site\nexport PORT=8080\nexport GREETING=hello\nhealthcheck {healthcheck}\n"
        ),
    }


def test_headquarters_push_orders_apps_and_admirals(
    fleet: tuple[Daemon, Admiral], tmp_path: Path
) -> None:
    d, admiral = fleet
    work = admiral.working_copy(tmp_path / "site", "site")
    admiral.commit(work, {"index.html": "ordered\n"})
    admiral.git("push", "-o", "nowait", "hyperdrive", "master", cwd=work)

    hq = admiral.working_copy(tmp_path / "hq", "headquarters")
    pub = Path(f"{admiral.key}.pub").read_text()
    admiral.commit(hq, hq_files(pub))
    pushed = admiral.git("push", "hyperdrive", "master", cwd=hq)
    output = pushed.stdout + pushed.stderr
    assert "site: deploy" in output, output
    d.wait_event("AppOrdered", app="site")
    admirals = d.wait_event("AdmiralsChanged")
    assert admirals["admirals"] == ["alice"]
    assert (d.var / "public_keys" / "alice.pub").exists()

    def served_on_8080() -> bool:
        status = json.loads(d.hd("status", "--json").stdout)
        row = next((a for a in status["apps"] if a["app"] == "site"), None)
        if not (row and "PORT 8080" in row["orders"] and row["ship"]):
            return False
        env = d.data / "lxc" / row["ship"] / "run" / "env"  # the live ship's, not an older one's
        return env.is_file() and "PORT=8080" in env.read_text()

    wait_for(served_on_8080, 90, 0.3, "site redeployed on PORT 8080")
    wait_for(lambda: http_get(d.http_port, "/site/") == (200, "ordered\n"), 60, 0.3, "site served")
    status = json.loads(d.hd("status", "--json").stdout)
    live = next(a for a in status["apps"] if a["app"] == "site")["ship"]
    assert "GREETING=hello" in (d.data / "lxc" / live / "run" / "env").read_text()


def test_bad_headquarters_push_is_refused_with_file_and_line(
    fleet: tuple[Daemon, Admiral], tmp_path: Path
) -> None:
    d, admiral = fleet
    hq = admiral.working_copy(tmp_path / "hq", "headquarters")
    pub = Path(f"{admiral.key}.pub").read_text()
    files = hq_files(pub)
    files["site/orders"] += "launch missiles\n"
    files["other/orders"] = "export PORT=99999\n"
    admiral.commit(hq, files)
    pushed = admiral.git("push", "hyperdrive", "master", cwd=hq, check=False)
    output = pushed.stdout + pushed.stderr
    assert pushed.returncode != 0
    assert "site/orders:5:" in output, output
    assert "other/orders:1:" in output
    refs = subprocess.run(
        ["git", "--git-dir", str(d.data / "git" / "headquarters.git"), "for-each-ref"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert refs.stdout.strip() == "", "a refused push must not move any ref"


def test_first_start_clone_headquarters_add_a_key_push_then_push_main(
    fleet: tuple[Daemon, Admiral], tmp_path: Path
) -> None:
    """The README's first steps on a squadron that just started: no restart anywhere."""
    d, lead = fleet
    hq = tmp_path / "hq"
    cloned = lead.git("clone", lead.remote("headquarters"), str(hq), cwd=tmp_path)
    assert "cloned an empty repository" in cloned.stderr
    alice = Admiral(d, keygen(tmp_path / "alice"))
    alice_pub = Path(f"{alice.key}.pub").read_text()
    lead.commit(hq, {"authorized_keys/alice.pub": alice_pub, "web/orders": "healthcheck / 5\n"})
    pushed = lead.git("push", cwd=hq)  # a plain `git push`: the clone tracks HQ's branch
    assert "headquarters accepted" in pushed.stderr, pushed.stderr
    d.wait_event("AdmiralsChanged", admirals=["alice"])
    alice.ssh("status")

    work = tmp_path / "web"
    work.mkdir()
    alice.git("init", "-q", "-b", "main", cwd=work)
    alice.git("remote", "add", "hyperdrive", alice.remote("web"), cwd=work)
    alice.commit(work, {"index.html": "on main\n"})
    pushed = alice.git("push", "hyperdrive", "main", cwd=work)
    assert "web deployed" in pushed.stderr, pushed.stderr
    assert http_get(d.http_port, "/web/") == (200, "on main\n")

    alice.git("checkout", "-q", "-b", "feature", cwd=work)
    alice.commit(work, {"index.html": "on feature\n"})
    other = alice.git("push", "hyperdrive", "feature", cwd=work).stderr
    assert "feature stored, not deployed: web deploys main" in other, other
    assert "`git push hyperdrive feature:main`" in other
    assert "headquarters' web/orders: `branch feature`" in other
    assert http_get(d.http_port, "/web/") == (200, "on main\n")

    lead.commit(hq, {"web/orders": "healthcheck / 5\nbranch feature\n"})
    pushed = lead.git("push", cwd=hq)
    assert "web: redeploy (branch (default)→feature)" in pushed.stderr, pushed.stderr
    wait_for(
        lambda: http_get(d.http_port, "/web/") == (200, "on feature\n"),
        90,
        0.2,
        f"web to deploy its orders' branch; log: {d.log()}",
    )
