"""The rights decision: admirals may do everything, captains only their own apps, and every
refusal is one line that says why plus an AccessRefused event without any key material."""

from __future__ import annotations

import pytest

from hyperdrive import access
from hyperdrive.access import ADMIRALS_ONLY, CAPTAIN_RIGHTS, Identity, NotAllowed
from hyperdrive.gitserver import ADMIRAL_VERBS, GIT_SERVICES

ALICE = Identity.captain("alice", {"blog"})
CAROL = Identity.captain("carol", {"blog", "docs"})
LEAD = Identity("lead")
OWN_APP = ["push", "fetch", "archive", "deploy", "rollback", "logs", "enter"]


def refusal(identity: Identity, asked: str, app: str | None) -> str:
    with pytest.raises(NotAllowed) as caught:
        access.check(identity, asked, app)
    return str(caught.value)


@pytest.mark.parametrize("asked", [*OWN_APP, "status", "assemble", "token", "headquarters"])
@pytest.mark.parametrize("app", ["blog", "shop", "headquarters", None])
def test_an_admiral_may_do_everything(asked: str, app: str | None) -> None:
    access.check(LEAD, asked, app)


@pytest.mark.parametrize("asked", OWN_APP)
def test_a_captain_may_do_each_own_app_verb_to_their_app(asked: str) -> None:
    access.check(ALICE, asked, "blog")
    access.check(CAROL, asked, "docs")


@pytest.mark.parametrize(
    ("asked", "said"),
    [
        ("push", "push"),
        ("fetch", "fetch"),
        ("archive", "fetch an archive of"),
        ("deploy", "deploy"),
        ("rollback", "roll back"),
        ("logs", "read the logs of"),
        ("enter", "enter"),
    ],
)
def test_another_app_is_refused_naming_the_captains_apps(asked: str, said: str) -> None:
    assert refusal(ALICE, asked, "shop") == (
        f"captain 'alice' may not {said} 'shop': captain of 'blog' only"
    )
    assert refusal(CAROL, asked, "shop").endswith(": captain of 'blog', 'docs' only")


@pytest.mark.parametrize("asked", ["push", "fetch", "archive", "deploy"])
def test_headquarters_is_for_admirals_only(asked: str) -> None:
    said = refusal(ALICE, asked, "headquarters")
    assert said.endswith("'headquarters': headquarters is for admirals only")


def test_the_squadrons_whole_log_is_for_admirals_the_captain_is_told_what_to_ask() -> None:
    assert refusal(ALICE, "logs", None) == (
        "captain 'alice' may not read the squadron's logs: name your app (logs blog)"
    )
    assert refusal(CAROL, "logs", None).endswith("(logs blog | logs docs)")


def test_status_is_allowed_and_cut_down_by_the_caller() -> None:
    access.check(ALICE, "status", None)


@pytest.mark.parametrize("asked", [*sorted(ADMIRALS_ONLY), "anything-new"])
def test_a_command_not_in_the_rights_table_is_an_admirals_alone(asked: str) -> None:
    assert refusal(ALICE, asked, None) == f"captain 'alice' may not run '{asked}': admirals only"
    assert refusal(ALICE, asked, "blog").startswith("captain 'alice' may not")


def test_every_ssh_command_has_a_decided_right() -> None:
    """A verb added to the SSH table must be decided here (and in README) on purpose."""
    asked = {access.GIT_ASKS[service] for service in GIT_SERVICES.values()} | ADMIRAL_VERBS
    assert asked <= set(CAPTAIN_RIGHTS) | ADMIRALS_ONLY
    assert not set(CAPTAIN_RIGHTS) & ADMIRALS_ONLY


def test_git_services_map_to_push_fetch_archive() -> None:
    access.check_git(ALICE, "receive-pack", "blog")
    with pytest.raises(NotAllowed, match="may not push 'shop'"):
        access.check_git(ALICE, "receive-pack", "shop")
    with pytest.raises(NotAllowed, match="may not fetch 'headquarters'"):
        access.check_git(ALICE, "upload-pack", "headquarters")


def test_the_event_names_who_what_and_which_app_and_nothing_else() -> None:
    with pytest.raises(NotAllowed) as caught:
        access.check(ALICE, "deploy", "shop")
    record = caught.value.event().record()
    assert record == {
        "event": "AccessRefused",
        "captain": "alice",
        "asked": "deploy",
        "app": "shop",
        "message": "captain 'alice' may not deploy 'shop': captain of 'blog' only",
    }


def test_who_marks_a_captain_in_triggers_and_events() -> None:
    assert LEAD.who == "lead"
    assert ALICE.who == "captain:alice"
    assert ALICE.commands("blog")
    assert not ALICE.commands("shop")
    assert LEAD.commands("shop")


def _refusal(who: Identity, asked: str, app: str) -> NotAllowed:
    with pytest.raises(NotAllowed) as caught:
        access.check(who, asked, app)
    return caught.value


def test_a_flood_of_refusals_is_written_a_burst_at_a_time_then_summarised() -> None:
    written: list[dict[str, object]] = []
    now = [0.0]
    refusals = access.Refusals(written.append, burst=3, interval=60, clock=lambda: now[0])
    for n in range(10):
        refusals(_refusal(ALICE, "deploy", f"shop{n}"))
    refusals(_refusal(CAROL, "push", "shop"))  # another captain has a window of their own
    assert [e.get("app") for e in written] == ["shop0", "shop1", "shop2", "shop"]
    assert all("more" not in e for e in written)
    now[0] = 61.0
    refusals(_refusal(ALICE, "enter", "shop"))
    summary, fresh = written[4:]
    assert summary == {
        "event": "AccessRefused",
        "captain": "alice",
        "asked": "deploy",
        "app": "shop9",
        "more": 7,
        "message": "captain 'alice': 7 more refusals in 60 s, the last: captain 'alice' may "
        "not deploy 'shop9': captain of 'blog' only",
    }
    assert (fresh["asked"], fresh["app"]) == ("enter", "shop")
    assert refusals.refused == 12
