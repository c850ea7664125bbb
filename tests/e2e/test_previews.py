"""Preview ships per branch, end to end: real git pushes over SSH (and a signed webhook of a
local "forge" repository) to the real daemon, busybox ships in LXC, served by the real nginx;
the app's own live ship is watched throughout."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon, wait_for
from tests.e2e.squadron import (
    Admiral,
    admiral_squadron,
    assert_no_orphans,
    forge_repo,
    http_get,
    settled,
)
from tests.e2e.test_webhook_deploy import post
from tests.fixtures.webhooks.forge import SECRET, changed, github

pytestmark = [pytest.mark.root, pytest.mark.lxc, pytest.mark.nginx, pytest.mark.slow]
ZERO = "0" * 40


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Daemon, Admiral]]:
    with admiral_squadron(tmp_path) as pair:
        yield pair


def status(d: Daemon) -> dict[str, dict]:
    apps = json.loads(d.hd("status", "--json").stdout)["apps"]
    return {row["app"]: row for row in apps}


def previews(d: Daemon) -> set[str]:
    """The preview records on disk, as a person would find them."""
    found = set()
    for path in (d.data / "records" / "apps").glob("*.json"):
        if json.loads(path.read_text()).get("preview_of") == "web":
            found.add(path.stem)
    return found


def ordered_web(d: Daemon, admiral: Admiral, tmp_path: Path, orders: str) -> Path:
    """HQ orders `web`; its master is pushed and served: the working copy."""
    hq = admiral.working_copy(tmp_path / "hq", "headquarters")
    pub = Path(f"{admiral.key}.pub").read_text()
    admiral.commit(hq, {"authorized_keys/alice.pub": pub, "web/orders": orders})
    admiral.git("push", "hyperdrive", "master", cwd=hq)
    d.wait_event("AppOrdered", 30, app="web")
    work = admiral.working_copy(tmp_path / "web", "web")
    admiral.commit(work, {"index.html": "live\n"})
    admiral.git("push", "hyperdrive", "master", cwd=work)
    wait_for(lambda: http_get(d.http_port, "/web/") == (200, "live\n"), 60, 0.3, "web served")
    return work


def push_branch(admiral: Admiral, work: Path, branch: str, text: str) -> str:
    admiral.git("checkout", "-q", "-B", branch, "master", cwd=work)
    admiral.commit(work, {"index.html": text})
    pushed = admiral.git("push", "hyperdrive", branch, cwd=work)
    admiral.git("checkout", "-q", "master", cwd=work)
    return pushed.stdout + pushed.stderr


def test_a_branch_push_deploys_a_preview_and_its_deletion_retires_it(
    fleet: tuple[Daemon, Admiral], tmp_path: Path
) -> None:
    d, admiral = fleet
    work = ordered_web(d, admiral, tmp_path, "previews on\nhealthcheck / 10\n")
    live = status(d)["web"]["ship"]

    said = push_branch(admiral, work, "feature/x", "preview of x\n")
    assert "web--feature-x" in said, said
    assert http_get(d.http_port, "/web--feature-x/") == (200, "preview of x\n")
    assert http_get(d.http_port, "/web/") == (200, "live\n")
    rows = status(d)
    assert rows["web"]["ship"] == live
    env = (d.data / "lxc" / rows["web--feature-x"]["ship"] / "run" / "env").read_text()
    assert "PREVIEW=1" in env
    assert "PREVIEW_BRANCH=feature/x" in env
    assert "PREVIEW" not in (d.data / "lxc" / live / "run" / "env").read_text()

    deleted = admiral.git("push", "hyperdrive", "--delete", "feature/x", cwd=work)
    assert "retired" in deleted.stdout + deleted.stderr
    d.wait_event("AppRetired", 30, app="web--feature-x")
    assert http_get(d.http_port, "/web--feature-x/")[0] == 404
    assert http_get(d.http_port, "/web/") == (200, "live\n")
    assert status(d)["web"]["ship"] == live
    assert previews(d) == set()
    settled(d)
    assert_no_orphans(d)


def test_over_max_the_oldest_preview_is_retired_and_hd_retire_takes_one_down(
    fleet: tuple[Daemon, Admiral], tmp_path: Path
) -> None:
    d, admiral = fleet
    work = ordered_web(d, admiral, tmp_path, "previews on max 2\nhealthcheck / 10\n")
    live = status(d)["web"]["ship"]
    for branch in ("one", "two", "three"):
        push_branch(admiral, work, branch, f"{branch}\n")
        assert http_get(d.http_port, f"/web--{branch}/") == (200, f"{branch}\n")
    d.wait_event("AppRetired", 30, app="web--one")
    wait_for(lambda: previews(d) == {"web--two", "web--three"}, 30, 0.2, "two previews left")
    assert http_get(d.http_port, "/web--one/")[0] == 404

    retired = d.hd("retire", "web--two", timeout=60)
    assert "retired" in retired.stdout, retired.stdout + retired.stderr
    assert previews(d) == {"web--three"}
    assert http_get(d.http_port, "/web--two/")[0] == 404
    assert http_get(d.http_port, "/web--three/") == (200, "three\n")
    assert http_get(d.http_port, "/web/") == (200, "live\n")
    assert status(d)["web"]["ship"] == live
    settled(d)
    assert_no_orphans(d)


@pytest.fixture
def hooked(tmp_path: Path) -> Iterator[tuple[Daemon, Admiral]]:
    with admiral_squadron(tmp_path, HYPERDRIVE_WEBHOOK_SECRET=SECRET) as pair:
        yield pair


def branch_payload(url: str, ref: str, before: str, after: str) -> bytes:
    """GitHub's documented push payload for `ref` of the local "forge" repository."""

    def change(obj: dict) -> None:
        obj.update(ref=ref, before=before, after=after, deleted=after == ZERO)
        repo = obj["repository"]
        repo.update(
            clone_url=url, html_url=url, url=url, git_url=url, ssh_url=url, default_branch="master"
        )

    return changed("github_push", change)


