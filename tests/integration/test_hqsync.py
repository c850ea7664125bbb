"""HeadquartersSync against real git repos: hosted HQ commits, a remote HQ over file://, the
plan's events, the live key ring, `$VAR/public_keys` and the durable deploy/retire triggers.

No LXC, no daemon: the handler is built with a real KeyRing, FileSpool and Fleet and a tiny
stand-in for the bus Context that records what the handler emits.
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import asyncssh
import pytest

from hyperdrive.access import Identity
from hyperdrive.config import Config
from hyperdrive.keyring import KeyRing
from hyperdrive.pipeline import events as ev
from hyperdrive.pipeline.bus import FAILED, FINISHED
from hyperdrive.pipeline.commands import SyncHeadquarters
from hyperdrive.pipeline.fleet import Fleet
from hyperdrive.pipeline.hqsync import HeadquartersSync
from hyperdrive.spool import FileSpool
from hyperdrive.triggers import Trigger
from tests.integration.git_fixtures import require

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "Admiral",
    "GIT_AUTHOR_EMAIL": "admiral@example.invalid",
    "GIT_COMMITTER_NAME": "Admiral",
    "GIT_COMMITTER_EMAIL": "admiral@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(*args: str, cwd: Path) -> str:
    result = subprocess.run(
        ["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"git {args}: {result.stderr}"
    return result.stdout.strip()


def new_key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


def pub(key: asyncssh.SSHKey) -> str:
    return key.export_public_key().decode()


class Recorder:
    """Stands in for the bus Context: keeps every event the handler emits."""

    def __init__(self) -> None:
        self.events: list[ev.Event] = []

    def emit(self, event: ev.Event) -> None:
        self.events.append(event)

    def point_of_no_return(self) -> None:
        """Only deploys have one."""

    def named(self, name: str) -> list[ev.Event]:
        return [e for e in self.events if e.name == name]

    def apps(self, name: str) -> set[str | None]:
        return {e.app for e in self.named(name)}


@dataclass
class HqRepo:
    """A working copy whose commits are pushed to a bare repo (hosted HQ or a 'remote')."""

    work: Path
    bare: Path
    branch: str = "master"
    files: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.bare.parent.mkdir(parents=True, exist_ok=True)
        git("init", "-q", "--bare", "-b", self.branch, str(self.bare), cwd=self.bare.parent)
        self.work.mkdir(parents=True)
        git("init", "-q", "-b", self.branch, cwd=self.work)

    def commit(self, files: dict[str, str | None]) -> str:
        """Write (or, for None, delete) files, commit everything and push; the new sha."""
        for name, text in files.items():
            path = self.work / name
            if text is None:
                path.unlink()
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "--allow-empty", "-m", "hq", cwd=self.work)
        git("push", "-q", "-f", str(self.bare), f"HEAD:refs/heads/{self.branch}", cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)


@dataclass
class Rig:
    config: Config
    fleet: Fleet
    keyring: KeyRing
    spool: FileSpool
    hq: HeadquartersSync
    hosted_with_commits: set[str]

    async def sync(self, sha: str | None = None) -> tuple[str, Recorder]:
        ctx = Recorder()
        outcome = await self.hq.sync(
            SyncHeadquarters(deploy="hq-test", sha=sha),
            ctx,  # type: ignore[arg-type]
        )
        return outcome, ctx

    def queued(self) -> dict[str, Trigger]:
        """Pending triggers by id (nothing consumes them here)."""
        return {t.id: t for t in self.spool.pending()}

    def restarted(self) -> HeadquartersSync:
        """A fresh handler over the same folders, as after a daemon restart."""
        fleet, keyring = Fleet(self.config.hull), KeyRing()

        async def has_commits(app: str) -> bool:
            return app in self.hosted_with_commits

        return HeadquartersSync(self.config, fleet, keyring, self.spool, has_commits)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    require("git")
    config = Config(
        data=tmp_path / "data",
        var=tmp_path / "var",
        hull="busybox",
        admiral_keys=tmp_path / "admirals.pub",
    )
    fleet, keyring = Fleet(config.hull), KeyRing()
    spool = FileSpool(config.spool_dir)
    await spool.open()
    hosted: set[str] = set()

    async def has_commits(app: str) -> bool:
        return app in hosted

    hq = HeadquartersSync(config, fleet, keyring, spool, has_commits)
    try:
        yield Rig(config, fleet, keyring, spool, hq, hosted)
    finally:
        await spool.close()


def hosted_hq(rig: Rig, tmp_path: Path) -> HqRepo:
    return HqRepo(tmp_path / "hq-work", rig.config.git_dir / "headquarters.git")


def deploys(rig: Rig) -> dict[str, str]:
    """app → trigger id of every pending deploy trigger."""
    return {t.app or "": t.id for t in rig.queued().values() if t.kind == "deploy"}


def retires(rig: Rig) -> set[str | None]:
    return {t.app for t in rig.queued().values() if t.kind == "retire"}


async def test_hosted_hq_orders_apps_admirals_and_queues_deploys(rig: Rig, tmp_path: Path) -> None:
    alice, bob = new_key(), new_key()
    repo = hosted_hq(rig, tmp_path)
    rig.hosted_with_commits.add("web")
    sha = repo.commit(
        {
            "authorized_keys/alice.pub": pub(alice),
            "authorized_keys/bob.pub": pub(bob),
            "web/orders": "export PORT=8080\n",
            "api/orders": "autodeploy file:///srv/api.git#main\nexport PORT=3000\n",
            "idle/orders": "# hosted here, nothing pushed yet\n",
        }
    )
    outcome, ctx = await rig.sync()
    assert outcome == FINISHED
    assert ctx.apps("AppOrdered") == {"web", "api", "idle"}
    synced = ctx.named("HeadquartersSynced")[0]
    assert synced.sha == sha
    assert "web: deploy" in synced.message
    (admirals,) = ctx.named("AdmiralsChanged")
    assert isinstance(admirals, ev.AdmiralsChanged)
    assert admirals.admirals == ("alice", "bob")
    assert rig.keyring.admiral_for(alice) == "alice"
    assert rig.keyring.admiral_for(bob) == "bob"
    assert sorted(p.name for p in (rig.config.var / "public_keys").iterdir()) == [
        "alice.pub",
        "bob.pub",
    ]
    # idle is hosted here with no commits yet: nothing to deploy until its first push
    assert set(deploys(rig)) == {"web", "api"}
    assert all(t.data == {"source": "hq"} for t in rig.queued().values())
    assert (rig.config.data / "headquarters" / "web" / "orders").read_text() == "export PORT=8080\n"
    assert rig.fleet.orders("web").port == 8080
    assert rig.fleet.hq_sha == sha


async def test_a_change_redeploys_changed_apps_only_and_retires_removed_ones(
    rig: Rig, tmp_path: Path
) -> None:
    repo = hosted_hq(rig, tmp_path)
    rig.hosted_with_commits.update({"web", "api", "old"})
    key = pub(new_key())
    repo.commit(
        {
            "authorized_keys/alice.pub": key,
            "web/orders": "export PORT=8080\n",
            "api/orders": "export PORT=3000\n",
            "old/orders": "\n",
        }
    )
    await rig.sync()
    first = deploys(rig)
    repo.commit({"api/orders": "export PORT=3001\n", "old/orders": None})
    _, ctx = await rig.sync()
    (changed,) = ctx.named("OrdersChanged")
    assert changed.app == "api"
    assert "PORT 3000→3001" in changed.message
    synced = ctx.named("HeadquartersSynced")[0].message
    assert "web: unchanged" in synced
    assert "old: retire" in synced
    now = deploys(rig)
    assert now["web"] == first["web"], "an unchanged app gets no new deploy"
    assert now["api"] != first["api"]
    assert retires(rig) == {"old"}
    assert ctx.named("AppOrdered") == []


async def test_rejected_orders_keep_the_last_good_ones_and_the_rest_proceeds(
    rig: Rig, tmp_path: Path
) -> None:
    repo = hosted_hq(rig, tmp_path)
    rig.hosted_with_commits.update({"web", "api"})
    repo.commit(
        {
            "authorized_keys/alice.pub": pub(new_key()),
            "web/orders": "export PORT=8080\n",
            "api/orders": "export PORT=3000\n",
        }
    )
    await rig.sync()
    before = deploys(rig)
    repo.commit(
        {
            "web/orders": "export PORT=8080\nlaunch missiles\n",
            "api/orders": "export PORT=3001\n",
            "new/orders": "export PORT=70000\n",
        }
    )
    _, ctx = await rig.sync()
    rejected = {e.app: e for e in ctx.named("OrdersRejected")}
    assert set(rejected) == {"web", "new"}
    web = rejected["web"]
    assert isinstance(web, ev.OrdersRejected)
    assert (web.file, web.line) == ("web/orders", 2)
    assert "web/orders:2: unknown directive 'launch'" in web.message
    assert ctx.apps("OrdersChanged") == {"api"}
    assert rig.fleet.orders("web").port == 8080, "web keeps its last good orders"
    assert rig.fleet.rejected("web") is not None
    assert "REJECTED" in rig.fleet.summary("web")["orders"]
    assert "REJECTED" in rig.fleet.summary("new")["orders"]
    assert rig.fleet.names() == ["api", "new", "web"]
    assert deploys(rig)["web"] == before["web"]
    assert deploys(rig)["api"] != before["api"]
    assert "new" not in deploys(rig)
    assert retires(rig) == set(), "a rejected app is not a removed app"

    repo.commit({"web/orders": "export PORT=8081\n"})
    _, ctx = await rig.sync()
    assert ctx.apps("OrdersChanged") == {"web"}
    assert rig.fleet.rejected("web") is None
    assert deploys(rig)["web"] != before["web"]


async def test_an_includes_change_redeploys_the_apps_it_affects_at_the_same_hq_commit(
    rig: Rig, tmp_path: Path
) -> None:
    includes = rig.config.data / "includes"
    includes.mkdir(parents=True)
    (includes / "secrets.env").write_text("DB_PASSWORD=one\nexport REGION='eu'\n")
    repo = hosted_hq(rig, tmp_path)
    rig.hosted_with_commits.update({"web", "api"})
    sha = repo.commit(
        {
            "authorized_keys/alice.pub": pub(new_key()),
            "web/orders": "export PORT=8080\n",
            "api/orders": "export DB_PASSWORD=own\n",
        }
    )
    await rig.sync()
    assert rig.fleet.env("web")["DB_PASSWORD"] == "one"
    assert rig.fleet.env("web")["REGION"] == "eu"
    assert rig.fleet.env("api")["DB_PASSWORD"] == "own", "orders win over includes"
    before = deploys(rig)

    (includes / "secrets.env").write_text("DB_PASSWORD=two\nexport REGION='eu'\n")
    _, ctx = await rig.sync()  # what the includes watch queues: a sync at the same commit
    assert ctx.named("HeadquartersSynced")[0].sha == sha
    assert ctx.apps("OrdersChanged") == {"web"}
    assert "DB_PASSWORD changed" in ctx.named("OrdersChanged")[0].message
    assert "two" not in ctx.named("OrdersChanged")[0].message, "env values are never shown"
    after = deploys(rig)
    assert after["web"] != before["web"], "a new deploy trigger, not one deduplicated away"
    assert after["api"] == before["api"]


async def test_includes_reach_pushed_apps_whether_or_not_hq_has_a_commit(
    rig: Rig, tmp_path: Path
) -> None:
    """Push-only users: an app pushed here that HQ does not order still gets the includes,
    and an includes change redeploys it (a running ship), with HQ empty or not."""
    includes = rig.config.data / "includes"
    includes.mkdir(parents=True)
    (includes / "app.env").write_text("GREETING=hello\n")
    running = ["pushed"]
    hq = HeadquartersSync(
        rig.config, rig.fleet, rig.keyring, rig.spool, rig.hq.has_commits, running=lambda: running
    )
    await hq.load()  # the start of a squadron whose HQ has no commit
    assert rig.fleet.env("pushed")["GREETING"] == "hello"

    (includes / "app.env").write_text("GREETING=goodbye\n")
    ctx = Recorder()
    assert await hq.sync(SyncHeadquarters(deploy="includes-1"), ctx) == FINISHED  # type: ignore[arg-type]
    assert rig.fleet.env("pushed")["GREETING"] == "goodbye"
    assert ctx.apps("OrdersChanged") == {"pushed"}
    assert "GREETING changed" in ctx.named("HeadquartersSynced")[0].message
    (queued,) = [t for t in rig.queued().values() if t.app == "pushed"]
    assert queued.kind == "deploy"
    await hq.sync(SyncHeadquarters(deploy="includes-1"), Recorder())  # type: ignore[arg-type]
    assert len(rig.queued()) == 1, "a replayed sync queues no second deploy"

    repo = hosted_hq(rig, tmp_path)
    repo.commit({"authorized_keys/alice.pub": pub(new_key()), "web/orders": "export PORT=8080\n"})
    (includes / "app.env").write_text("GREETING=again\n")
    ctx = Recorder()
    await hq.sync(SyncHeadquarters(deploy="hq-2"), ctx)  # type: ignore[arg-type]
    assert ctx.apps("OrdersChanged") == {"pushed"}
    assert len([t for t in rig.queued().values() if t.app == "pushed"]) == 2


async def test_the_same_sync_twice_queues_each_deploy_once(rig: Rig, tmp_path: Path) -> None:
    """A crash after the triggers were queued but before the sync was recorded re-runs it."""
    repo = hosted_hq(rig, tmp_path)
    rig.hosted_with_commits.add("web")
    repo.commit({"authorized_keys/a.pub": pub(new_key()), "web/orders": "export PORT=8080\n"})
    await rig.sync()
    queued = rig.queued()
    rig.fleet.hq = None  # the state a crash leaves: no sync recorded in memory
    await rig.sync()
    assert rig.queued() == queued


async def test_removing_an_admiral_takes_the_key_out_of_the_live_ring(
    rig: Rig, tmp_path: Path
) -> None:
    alice, bob = new_key(), new_key()
    repo = hosted_hq(rig, tmp_path)
    repo.commit({"authorized_keys/alice.pub": pub(alice), "authorized_keys/bob.pub": pub(bob)})
    await rig.sync()
    assert rig.keyring.admiral_for(bob) == "bob"
    repo.commit({"authorized_keys/bob.pub": None})
    _, ctx = await rig.sync()
    assert rig.keyring.admiral_for(bob) is None
    assert rig.keyring.admiral_for(alice) == "alice"
    assert not (rig.config.var / "public_keys" / "bob.pub").exists()
    (admirals,) = ctx.named("AdmiralsChanged")
    assert "alice" in admirals.message
    assert "bob" not in admirals.message


async def test_deleting_every_app_retires_each_one(rig: Rig, tmp_path: Path) -> None:
    repo = hosted_hq(rig, tmp_path)
    rig.hosted_with_commits.update({"web", "api"})
    repo.commit(
        {
            "authorized_keys/alice.pub": pub(new_key()),
            "web/orders": "\n",
            "api/orders": "\n",
        }
    )
    await rig.sync()
    repo.commit({"web/orders": None, "api/orders": None})
    outcome, ctx = await rig.sync()
    assert outcome == FINISHED
    assert retires(rig) == {"web", "api"}
    assert rig.fleet.names() == []
    assert "api: retire" in ctx.named("HeadquartersSynced")[0].message


async def test_start_up_puts_the_recorded_hq_in_force(rig: Rig, tmp_path: Path) -> None:
    alice = new_key()
    repo = hosted_hq(rig, tmp_path)
    sha = repo.commit({"authorized_keys/alice.pub": pub(alice), "web/orders": "export PORT=81\n"})
    await rig.sync()
    repo.commit({"web/orders": "export PORT=82\n"})  # pushed, but not synced before the "crash"
    again = rig.restarted()
    await again.load()
    assert again.fleet.hq_sha == sha
    assert again.fleet.orders("web").port == 81
    assert again.keyring.admiral_for(alice) == "alice"


async def test_start_up_reads_the_hq_in_force_from_its_record_not_git(
    rig: Rig, tmp_path: Path
) -> None:
    """The sync keeps HQ's files beside its sha: a start reads no git (no dulwich to hold)."""
    alice = new_key()
    repo = hosted_hq(rig, tmp_path)
    sha = repo.commit({"authorized_keys/alice.pub": pub(alice), "web/orders": "export PORT=81\n"})
    await rig.sync()
    shutil.rmtree(rig.config.git_dir / "headquarters.git" / "objects")
    again = rig.restarted()
    await again.load()
    assert (again.fleet.hq_sha, again.fleet.orders("web").port) == (sha, 81)
    assert again.keyring.admiral_for(alice) == "alice"


