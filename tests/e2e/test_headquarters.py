"""Headquarters end to end: a remote HQ over file://, admirals swapped live, pushes refused at
pre-receive, squadron-wide includes, and an HQ that retires every app — with the real daemon,
git and ssh clients, LXC (busybox ships) and nginx."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, wait_for
from tests.e2e.squadron import (
    Admiral,
    admiral_squadron,
    git,
    http_get,
    keygen,
)

pytestmark = [pytest.mark.root, pytest.mark.lxc, pytest.mark.nginx, pytest.mark.slow]

STATIC = "healthcheck / 5\n"


class Remote:
    """A bare repo on this machine standing in for a remote (GitHub and co.), fed from a
    working copy; reached over file:// so no network is involved."""

    def __init__(self, root: Path, branch: str = "main") -> None:
        self.work, self.bare, self.branch = root / "work", root / "repo.git", branch
        self.work.mkdir(parents=True)
        git("init", "-q", "--bare", "-b", branch, str(self.bare), cwd=root)
        git("init", "-q", "-b", branch, cwd=self.work)

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    def commit(self, files: dict[str, str | None]) -> str:
        for name, text in files.items():
            path = self.work / name
            if text is None:
                path.unlink()
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "-m", "change", cwd=self.work)
        git("push", "-q", str(self.bare), f"HEAD:{self.branch}", cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Daemon, Admiral]]:
    """A squadron whose bootstrap admiral is the lead's key."""
    with admiral_squadron(tmp_path) as pair:
        yield pair


def pub(admiral: Admiral) -> str:
    return Path(f"{admiral.key}.pub").read_text()


def answers(d: Daemon, app: str) -> tuple[int, str]:
    """What nginx says for /app/; (0, why) while nothing listens yet."""
    try:
        return http_get(d.http_port, f"/{app}/")
    except OSError as err:
        return 0, str(err)


def serves(d: Daemon, app: str, text: str, timeout: float = 60) -> None:
    wait_for(
        lambda: answers(d, app) == (200, text),
        timeout,
        0.2,
        f"/{app}/ to serve {text!r}; log: {d.log()}",
    )


def status_rows(d: Daemon) -> dict[str, dict[str, Any]]:
    status = json.loads(d.hd("status", "--json").stdout)
    return {row["app"]: row for row in status["apps"]}


def events_after(d: Daemon, mark: int, name: str, **fields: object) -> list[dict[str, Any]]:
    """Events named `name` (with these fields) appended after the first `mark` events."""
    return [
        e
        for e in d.events()[mark:]
        if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())
    ]