def test_a_webhook_of_another_branch_deploys_its_preview_and_a_deletion_retires_it(
    hooked: tuple[Daemon, Admiral], tmp_path: Path
) -> None:
    d, admiral = hooked
    repo, work = forge_repo(admiral, tmp_path, {"index.html": "v1\n"})
    url = f"file://{repo}"
    hq = admiral.working_copy(tmp_path / "hq", "headquarters")
    pub = Path(f"{admiral.key}.pub").read_text()
    orders = f"autodeploy {url}\npreviews on\nhealthcheck / 10\n"
    admiral.commit(hq, {"authorized_keys/alice.pub": pub, "site/orders": orders})
    admiral.git("push", "hyperdrive", "master", cwd=hq)
    wait_for(lambda: http_get(d.http_port, "/site/") == (200, "v1\n"), 90, 0.3, "site served")

    admiral.git("checkout", "-q", "-b", "feature/y", cwd=work)
    admiral.commit(work, {"index.html": "preview of y\n"})
    admiral.git("push", "-q", "origin", "feature/y", cwd=work)
    tip = admiral.git("rev-parse", "HEAD", cwd=work).stdout.strip()
    status, answer = post(
        d, "github", *github(branch_payload(url, "refs/heads/feature/y", ZERO, tip))
    )
    assert status == 202, answer
    finished = d.wait_event("DeployFinished", 90, deploy=answer["deploys"]["site"])
    assert finished["app"] == "site--feature-y"
    assert http_get(d.http_port, "/site--feature-y/") == (200, "preview of y\n")
    assert http_get(d.http_port, "/site/") == (200, "v1\n")

    admiral.git("push", "-q", "origin", "--delete", "feature/y", cwd=work)
    gone = branch_payload(url, "refs/heads/feature/y", tip, ZERO)
    status, answer = post(d, "github", *github(gone))
    assert status == 202, answer
    d.wait_event("AppRetired", 30, app="site--feature-y")
    assert http_get(d.http_port, "/site--feature-y/")[0] == 404
    assert http_get(d.http_port, "/site/") == (200, "v1\n")