async def test_a_record_with_only_a_sha_is_read_from_git(rig: Rig, tmp_path: Path) -> None:
    """A record written by an older Hyperdrive (sha only) still puts that HQ in force."""
    repo = hosted_hq(rig, tmp_path)
    sha = repo.commit({"web/orders": "export PORT=81\n"})
    await rig.sync()
    repo.commit({"web/orders": "export PORT=82\n"})
    record = rig.config.records_dir / "headquarters.json"
    record.write_text(json.dumps({"sha": sha, "at": 0}))
    again = rig.restarted()
    await again.load()
    assert (again.fleet.hq_sha, again.fleet.orders("web").port) == (sha, 81)


async def test_a_record_from_another_source_is_read_from_the_current_one(
    rig: Rig, tmp_path: Path
) -> None:
    """HQ moved while the daemon was down: the files kept from the old source are not used."""
    repo = hosted_hq(rig, tmp_path)
    sha = repo.commit({"web/orders": "export PORT=81\n"})
    await rig.sync()
    record = rig.config.records_dir / "headquarters.json"
    elsewhere = {"web/orders": base64.b64encode(b"export PORT=99\n").decode()}
    record.write_text(
        json.dumps({"sha": sha, "source": ["git@example.invalid:hq", None], "files": elsewhere})
    )
    again = rig.restarted()
    await again.load()
    assert (again.fleet.hq_sha, again.fleet.orders("web").port) == (sha, 81)


