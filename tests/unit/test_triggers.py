"""One trigger schema: typed constructors, one dialect (ref/old/new), old spool files still read."""

import json
from pathlib import Path
from typing import Any

import pytest

from hyperdrive.errors import InvalidName, SpoolError
from hyperdrive.names import ZERO_SHA
from hyperdrive.spool import JOURNAL, FileSpool
from hyperdrive.triggers import RefUpdate, Trigger, TriggerKind, deploy_id

OLD, NEW = "1" * 40, "2" * 40
MAIN = RefUpdate("refs/heads/main", OLD, NEW)


def every_kind() -> list[Trigger]:
    return [
        Trigger.push("web", MAIN, "alice"),
        Trigger.hq_push(MAIN, "alice"),
        Trigger.webhook(
            "github:d-1", provider="github", repository="acme/web", targets={"web": MAIN},
            fingerprint="f", received=1.0,
        ),
        Trigger.hq_webhook(
            "gitlab:d-2", provider="gitlab", repository="acme/hq", update=MAIN,
            fingerprint="f", received=1.0,
        ),
        Trigger.hq_sync("includes changed"),
        Trigger.deploy("web", NEW, "bob"),
        Trigger.deploy("web", source="hq", tid="hq-2222222-web-abc"),
        Trigger.rollback("web", "bob"),
        Trigger.retire("web", "removed from headquarters"),
        Trigger.assemble("web", NEW),
        Trigger.assemble(fresh=True),
        Trigger.launch("hd-web-2222222"),
    ]  # fmt: skip


@pytest.mark.parametrize("trigger", every_kind(), ids=lambda t: str(t.kind))
def test_every_kind_round_trips_through_the_spool_json(trigger: Trigger) -> None:
    again = Trigger.from_json(json.loads(json.dumps(trigger.to_json())))
    assert again == trigger
    assert type(again.kind) is TriggerKind


def test_the_spool_json_keeps_the_kind_strings_of_before() -> None:
    assert [t.to_json()["kind"] for t in every_kind()] == [
        "push", "hq", "webhook", "hq-sync", "hq-sync", "deploy", "deploy", "rollback", "retire",
        "assemble", "assemble", "launch",
    ]  # fmt: skip


def test_every_ref_update_is_ref_old_new() -> None:
    push, hq, hook, hq_hook = every_kind()[:4]
    for trigger in (push, hq, hook, hq_hook):
        assert {k: trigger.data[k] for k in ("ref", "old", "new")} == MAIN.to_json()
        assert trigger.update == MAIN
    assert hook.data["targets"] == {"web": MAIN.to_json()}
    assert (hook.targets, hook.deploys) == ({"web": MAIN}, {"web": "github:d-1:web"})


def test_a_ref_update_knows_created_and_deleted() -> None:
    created, deleted = RefUpdate("refs/tags/v1", ZERO_SHA, NEW), RefUpdate(MAIN.ref, OLD, ZERO_SHA)
    assert (created.created, created.deleted) == (True, False)
    assert (deleted.created, deleted.deleted) == (False, True)
    assert (MAIN.created, MAIN.deleted) == (False, False)
    assert RefUpdate(MAIN.ref, OLD, "0" * 64).deleted, "a SHA-256 repo's zero id"


@pytest.mark.parametrize(
    ("ref", "old", "new"),
    [("refs/notes/x", OLD, NEW), ("refs/heads/../x", OLD, NEW), (MAIN.ref, "abc", NEW),
     (MAIN.ref, OLD, None)],
)  # fmt: skip
def test_a_bad_ref_update_cannot_be_made(ref: str, old: str, new: Any) -> None:
    with pytest.raises(InvalidName):
        RefUpdate(ref, old, new)


def spool_obj(kind: Any, app: Any = "web", **data: Any) -> dict[str, Any]:
    return {"id": "t-1", "kind": kind, "app": app, "data": data, "received": 1.0}


@pytest.mark.parametrize(
    ("obj", "said"),
    [
        (spool_obj("launch-missiles"), "unknown kind 'launch-missiles'"),
        (spool_obj("PUSH", **MAIN.to_json()), "unknown kind 'PUSH'"),
        (spool_obj(None), "unknown kind None"),
        (spool_obj("push", ref=MAIN.ref, old=OLD), "the ref update lacks new"),
        (spool_obj("push", ref="refs/notes/x", old=OLD, new=NEW), "invalid ref 'refs/notes/x'"),
        (spool_obj("push", ref=MAIN.ref, old=OLD, new="HEAD"), "invalid commit id 'HEAD'"),
        (spool_obj("push", None, **MAIN.to_json()), "names no app"),
        (spool_obj("hq", **MAIN.to_json()), "concerns no app, not web"),
        (spool_obj("push", **MAIN.to_json(), admiral=7), "admiral is not text"),
        (spool_obj("deploy", sha="abc"), "invalid commit id 'abc'"),
        (spool_obj("deploy", source="push"), "source is 'push'"),
        (spool_obj("deploy", None), "names no app"),
        (spool_obj("launch", None), "ship is missing"),
        (spool_obj("assemble", None, fresh="yes"), "fresh is not true or false"),
        (spool_obj("webhook", None, provider="github", targets={"web": {"ref": MAIN.ref}}),
         "targets.web lacks old and new"),
        (spool_obj("webhook", None, provider="github", targets={"Web!": MAIN.to_json()}),
         "invalid app name 'Web!'"),
        (spool_obj("webhook", None, provider="github", targets={}, deploys={"web": "../x"}),
         "deploys.web is not a deploy id"),
        (spool_obj("webhook", None, targets={}), "provider is missing"),
        ({**spool_obj("rollback"), "id": "../etc"}, "invalid id"),
        ({**spool_obj("rollback"), "data": []}, "data is not an object"),
    ],
)  # fmt: skip
def test_a_bad_trigger_is_refused_with_a_spool_error_naming_what_is_wrong(
    obj: dict[str, Any], said: str
) -> None:
    with pytest.raises(SpoolError, match=r"trigger") as refused:
        Trigger.from_json(obj)
    assert said in str(refused.value)


