"""from_trigger: every durable trigger becomes the commands it asks for, and nothing else."""

from typing import Any

from hyperdrive.names import HEADQUARTERS, ZERO_SHA
from hyperdrive.pipeline.commands import (
    FROM_TRIGGER,
    Assemble,
    AssembleHulls,
    Deploy,
    Launch,
    Retire,
    Rollback,
    SyncHeadquarters,
    from_trigger,
)
from hyperdrive.triggers import RefUpdate, Trigger, TriggerKind

OLD, NEW = "1" * 40, "2" * 40
MAIN = RefUpdate("refs/heads/main", OLD, NEW)


def webhook(**targets: RefUpdate) -> Trigger:
    return Trigger.webhook(
        "github:d-1",
        provider="github",
        repository="acme/web",
        targets=targets,
        fingerprint="f",
        received=1.0,
    )


def test_every_kind_has_a_way_to_commands() -> None:
    assert set(FROM_TRIGGER) == set(TriggerKind)


def test_a_push_deploys_the_new_sha_of_its_ref() -> None:
    trigger = Trigger.push("web", MAIN, "alice")
    got = from_trigger(trigger)
    assert got == [
        Deploy(
            deploy=trigger.id,
            app="web",
            sha=NEW,
            ref="refs/heads/main",
            source="push",
            admiral="alice",
        )
    ]
    assert got[0].lane == "web"


def test_a_push_that_deletes_a_branch_retires_with_that_ref() -> None:
    trigger = Trigger.push("web", RefUpdate("refs/heads/feature", OLD, ZERO_SHA), "alice")
    assert from_trigger(trigger) == [
        Retire(
            deploy=trigger.id,
            app="web",
            reason="branch deleted: refs/heads/feature",
            ref="refs/heads/feature",
        )
    ]


def test_an_hq_push_syncs_headquarters_at_the_pushed_sha() -> None:
    trigger = Trigger.hq_push(RefUpdate("refs/heads/master", OLD, NEW), "alice")
    got = from_trigger(trigger)
    assert got == [SyncHeadquarters(deploy=trigger.id, sha=NEW)]
    assert got[0].lane == HEADQUARTERS


def test_a_deleted_hq_branch_syncs_without_a_sha() -> None:
    trigger = Trigger.hq_push(RefUpdate("refs/heads/master", OLD, ZERO_SHA), "alice")
    assert from_trigger(trigger) == [SyncHeadquarters(deploy=trigger.id, sha=None)]


def test_an_hq_webhook_syncs_at_the_forges_new_sha() -> None:
    trigger = Trigger.hq_webhook(
        "gitlab:d-2",
        provider="gitlab",
        repository="acme/hq",
        update=MAIN,
        fingerprint="f",
        received=1.0,
    )
    assert from_trigger(trigger) == [SyncHeadquarters(deploy="gitlab:d-2", sha=NEW)]


def test_a_plain_hq_sync_reads_the_tip() -> None:
    trigger = Trigger.hq_sync("includes changed")
    assert from_trigger(trigger) == [SyncHeadquarters(deploy=trigger.id, sha=None)]


def test_a_webhook_deploys_each_app_under_its_own_deploy_id() -> None:
    got = from_trigger(webhook(web=MAIN, api=MAIN))
    assert got == [
        Deploy(
            deploy="github:d-1:web",
            app="web",
            sha=NEW,
            ref="refs/heads/main",
            source="webhook:github",
        ),
        Deploy(
            deploy="github:d-1:api",
            app="api",
            sha=NEW,
            ref="refs/heads/main",
            source="webhook:github",
        ),
    ]
    assert {c.lane for c in got} == {"web", "api"}


def test_a_webhook_gives_each_app_the_ref_and_sha_it_matched() -> None:
    """One delivery may move several branches: each app deploys its own branch's tip."""
    other = "3" * 40
    got = from_trigger(webhook(web=MAIN, staging=RefUpdate("refs/heads/develop", OLD, other)))
    assert [(c.app, c.ref, c.sha) for c in got if isinstance(c, Deploy)] == [
        ("web", "refs/heads/main", NEW),
        ("staging", "refs/heads/develop", other),
    ]


def test_a_webhook_without_apps_asks_for_nothing() -> None:
    assert from_trigger(webhook()) == []


def test_cli_deploy_and_hq_redeploy() -> None:
    trigger = Trigger.deploy("web", NEW, "bob")
    assert from_trigger(trigger) == [Deploy(deploy=trigger.id, app="web", sha=NEW, admiral="bob")]
    tip = Trigger.deploy("web")
    assert from_trigger(tip) == [Deploy(deploy=tip.id, app="web", sha=None)]
    hq = Trigger.deploy("web", source="hq", tid="hq-abc-web-1")
    assert from_trigger(hq) == [Deploy(deploy="hq-abc-web-1", app="web", source="hq")]


def test_rollback_retire_and_launch() -> None:
    back = Trigger.rollback("web", "bob")
    assert from_trigger(back) == [Rollback(deploy=back.id, app="web")]
    gone = Trigger.retire("web", "admiral said so", tid="hq-abc-web-retire")
    assert from_trigger(gone) == [
        Retire(deploy="hq-abc-web-retire", app="web", reason="admiral said so")
    ]
    launch = Trigger.launch("hd-web-1234567")
    assert from_trigger(launch) == [Launch(deploy=launch.id, ship="hd-web-1234567")]


def test_assemble_a_ship_or_every_hull_fresh_only_when_asked() -> None:
    ship = Trigger.assemble("web", NEW)
    assert from_trigger(ship) == [Assemble(deploy=ship.id, app="web", sha=NEW)]
    hulls = Trigger.assemble()
    assert from_trigger(hulls) == [AssembleHulls(deploy=hulls.id)]
    fresh = Trigger.assemble(fresh=True)
    assert from_trigger(fresh) == [AssembleHulls(deploy=fresh.id, fresh=True)]


def old(kind: str, app: str | None, data: dict[str, Any]) -> Trigger:
    """A trigger as the version before one schema wrote it to the spool."""
    obj = {"id": "t-1", "kind": kind, "app": app, "data": data, "received": 1.0}
    return Trigger.from_json(obj)


def test_triggers_written_by_the_previous_version_ask_for_the_same() -> None:
    webhook_before = {
        "provider": "bitbucket", "repository": "acme/web", "ref": "refs/heads/main",
        "before": OLD, "after": NEW, "apps": ["web", "staging"],
        "deploys": {"web": "t-1:web", "staging": "t-1:staging"},
        "targets": {
            "web": {"ref": "refs/heads/main", "before": OLD, "after": NEW},
            "staging": {"ref": "refs/heads/develop", "before": OLD, "after": "3" * 40},
        },
    }  # fmt: skip
    got = from_trigger(old("webhook", None, webhook_before))
    assert [(c.deploy, c.ref, c.sha) for c in got if isinstance(c, Deploy)] == [
        ("t-1:web", "refs/heads/main", NEW),
        ("t-1:staging", "refs/heads/develop", "3" * 40),
    ]
    hq_before = {"provider": "github", "ref": "refs/heads/master", "before": OLD, "after": NEW,
                 "apps": [], "deploys": {}, "targets": {}}  # fmt: skip
    assert from_trigger(old("hq-sync", None, hq_before)) == [
        SyncHeadquarters(deploy="t-1", sha=NEW)
    ]