async def test_remote_hq_over_file_url_with_a_branch(rig: Rig, tmp_path: Path) -> None:
    alice, bob = new_key(), new_key()
    remote = HqRepo(tmp_path / "remote-work", tmp_path / "remote" / "hq.git", branch="main")
    first = remote.commit(
        {
            "authorized_keys/alice.pub": pub(alice),
            "site/orders": "autodeploy file:///srv/site.git\nexport PORT=8080\n",
        }
    )
    rig.hq.set_source(f"file://{remote.bare}#main")
    outcome, ctx = await rig.sync()
    assert outcome == FINISHED
    assert ctx.named("HeadquartersSynced")[0].sha == first
    assert ctx.apps("AppOrdered") == {"site"}
    assert set(deploys(rig)) == {"site"}
    checkout = rig.config.data / "headquarters"
    assert (checkout / "site" / "orders").is_file(), "the seed's $DATA/headquarters checkout"
    assert rig.keyring.admiral_for(alice) == "alice"

    second = remote.commit({"authorized_keys/bob.pub": pub(bob), "site/orders": "export PORT=1\n"})
    _, ctx = await rig.sync()  # `hd headquarters sync`
    assert ctx.named("HeadquartersSynced")[0].sha == second
    assert ctx.apps("OrdersChanged") == {"site"}
    assert rig.keyring.admiral_for(bob) == "bob"
    assert (checkout / "authorized_keys" / "bob.pub").is_file()

    again = rig.restarted()
    again.set_source(f"file://{remote.bare}#main")
    await again.load()
    assert again.fleet.hq_sha == second


