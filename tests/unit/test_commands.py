"""from_trigger: every durable trigger becomes the commands it asks for, and nothing else."""

from typing import Any

import pytest

from hyperdrive.names import HEADQUARTERS
from hyperdrive.pipeline.commands import (
    ZERO_SHA,
    AssembleHulls,
    Deploy,
    Retire,
    Rollback,
    SyncHeadquarters,
    from_trigger,
)
from hyperdrive.triggers import Trigger

OLD, NEW = "1" * 40, "2" * 40


def trigger(kind: str, app: str | None = "web", **data: Any) -> Trigger:
    return Trigger(id="t-1", kind=kind, app=app, data=data, received=1.0)


def test_a_push_deploys_the_new_sha_of_its_ref() -> None:
    got = from_trigger(trigger("push", ref="refs/heads/main", old=OLD, new=NEW, admiral="alice"))
    assert got == [
        Deploy(
            deploy="t-1", app="web", sha=NEW, ref="refs/heads/main", source="push", admiral="alice"
        )
    ]
    assert got[0].lane == "web"


def test_a_push_that_deletes_a_branch_retires_with_that_ref() -> None:
    got = from_trigger(trigger("push", ref="refs/heads/feature", old=OLD, new=ZERO_SHA))
    assert got == [
        Retire(
            deploy="t-1",
            app="web",
            reason="branch deleted: refs/heads/feature",
            ref="refs/heads/feature",
        )
    ]


def test_a_push_without_an_app_asks_for_nothing() -> None:
    assert from_trigger(trigger("push", app=None, ref="refs/heads/main", new=NEW)) == []


@pytest.mark.parametrize("kind", ["hq", "hq-sync"])
def test_an_hq_change_syncs_headquarters(kind: str) -> None:
    got = from_trigger(trigger(kind, app=None, ref="refs/heads/master", old=OLD, new=NEW))
    assert got == [SyncHeadquarters(deploy="t-1", sha=NEW)]
    assert got[0].lane == HEADQUARTERS


def test_an_hq_sync_from_a_webhook_reads_after_and_a_deleted_tip_means_no_sha() -> None:
    assert from_trigger(trigger("hq-sync", app=None, after=NEW)) == [
        SyncHeadquarters(deploy="t-1", sha=NEW)
    ]
    assert from_trigger(trigger("hq", app=None, new=ZERO_SHA)) == [
        SyncHeadquarters(deploy="t-1", sha=None)
    ]


def test_a_webhook_deploys_each_app_under_its_own_deploy_id() -> None:
    got = from_trigger(
        trigger(
            "webhook",
            app=None,
            provider="github",
            ref="refs/heads/main",
            after=NEW,
            apps=["web", "api"],
            deploys={"web": "t-1:web", "api": "t-1:api"},
        )
    )
    assert got == [
        Deploy(
            deploy="t-1:web", app="web", sha=NEW, ref="refs/heads/main", source="webhook:github"
        ),
        Deploy(
            deploy="t-1:api", app="api", sha=NEW, ref="refs/heads/main", source="webhook:github"
        ),
    ]
    assert {c.lane for c in got} == {"web", "api"}


def test_a_webhook_gives_each_app_the_ref_and_sha_it_matched() -> None:
    """One delivery may move several branches: each app deploys its own branch's tip."""
    other = "3" * 40
    got = from_trigger(
        trigger(
            "webhook",
            app=None,
            provider="bitbucket",
            ref="refs/heads/main",
            after=NEW,
            apps=["web", "staging"],
            deploys={"web": "t-1:web", "staging": "t-1:staging"},
            targets={
                "web": {"ref": "refs/heads/main", "before": OLD, "after": NEW},
                "staging": {"ref": "refs/heads/develop", "before": OLD, "after": other},
            },
        )
    )
    assert [(c.app, c.ref, c.sha) for c in got if isinstance(c, Deploy)] == [
        ("web", "refs/heads/main", NEW),
        ("staging", "refs/heads/develop", other),
    ]


def test_a_webhook_without_apps_asks_for_nothing() -> None:
    assert from_trigger(trigger("webhook", app=None, provider="gitlab", after=NEW)) == []


def test_cli_deploy_rollback_and_retire() -> None:
    assert from_trigger(trigger("deploy", sha=NEW, admiral="bob")) == [
        Deploy(deploy="t-1", app="web", sha=NEW, admiral="bob")
    ]
    assert from_trigger(trigger("deploy")) == [Deploy(deploy="t-1", app="web", sha=None)]
    assert from_trigger(trigger("rollback")) == [Rollback(deploy="t-1", app="web")]
    assert from_trigger(trigger("retire", reason="admiral said so")) == [
        Retire(deploy="t-1", app="web", reason="admiral said so")
    ]


@pytest.mark.parametrize("kind", ["deploy", "rollback", "retire"])
def test_app_kinds_without_an_app_ask_for_nothing(kind: str) -> None:
    assert from_trigger(trigger(kind, app=None)) == []


@pytest.mark.parametrize("kind", ["launch-missiles", "", "PUSH", "webhooks"])
def test_an_unknown_kind_asks_for_nothing(kind: str) -> None:
    assert from_trigger(trigger(kind)) == []


def test_hd_assemble_builds_every_hull_fresh_only_when_asked() -> None:
    assert from_trigger(trigger("assemble", app=None)) == [AssembleHulls(deploy="t-1")]
    fresh = from_trigger(trigger("assemble", app=None, fresh=True))
    assert fresh == [AssembleHulls(deploy="t-1", fresh=True)]
    assert from_trigger(trigger("assemble", app=None, fresh="yes")) == [AssembleHulls(deploy="t-1")]