def test_the_constructors_refuse_what_the_schema_refuses() -> None:
    with pytest.raises(SpoolError, match="invalid app name"):
        Trigger.deploy("Not An App")
    with pytest.raises(SpoolError, match="invalid commit id 'abc'"):
        Trigger.deploy("web", "abc")


def test_an_admiral_asks_for_cli_kinds_only_and_the_daemon_picks_the_id() -> None:
    asked = Trigger.deploy("web", NEW)
    got = Trigger.requested(json.loads(json.dumps(asked.request())))
    assert (got.kind, got.app) == (TriggerKind.DEPLOY, "web")
    assert got.data == {"sha": NEW, "source": "cli"}
    assert got.id != asked.id
    hulls = Trigger.requested({"kind": "assemble", "app": None, "data": {"fresh": True}})
    assert (hulls.kind, hulls.app) == (TriggerKind.ASSEMBLE, None)
    for kind in ("push", "hq", "webhook", "nonsense", None):
        with pytest.raises(SpoolError, match="cannot be asked for"):
            Trigger.requested({"kind": kind, "app": "web", "data": MAIN.to_json()})
    with pytest.raises(SpoolError):
        Trigger.requested(["deploy"])


def test_deploy_ids_are_the_trigger_and_app() -> None:
    assert deploy_id("github:72d3162e", "web") == "github:72d3162e:web"


# -- spool files written by the version before one schema (pending at an upgrade) --
OLD_WEBHOOK = {
    "id": "bitbucket:req-1", "kind": "webhook", "app": None, "received": 1.0, "fingerprint": "f",
    "data": {
        "provider": "bitbucket", "repository": "acme/web", "ref": "refs/heads/main",
        "before": OLD, "after": NEW, "apps": ["web", "staging"],
        "deploys": {"web": "bitbucket:req-1:web", "staging": "bitbucket:req-1:staging"},
        "targets": {
            "web": {"ref": "refs/heads/main", "before": OLD, "after": NEW},
            "staging": {"ref": "refs/heads/develop", "before": ZERO_SHA, "after": "3" * 40},
        },
    },
}  # fmt: skip
OLD_HQ_SYNC = {
    "id": "github:hq-1", "kind": "hq-sync", "app": None, "received": 1.0, "fingerprint": "g",
    "data": {"provider": "github", "repository": "acme/hq", "ref": "refs/heads/master",
             "before": OLD, "after": NEW, "apps": [], "deploys": {}, "targets": {}},
}  # fmt: skip
OLDEST_WEBHOOK = {  # before `targets`: every app deployed the delivery's one update
    "id": "github:d-0", "kind": "webhook", "app": None,
    "data": {"provider": "github", "ref": "refs/heads/main", "before": OLD, "after": NEW,
             "apps": ["web"]},
}  # fmt: skip


def test_an_old_webhook_trigger_reads_in_the_one_dialect() -> None:
    trigger = Trigger.from_json(OLD_WEBHOOK)
    assert trigger.update == MAIN
    assert trigger.targets == {
        "web": MAIN,
        "staging": RefUpdate("refs/heads/develop", ZERO_SHA, "3" * 40),
    }
    assert trigger.deploys == {"web": "bitbucket:req-1:web", "staging": "bitbucket:req-1:staging"}
    assert "before" not in json.dumps(trigger.to_json()), "rewritten in the one dialect"
    assert Trigger.from_json(trigger.to_json()) == trigger
    oldest = Trigger.from_json(OLDEST_WEBHOOK)
    assert (oldest.targets, oldest.deploys) == ({"web": MAIN}, {"web": "github:d-0:web"})


async def test_old_triggers_pending_in_a_spool_at_an_upgrade_are_taken_up(tmp_path: Path) -> None:
    """One in the journal (acknowledged), one still in incoming/ (dropped by a hook)."""
    (tmp_path / JOURNAL).write_text(json.dumps({"op": "put", "trigger": OLD_WEBHOOK}) + "\n")
    (tmp_path / "incoming").mkdir()
    (tmp_path / "incoming" / "github:hq-1.json").write_text(json.dumps(OLD_HQ_SYNC))
    rejected: list[str] = []
    spool = FileSpool(tmp_path, on_rejected=lambda name, why: rejected.append(why))
    await spool.open()
    try:
        webhook, hq = spool.pending()
        assert (webhook.id, hq.id) == ("bitbucket:req-1", "github:hq-1")
        assert webhook.targets["staging"].new == "3" * 40
        assert hq.update == RefUpdate("refs/heads/master", OLD, NEW)
        assert rejected == []
    finally:
        await spool.close()


async def test_a_spool_file_of_an_unknown_kind_is_quarantined_not_lost(tmp_path: Path) -> None:
    (tmp_path / "incoming").mkdir(parents=True)
    (tmp_path / "incoming" / "t-9.json").write_text(json.dumps(spool_obj("teleport")))
    said: list[str] = []
    spool = FileSpool(tmp_path, on_rejected=lambda name, why: said.append(f"{name}: {why}"))
    await spool.open()
    try:
        assert spool.pending() == []
        assert (tmp_path / "rejected" / "t-9.json").exists()
        assert len(said) == 1
        assert "t-9.json: trigger t-1 has the unknown kind 'teleport'" in said[0]
    finally:
        await spool.close()