async def test_an_unreachable_remote_keeps_the_last_good_hq(rig: Rig, tmp_path: Path) -> None:
    alice = new_key()
    remote = HqRepo(tmp_path / "remote-work", tmp_path / "remote" / "hq.git", branch="main")
    sha = remote.commit(
        {"authorized_keys/alice.pub": pub(alice), "site/orders": "export PORT=8080\n"}
    )
    rig.hq.set_source(f"file://{remote.bare}#main")
    await rig.sync()
    queued = rig.queued()

    rig.hq.set_source(f"file://{tmp_path}/nowhere.git#main")
    outcome, ctx = await rig.sync()
    assert outcome == FAILED
    (failed,) = ctx.named("HeadquartersSyncFailed")
    assert "last good headquarters stays in force" in failed.message
    assert "nowhere.git" in failed.message, "git's own words say what could not be fetched"
    assert rig.fleet.hq_sha == sha
    assert rig.fleet.orders("site").port == 8080
    assert rig.keyring.admiral_for(alice) == "alice"
    assert rig.queued() == queued

    rig.hq.set_source(f"file://{remote.bare}#no-such-branch")
    outcome, ctx = await rig.sync()
    assert outcome == FAILED
    assert ctx.named("HeadquartersSyncFailed")
    assert rig.fleet.hq_sha == sha