def push(admiral: Admiral, work: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return admiral.git("push", "hyperdrive", "HEAD:master", cwd=work, check=check)


# ─── a remote headquarters ───────────────────────────────────────────────────


def test_remote_headquarters_set_sync_reject_and_unreachable(
    fleet: tuple[Daemon, Admiral], tmp_path: Path
) -> None:
    d, lead = fleet
    site, docs = Remote(tmp_path / "site"), Remote(tmp_path / "docs", branch="trunk")
    site.commit({"index.html": "site from the remote\n"})
    docs.commit({"index.html": "docs from the remote\n"})
    hq = Remote(tmp_path / "hq")
    hq.commit(
        {
            "authorized_keys/lead.pub": pub(lead),
            "site/orders": f"# no branch: the remote's default\nautodeploy {site.url}\n{STATIC}",
        }
    )

    set_sync = d.hd("headquarters", "set", f"{hq.url}#main", "--sync", timeout=60)
    assert "site: deploy" in set_sync.stdout, set_sync.stdout
    assert f"HYPERDRIVE_HEADQUARTERS={hq.url}#main" in (d.root / "main.conf").read_text()
    serves(d, "site", "site from the remote\n")
    assert (d.data / "git" / "mirrors" / "site.git").is_dir()
    assert (d.data / "headquarters" / "site" / "orders").is_file()

    # the next HQ commit: site's orders go bad, docs is ordered; `hd headquarters sync` reads it
    hq.commit(
        {
            "site/orders": f"autodeploy {site.url}\n{STATIC}launch missiles\n",
            "docs/orders": f"autodeploy {docs.url} trunk\n{STATIC}",
        }
    )
    synced = d.hd("headquarters", "sync", timeout=60)
    assert "docs: deploy" in synced.stdout
    assert "site: rejected, keeps its current ship (site/orders:3:" in synced.stdout
    rejected = d.wait_event("OrdersRejected", app="site")
    assert (rejected["file"], rejected["line"]) == ("site/orders", 3)
    assert "unknown directive 'launch'" in rejected["message"]
    serves(d, "docs", "docs from the remote\n")
    assert http_get(d.http_port, "/site/") == (200, "site from the remote\n")
    rows = status_rows(d)
    assert "site/orders:3" in rows["site"]["orders"], rows["site"]
    assert rows["site"]["ship"], "site keeps its ship"
    assert f"{docs.url}#trunk, PORT 3000" in rows["docs"]["orders"]
    shown = d.hd("status").stdout  # for people, 80 columns wide (no TTY): nothing is cut
    for row in rows.values():
        assert f"\n{row['app']}  {row['url']}\n" in shown, shown
        assert f"ship         {row['ship']}" in shown, shown
        assert f"since        {row['since']}" in shown, shown
    assert "site/orders:3:" in shown, "the rejection shows in site's orders line"

    # a remote that cannot be fetched: an event, and the last good HQ stays in force
    gone = d.hd("headquarters", "set", f"file://{tmp_path}/nowhere.git#main", "--sync", check=False)
    assert gone.returncode != 0
    failed = d.wait_event("HeadquartersSyncFailed")
    assert "last good headquarters stays in force" in failed["message"]
    assert "nowhere.git" in failed["message"]
    assert http_get(d.http_port, "/site/") == (200, "site from the remote\n")
    assert http_get(d.http_port, "/docs/") == (200, "docs from the remote\n")
    assert not events_after(d, 0, "AppRetired")
    assert set(status_rows(d)) == {"site", "docs"}


# ─── admirals ────────────────────────────────────────────────────────────────


def test_admiral_keys_are_swapped_live_and_open_sessions_survive(
    fleet: tuple[Daemon, Admiral], tmp_path: Path
) -> None:
    d, lead = fleet
    alice, bob = Admiral(d, keygen(tmp_path / "alice")), Admiral(d, keygen(tmp_path / "bob"))
    hq = lead.working_copy(tmp_path / "hq", "headquarters")
    lead.commit(hq, {"authorized_keys/lead.pub": pub(lead), "authorized_keys/bob.pub": pub(bob)})
    push(lead, hq)
    assert alice.ssh("status", check=False).returncode == 255
    bob.ssh("status")

    follow_out = tmp_path / "bob-follows.log"
    with follow_out.open("w") as out:
        session = subprocess.Popen(
            [*shlex.split(bob.ssh_command()), "-p", str(d.ssh_port), "git@127.0.0.1", "logs", "-f"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: follow_out.stat().st_size > 0, 10, 0.05, "bob's logs -f to stream")
        (hq / "authorized_keys" / "bob.pub").unlink()
        lead.commit(hq, {"authorized_keys/alice.pub": pub(alice)})
        pushed = push(lead, hq)
        ended = time.monotonic()
        assert "headquarters accepted" in pushed.stderr, pushed.stderr

        in_time = False
        while not in_time and time.monotonic() < ended + 1.0:
            in_time = alice.ssh("status", check=False).returncode == 0
        assert in_time, "alice could not ssh within 1 s of the push"
        time.sleep(max(0.0, ended + 1.0 - time.monotonic()))
        refused = bob.ssh("status", check=False)
        assert refused.returncode == 255
        assert "Permission denied" in refused.stderr

        assert session.poll() is None, "bob's open session was cut"
        d.hd("headquarters", "sync")  # a fresh event after bob's removal reaches his session
        synced = f"headquarters {git('rev-parse', 'HEAD', cwd=hq)[:7]}:"
        wait_for(
            lambda: follow_out.read_text().count(synced) >= 2,
            10,
            0.05,
            f"the open session to keep streaming: {follow_out.read_text()}",
        )
        assert session.poll() is None
    finally:
        session.terminate()
        session.wait(10)
    assert sorted(p.name for p in (d.var / "public_keys").iterdir()) == ["alice.pub", "lead.pub"]


def test_bad_key_files_unknown_hulls_and_a_lockout_are_refused_at_push(
    fleet: tuple[Daemon, Admiral], tmp_path: Path
) -> None:
    d, lead = fleet
    hq = lead.working_copy(tmp_path / "hq", "headquarters")
    lead.commit(hq, {"authorized_keys/lead.pub": pub(lead), "site/orders": STATIC})
    push(lead, hq)
    hosted = d.data / "git" / "headquarters.git"
    accepted = git("--git-dir", str(hosted), "rev-parse", "master", cwd=tmp_path)

    private = lead.key.read_text()
    lead.commit(
        hq,
        {
            "authorized_keys/carol.pub": "carol's key goes here\n",
            "authorized_keys/oops.pub": private,
            "api/orders": STATIC + "hull ubuntu\n",  # a hull Hyperdrive cannot build
            "docs/orders": "hull ../x\n",
        },
    )
    refused = push(lead, hq, check=False)
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0
    assert "headquarters refused, nothing changed" in output
    assert "authorized_keys/carol.pub: line 1 is not an OpenSSH public key" in output
    assert "authorized_keys/oops.pub: holds a PRIVATE key: it was not loaded" in output
    assert "api/orders:2: unknown hull 'ubuntu'; known: debian, debian-13, busybox" in output
    assert "docs/orders:1: invalid hull name '../x'" in output
    assert "PRIVATE KEY-----" not in output, "the private key is never echoed"
    assert git("--git-dir", str(hosted), "rev-parse", "master", cwd=tmp_path) == accepted
    assert not (d.var / "public_keys" / "oops.pub").exists()

    # zero HQ keys while a bootstrap key exists: allowed, the bootstrap key keeps working
    git("reset", "-q", "--hard", accepted, cwd=hq)
    (hq / "authorized_keys" / "lead.pub").unlink()
    lead.commit(hq, {})
    push(lead, hq)
    assert d.wait_event("AdmiralsChanged", admirals=[])
    lead.ssh("status")

    mark = len(d.events())
    lead.commit(hq, {"authorized_keys/lead.pub": pub(lead)})
    push(lead, hq)
    assert events_after(d, mark, "AdmiralsChanged", admirals=["lead"])

    # the bootstrap file emptied (that applies at once): a push leaving zero HQ keys would
    # lock everyone out
    (d.root / "admirals.pub").write_text("")
    d.wait_event("AdmiralsChanged", keys=0)
    (hq / "authorized_keys" / "lead.pub").unlink()
    lead.commit(hq, {"web/orders": STATIC})
    locked = push(lead, hq, check=False)
    assert locked.returncode != 0
    assert "refused so nobody is locked out" in locked.stdout + locked.stderr
    lead.ssh("status")  # lead's HQ key is still in force


# ─── includes, unchanged apps, and an HQ without apps ────────────────────────


def live_env(d: Daemon, app: str) -> str:
    ship = status_rows(d)[app]["ship"]
    return (d.data / "lxc" / ship / "run" / "env").read_text()


def hq_deploy_finished(d: Daemon, mark: int, app: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        for event in events_after(d, mark, "DeployFinished", app=app):
            if str(event.get("deploy", "")).startswith("hq-"):
                return event
        return None

    return wait_for(found, 60, 0.1, lambda: f"an HQ redeploy of {app}; log: {d.log()}")


def test_includes_redeploy_only_affected_apps_and_an_empty_hq_retires_all(
    fleet: tuple[Daemon, Admiral], tmp_path: Path
) -> None:
    d, lead = fleet
    includes = d.data / "includes"
    includes.mkdir(parents=True, exist_ok=True)
    (includes / "shared.env").write_text("GREETING=hello\nDB_PASSWORD='s3cret'\n")
    hq = lead.working_copy(tmp_path / "hq", "headquarters")
    lead.commit(
        hq,
        {
            "authorized_keys/lead.pub": pub(lead),
            "own/orders": f"export GREETING=mine\n{STATIC}",
            "plain/orders": STATIC,
        },
    )
    push(lead, hq)
    for app in ("own", "plain"):
        work = lead.working_copy(tmp_path / app, app)
        lead.commit(work, {"index.html": f"{app}\n"})
        push(lead, work)
        serves(d, app, f"{app}\n")
    assert "export GREETING=mine" in live_env(d, "own"), "orders win over includes"
    assert "export GREETING=hello" in live_env(d, "plain")
    assert "export DB_PASSWORD=s3cret" in live_env(d, "own")

    mark = len(d.events())
    (includes / "shared.env").write_text("GREETING=goodbye\nDB_PASSWORD='s3cret'\n")
    hq_deploy_finished(d, mark, "plain")
    assert "export GREETING=goodbye" in live_env(d, "plain")
    assert "export GREETING=mine" in live_env(d, "own")
    assert not events_after(d, mark, "DeployQueued", app="own"), "own's env did not change"

    mark = len(d.events())
    lead.commit(hq, {"plain/orders": f"export COLOUR=blue\n{STATIC}"})
    pushed = push(lead, hq)
    assert "own: unchanged" in pushed.stderr
    assert "plain: redeploy (COLOUR added)" in pushed.stderr
    hq_deploy_finished(d, mark, "plain")
    assert "export COLOUR=blue" in live_env(d, "plain")
    assert not events_after(d, mark, "DeployQueued", app="own"), "an unchanged app is left alone"

    mark = len(d.events())
    for app in ("own", "plain"):
        (hq / app / "orders").unlink()
    lead.commit(hq, {})
    pushed = push(lead, hq)
    assert "own: retire" in pushed.stderr
    for app in ("own", "plain"):
        d.wait_event("AppRetired", timeout=30, app=app)
    assert len(events_after(d, mark, "AppRetired")) == 2
    assert http_get(d.http_port, "/own/")[0] == 404
    assert http_get(d.http_port, "/plain/")[0] == 404
    assert status_rows(d) == {}
