"""Telling the forge and the team, end to end: the real daemon deploys busybox ships on a
webhook and posts commit statuses and signed notify calls.

No forge is reachable from this machine, so the "forge" is tests/fixtures/fake_forge.py: a local
aiohttp server that checks each request against GitHub's documented statuses API (path,
method, Authorization and Accept headers, JSON fields) and Standard Webhooks' signature rules,
and refuses what a real forge would refuse.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon, wait_for
from tests.e2e.squadron import Admiral, admiral_squadron, forge_repo, http_get
from tests.e2e.test_webhook_deploy import post, push_payload
from tests.fixtures.fake_forge import FakeForge
from tests.fixtures.webhooks.forge import SECRET, github

pytestmark = [pytest.mark.root, pytest.mark.lxc, pytest.mark.nginx, pytest.mark.slow]

TOKEN = "ghp_test-token-0123456789"
NOTIFY_SECRET = "whsec_" + "c2VjcmV0LWZvci10aGUtdGVhbS0wMTIzNDU2Nzg5"


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Daemon, Admiral]]:
    with admiral_squadron(tmp_path, HYPERDRIVE_WEBHOOK_SECRET=SECRET) as pair:
        yield pair


def keep(d: Daemon, verb: str, app: str, value: str) -> None:
    """`hd forge-token APP` / `hd notify-secret APP`, the value on stdin as an admiral types it."""
    result = subprocess.run(
        [sys.executable, "-m", "hyperdrive", verb, app],
        env=d.env,
        input=value + "\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert value not in result.stdout + result.stderr


def order_site(d: Daemon, admiral: Admiral, tmp_path: Path, forge: FakeForge) -> tuple[str, Path]:
    """The forge repo with one commit, and `site` following it with statuses and notify."""
    repo, work = forge_repo(admiral, tmp_path, {"index.html": "v1\n"})
    url = f"file://{repo}"
    orders = (
        f"autodeploy {url}\nhealthcheck / 10\nforge github acme/site {forge.api}\n"
        f"notify {forge.url}/notify\n"
    )
    hq = admiral.working_copy(tmp_path / "hq", "headquarters")
    pub = Path(f"{admiral.key}.pub").read_text()
    admiral.commit(hq, {"authorized_keys/admiral.pub": pub, "site/orders": orders})
    admiral.git("push", "hyperdrive", "master", cwd=hq)
    return url, work


def names(d: Daemon) -> list[tuple[str, str | None]]:
    return [(e["event"], e.get("deploy")) for e in d.events()]


def test_a_webhook_deploy_posts_pending_then_success_and_a_signed_notify(
    fleet: tuple[Daemon, Admiral], tmp_path: Path
) -> None:
    d, admiral = fleet
    keep(d, "forge-token", "site", TOKEN)
    keep(d, "notify-secret", "site", NOTIFY_SECRET)
    token_file = d.var / "private_keys" / "site.forge-token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    with FakeForge(TOKEN, NOTIFY_SECRET) as forge:
        url, work = order_site(d, admiral, tmp_path, forge)
        wait_for(lambda: http_get(d.http_port, "/site/") == (200, "v1\n"), 90, 0.3, "v1 served")
        v1 = admiral.git("rev-parse", "HEAD", cwd=work).stdout.strip()
        admiral.commit(work, {"index.html": "v2\n"})
        admiral.git("push", "-q", "origin", "master", cwd=work)
        v2 = admiral.git("rev-parse", "HEAD", cwd=work).stdout.strip()
        status, answer = post(d, "github", *github(push_payload(url, v1, v2)))
        assert status == 202, answer
        deploy = answer["deploys"]["site"]
        d.wait_event("DeployFinished", 90, deploy=deploy)

        def states() -> list[str]:
            return [s["state"] for s in forge.statuses if s["sha"] == v2]

        wait_for(lambda: states() == ["pending", "success"], 30, 0.1, f"statuses: {forge.__dict__}")
        pending, success = (s for s in forge.statuses if s["sha"] == v2)
        assert pending["target_url"].endswith(f":{d.api_port}/apps/site/deploys/{deploy}")
        assert success["target_url"].endswith("/site/")
        assert success["context"] == "hyperdrive/site"

        def told() -> list[str]:
            return [n["type"] for n in forge.notified if n["data"]["deploy"] == deploy]

        wait_for(lambda: "deploy.finished" in told(), 30, 0.1, "the signed notify")
        assert sorted(told()) == ["deploy.finished", "deploy.queued"]  # each once
        finished = next(n for n in forge.notified if n["type"] == "deploy.finished"
                        and n["data"]["deploy"] == deploy)  # fmt: skip
        assert finished["data"]["sha"] == v2
        assert forge.refusals == []
    log = (d.data / "events.jsonl").read_text()
    assert TOKEN not in log
    assert NOTIFY_SECRET not in log
    assert TOKEN not in (d.data / "outbound" / "deliveries.jsonl").read_text()


def test_a_forge_answering_500_gets_the_status_after_a_retry_and_the_deploy_does_not_wait(
    fleet: tuple[Daemon, Admiral], tmp_path: Path
) -> None:
    d, admiral = fleet
    keep(d, "forge-token", "site", TOKEN)
    with FakeForge(TOKEN, NOTIFY_SECRET, fail_first=1) as forge:
        order_site(d, admiral, tmp_path, forge)
        finished = d.wait_event("DeployFinished", 90, app="site")
        wait_for(lambda: forge.statuses, 30, 0.1, "the status after its retry")
        d.wait_event("DeliverySent", 30, deploy=finished["deploy"])  # the courier's word on it
        assert forge.answered[0] == 500
        assert forge.statuses[-1]["state"] == "success"
        assert forge.statuses[-1]["sha"] == finished["sha"]
    events = names(d)
    deferred = next(i for i, (e, _) in enumerate(events) if e == "DeliveryDeferred")
    sent = next(i for i, (e, _) in enumerate(events) if e == "DeliverySent")
    done = events.index(("DeployFinished", finished["deploy"]))
    assert done < sent, "the deploy finished without waiting for the forge"
    assert deferred < sent
    # the notify URL has no secret kept: said once, not retried
    abandoned = [e for e in d.events() if e["event"] == "DeliveryAbandoned"]
    assert any("hd notify-secret site" in e["message"] for e in abandoned)


def test_a_forge_that_hangs_is_retried_while_the_deploy_goes_on(
    fleet: tuple[Daemon, Admiral], tmp_path: Path
) -> None:
    d, admiral = fleet
    keep(d, "forge-token", "site", TOKEN)
    with FakeForge(TOKEN, NOTIFY_SECRET) as forge:
        url, work = order_site(d, admiral, tmp_path, forge)
        first = d.wait_event("DeployFinished", 90, app="site")
        wait_for(lambda: forge.statuses, 30, 0.1, "the first deploy's status")
        forge.hang_first = 1
        admiral.commit(work, {"index.html": "v2\n"})
        admiral.git("push", "-q", "origin", "master", cwd=work)
        v2 = admiral.git("rev-parse", "HEAD", cwd=work).stdout.strip()
        status, answer = post(d, "github", *github(push_payload(url, first["sha"], v2)))
        assert status == 202, answer
        deploy = answer["deploys"]["site"]
        d.wait_event("DeployFinished", 60, deploy=deploy)
        assert forge.hanging == 1, "the deploy finished while its pending status hung"
        assert http_get(d.http_port, "/site/") == (200, "v2\n")
        deferred = d.wait_event("DeliveryDeferred", 30, deploy=deploy)
        assert "no answer" in deferred["message"]
        wait_for(
            lambda: [s["state"] for s in forge.statuses if s["sha"] == v2] == ["success"],
            30, 0.2, "the success status after the hang",
        )  # fmt: skip


def test_a_status_not_yet_delivered_survives_a_restart(
    fleet: tuple[Daemon, Admiral], tmp_path: Path
) -> None:
    d, admiral = fleet
    keep(d, "forge-token", "site", TOKEN)
    with FakeForge(TOKEN, NOTIFY_SECRET, fail_first=1000) as forge:  # down until told
        order_site(d, admiral, tmp_path, forge)
        finished = d.wait_event("DeployFinished", 90, app="site")
        d.wait_event("DeliveryDeferred", 30, deploy=finished["deploy"])
        assert d.stop() == 0
        assert forge.statuses == []
        forge.fail_first = 0  # the forge is back
        d.start()
        wait_for(lambda: forge.statuses, 60, 0.2, "the status, sent by the restarted daemon")
        assert forge.statuses[-1]["state"] == "success"
        assert forge.statuses[-1]["sha"] == finished["sha"]