async def test_bad_keys_in_a_remote_hq_are_reported_and_never_loaded(
    rig: Rig, tmp_path: Path
) -> None:
    alice, mallory = new_key(), new_key()
    private = mallory.export_private_key().decode()
    remote = HqRepo(tmp_path / "remote-work", tmp_path / "remote" / "hq.git", branch="main")
    remote.commit(
        {
            "authorized_keys/alice.pub": pub(alice),
            "authorized_keys/mallory.pub": private,
            "authorized_keys/notes.pub": "remember to add carol\n",
        }
    )
    rig.hq.set_source(f"file://{remote.bare}#main")
    outcome, ctx = await rig.sync()
    assert outcome == FINISHED
    messages = [e.message for e in ctx.named("OrdersRejected")]
    assert any("mallory.pub" in m and "PRIVATE key" in m for m in messages), messages
    assert any("notes.pub" in m and "not an OpenSSH public key" in m for m in messages)
    assert all("PRIVATE KEY-----" not in e.message for e in ctx.events), "never echoed"
    assert rig.keyring.admiral_for(mallory) is None
    assert rig.keyring.admiral_for(alice) == "alice"
    assert sorted(p.name for p in (rig.config.var / "public_keys").iterdir()) == ["alice.pub"]
    assert ctx.named("AdmiralsChanged")[0].admirals == ("alice",)  # type: ignore[attr-defined]


