"""Captains end to end, with the real OpenSSH and git clients against the real daemon, LXC
(busybox ships) and nginx: a captain of `blog` pushes and deploys blog and nothing else; an
admiral still does everything."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, wait_for
from tests.e2e.squadron import Admiral, admiral_squadron, git, http_get, keygen

pytestmark = [pytest.mark.root, pytest.mark.lxc, pytest.mark.nginx, pytest.mark.slow]

STATIC = "healthcheck / 5\n"


def pub(admiral: Admiral) -> str:
    return Path(f"{admiral.key}.pub").read_text()


def push(who: Admiral, work: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return who.git("push", "hyperdrive", "HEAD:master", cwd=work, check=check)


def refused(d: Daemon, mark: int, asked: str, app: str | None) -> dict[str, Any]:
    """The one AccessRefused event after `mark` for `asked` of `app`."""
    found = [
        e
        for e in d.events()[mark:]
        if e.get("event") == "AccessRefused" and e.get("asked") == asked and e.get("app") == app
    ]
    assert len(found) == 1, found
    return found[0]


def assert_refused(
    d: Daemon, result: subprocess.CompletedProcess[str], said: str, asked: str, app: str | None
) -> None:
    """A non-zero exit, the one line on stderr, and the event that says the same."""
    assert result.returncode != 0
    assert f"hyperdrive: {said}\n" in result.stderr, result.stderr
    event = refused(d, 0, asked, app)
    assert (event["captain"], event["message"]) == ("alice", said)


def apps_seen(who: Admiral) -> list[str]:
    return [row["app"] for row in json.loads(who.ssh("status", "--json").stdout)["apps"]]


def test_a_captain_deploys_their_app_and_nothing_else_and_an_admiral_does_all(
    tmp_path: Path,
) -> None:
    with admiral_squadron(tmp_path) as (d, lead):
        alice = Admiral(d, keygen(tmp_path / "alice"))
        hq = lead.working_copy(tmp_path / "hq", "headquarters")
        lead.commit(
            hq,
            {
                "authorized_keys/lead.pub": pub(lead),
                "blog/orders": STATIC,
                "blog/captains/alice.pub": pub(alice),
                "shop/orders": STATIC,
            },
        )
        accepted = push(lead, hq)
        assert "headquarters accepted" in accepted.stderr, accepted.stderr

        # a bad captain key is refused at the HQ push with its file and line, like an admiral's
        lead.commit(hq, {"shop/captains/bob.pub": f"{pub(lead)}bob's key goes here\n"})
        bad = push(lead, hq, check=False)
        assert bad.returncode != 0
        assert "headquarters refused, nothing changed" in bad.stderr
        assert "shop/captains/bob.pub: line 2 is not an OpenSSH public key" in bad.stderr
        git("reset", "-q", "--hard", "HEAD~", cwd=hq)
        assert not (d.var / "captains" / "shop").exists()
        assert (d.var / "captains" / "blog" / "alice.pub").read_text() == pub(alice)

        # the captain's own app: push (served), deploy, logs, status of their apps only
        blog = alice.working_copy(tmp_path / "blog", "blog")
        alice.commit(blog, {"index.html": "blog by alice\n"})
        pushed = push(alice, blog)
        assert "blog deployed" in pushed.stdout + pushed.stderr
        assert http_get(d.http_port, "/blog/") == (200, "blog by alice\n")
        assert d.wait_event("PushReceived", app="blog")["admiral"] == "captain:alice"
        deployed = alice.ssh("deploy", "blog")
        assert "blog deployed" in deployed.stdout, deployed.stdout
        logs = alice.ssh("logs", "blog").stdout.splitlines()
        assert any("blog deployed" in line for line in logs), logs
        assert all(" blog " in line for line in logs), "only blog's events"
        assert apps_seen(alice) == ["blog"]

        # everything else is refused, each with one line and an event
        shop = alice.working_copy(tmp_path / "shop", "shop")
        alice.commit(shop, {"index.html": "shop by alice\n"})
        said = "captain 'alice' may not push 'shop': captain of 'blog' only"
        assert_refused(d, push(alice, shop, check=False), said, "push", "shop")
        assert not (d.data / "git" / "shop.git").exists()
        theirs = push(alice, hq, check=False)  # the lead's HQ working copy, alice's key
        said = "captain 'alice' may not push 'headquarters': headquarters is for admirals only"
        assert_refused(d, theirs, said, "push", "headquarters")
        said = "captain 'alice' may not enter 'shop': captain of 'blog' only"
        assert_refused(d, alice.ssh("enter", "shop", check=False), said, "enter", "shop")
        said = "captain 'alice' may not read the squadron's logs: name your app (logs blog)"
        assert_refused(d, alice.ssh("logs", check=False), said, "logs", None)
        events = (d.data / "events.jsonl").read_text()
        assert pub(alice).split()[1] not in events, "never the key"

        # an admiral still does everything: another app, headquarters, the squadron's logs
        shop_work = lead.working_copy(tmp_path / "shop-lead", "shop")
        lead.commit(shop_work, {"index.html": "shop by lead\n"})
        push(lead, shop_work)
        wait_for(lambda: http_get(d.http_port, "/shop/") == (200, "shop by lead\n"), 60, 0.2)
        assert (
            "refs/heads/master" in lead.git("ls-remote", lead.remote("headquarters"), cwd=hq).stdout
        )
        assert "AccessRefused" in lead.ssh("logs", "--json").stdout
        assert apps_seen(lead) == ["blog", "shop"]
        assert http_get(d.http_port, "/blog/") == (200, "blog by alice\n"), "blog kept serving"