async def test_a_remote_hq_without_keys_cannot_lock_everyone_out(rig: Rig, tmp_path: Path) -> None:
    alice = new_key()
    remote = HqRepo(tmp_path / "remote-work", tmp_path / "remote" / "hq.git", branch="main")
    remote.commit({"authorized_keys/alice.pub": pub(alice), "web/orders": "\n"})
    rig.hq.set_source(f"file://{remote.bare}#main")
    await rig.sync()
    remote.commit({"authorized_keys/alice.pub": None})

    _, ctx = await rig.sync()  # no bootstrap key file: alice stays
    (problem,) = ctx.named("OrdersRejected")
    assert "nobody is locked out" in problem.message
    assert "(alice)" in problem.message
    assert rig.keyring.admiral_for(alice) == "alice"
    assert (rig.config.var / "public_keys" / "alice.pub").is_file()
    again = rig.restarted()
    again.set_source(f"file://{remote.bare}#main")
    await again.load()
    assert again.keyring.admiral_for(alice) == "alice", "still in force after a restart"

    rig.config.admiral_keys.write_text(pub(new_key()))  # a bootstrap admiral exists now
    _, ctx = await rig.sync()
    assert ctx.named("OrdersRejected") == []
    assert rig.keyring.admiral_for(alice) is None
    assert list((rig.config.var / "public_keys").iterdir()) == []


async def test_ports_claimed_twice_in_a_remote_hq_are_reported(rig: Rig, tmp_path: Path) -> None:
    remote = HqRepo(tmp_path / "remote-work", tmp_path / "remote" / "hq.git", branch="main")
    remote.commit(
        {
            "authorized_keys/alice.pub": pub(new_key()),
            "one/orders": "export PUBLISH_PORT=9000\n",
            "two/orders": "# the same port\nexport PUBLISH_PORT=9000\n",
        }
    )
    rig.hq.set_source(f"file://{remote.bare}#main")
    outcome, ctx = await rig.sync()
    assert outcome == FINISHED
    messages = [e.message for e in ctx.named("OrdersRejected")]
    assert messages == [
        "two/orders:2: PUBLISH_PORT 9000 is already published by one (one/orders:1)"
    ]


async def test_a_push_to_another_hq_branch_never_becomes_the_hq_in_force(
    rig: Rig, tmp_path: Path
) -> None:
    """Only master passes the pre-receive check; the trigger's sha is not trusted."""
    repo = hosted_hq(rig, tmp_path)
    master = repo.commit({"authorized_keys/a.pub": pub(new_key()), "web/orders": "\n"})
    await rig.sync(master)
    git("checkout", "-q", "-b", "draft", cwd=repo.work)
    repo.branch = "draft"
    draft = repo.commit({"authorized_keys/a.pub": None, "web/orders": None})
    _, ctx = await rig.sync(draft)
    assert ctx.named("HeadquartersSynced")[0].sha == master
    assert rig.fleet.names() == ["web"]
    assert retires(rig) == set()


@pytest.fixture
def host_user(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real host user `hdt<hex>` with its home in the test's folder, removed afterwards."""
    require("useradd", "userdel")
    name, home = f"hdt{secrets.token_hex(3)}", tmp_path / "home"
    subprocess.run(
        ["useradd", "-M", "-d", str(home), "-s", "/usr/sbin/nologin", name],
        check=True,
        timeout=30,
    )
    try:
        home.mkdir()
        yield name, home
    finally:
        subprocess.run(["userdel", name], capture_output=True, timeout=30)


@pytest.mark.root
async def test_admiral_user_gets_a_managed_block_and_keeps_its_own_keys(
    rig: Rig, tmp_path: Path, host_user: tuple[str, Path]
) -> None:
    name, home = host_user
    entry = pwd.getpwnam(name)
    own = pub(new_key()).strip()
    (home / ".ssh").mkdir(mode=0o700)
    (home / ".ssh" / "authorized_keys").write_text(f"{own}\n")
    os.chown(home / ".ssh" / "authorized_keys", entry.pw_uid, entry.pw_gid)
    rig.hq.config = replace(rig.config, admiral_user=name)
    alice, bob = new_key(), new_key()
    repo = hosted_hq(rig, tmp_path)
    repo.commit({"authorized_keys/alice.pub": pub(alice), "authorized_keys/bob.pub": pub(bob)})
    await rig.sync()
    target = home / ".ssh" / "authorized_keys"
    text = target.read_text()
    assert text.startswith(f"{own}\n# BEGIN hyperdrive admirals\n")
    assert pub(alice).split()[1] in text
    assert pub(bob).split()[1] in text
    repo.commit({"authorized_keys/bob.pub": None})
    await rig.sync()
    text = target.read_text()
    assert own in text
    assert pub(alice).split()[1] in text
    assert pub(bob).split()[1] not in text
    assert (target.stat().st_uid, target.stat().st_gid) == (entry.pw_uid, entry.pw_gid)


async def test_captains_go_live_with_hq_are_kept_under_var_and_known_after_a_restart(
    rig: Rig, tmp_path: Path
) -> None:
    lead, alice, bob = new_key(), new_key(), new_key()
    repo = hosted_hq(rig, tmp_path)
    repo.commit(
        {
            "authorized_keys/lead.pub": pub(lead),
            "blog/orders": "\n",
            "blog/captains/alice.pub": pub(alice),
            "shop/orders": "\n",
            "shop/captains/alice.pub": pub(alice),
            "shop/captains/bob.pub": pub(bob),
        }
    )
    _, ctx = await rig.sync()
    (changed,) = ctx.named("AdmiralsChanged")
    assert changed.captains == ("blog/alice", "shop/alice", "shop/bob")  # type: ignore[attr-defined]
    assert changed.message == "admirals in force: lead; captains: blog/alice, shop/alice, shop/bob"
    assert rig.keyring.identity_for(alice) == Identity.captain("alice", {"blog", "shop"})
    kept = rig.config.var / "captains"
    assert sorted(str(p.relative_to(kept)) for p in kept.rglob("*.pub")) == [
        "blog/alice.pub",
        "shop/alice.pub",
        "shop/bob.pub",
    ]

    repo.commit({"shop/captains/alice.pub": None, "blog/captains/alice.pub": None})
    await rig.sync()
    assert rig.keyring.identity_for(alice) is None, "gone with the HQ commit that removed her"
    assert rig.keyring.identity_for(bob) == Identity.captain("bob", {"shop"})
    assert sorted(p.name for p in kept.iterdir()) == ["shop"]

    rig.config.headquarters_record.unlink()  # a restart that cannot read HQ yet
    again = rig.restarted()
    await again.load()
    assert again.keyring.identity_for(bob) == Identity.captain("bob", {"shop"})
    assert again.keyring.admiral_for(lead) == "lead"
