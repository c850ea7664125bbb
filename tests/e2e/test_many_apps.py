"""A squadron of many apps, end to end on real LXC and nginx: adding one more serves it and
leaves every other app serving; a bad config for the new app is refused with nginx's words
while the others go on being served; retiring it takes only its own route away."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hyperdrive.nginx_reload import app_part
from tests.conftest import Daemon
from tests.e2e.squadron import (
    AppRepo,
    Prober,
    http_get,
    make_squadron,
    settled,
    teardown,
    wait_outcome,
)

pytestmark = [pytest.mark.root, pytest.mark.lxc, pytest.mark.nginx, pytest.mark.slow]

APPS = [f"app{n:02d}" for n in range(12)]


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Path]]:
    """A squadron serving the twelve APPS, each its own name as its page."""
    tmp = tmp_path_factory.mktemp("many")
    d = make_squadron(tmp / "hd")
    try:
        d.start()
        deploys = []
        for app in APPS:
            repo = AppRepo(d, app, tmp / app)
            deploys.append(repo.push_trigger(repo.commit({"index.html": f"{app}\n"})))
        for deploy in deploys:
            assert wait_outcome(d, deploy)["event"] == "DeployFinished"
        settled(d, 60)
        yield d, tmp
    finally:
        teardown(d)


def every_app_serves(d: Daemon) -> None:
    for app in APPS:
        assert http_get(d.http_port, f"/{app}/") == (200, f"{app}\n"), app


def live_parts(d: Daemon) -> dict[str, str]:
    conf = d.var / "nginx" / "conf"
    return {f"{p}.conf": (conf / f"{p}.conf").read_text() for p in ("upstream", "proxies")}


def test_an_app_added_among_many_serves_and_the_others_keep_serving(
    many: tuple[Daemon, Path],
) -> None:
    d, tmp = many
    repo = AppRepo(d, "newcomer", tmp / "newcomer")
    with Prober(d.http_port, "/app00/") as first, Prober(d.http_port, "/app11/") as last:
        outcome = wait_outcome(d, repo.push_trigger(repo.commit({"index.html": "new\n"})))
        assert outcome["event"] == "DeployFinished", outcome
    assert http_get(d.http_port, "/newcomer/") == (200, "new\n")
    assert (first.failures, last.failures) == ([], []), (first.answers, last.answers)
    every_app_serves(d)
    parts = live_parts(d)
    for app in [*APPS, "newcomer"]:  # one section per app in each part file, its own
        section = app_part(parts, "upstream", app)
        assert section is not None, app
        assert f"upstream app_{app} {{" in section
        assert section.count("upstream ") == 1
    settled(d)
    d.hd("retire", "newcomer", timeout=60)
    assert http_get(d.http_port, "/newcomer/")[0] == 404
    assert app_part(live_parts(d), "proxies", "newcomer") is None
    every_app_serves(d)


def test_a_bad_config_for_a_new_app_is_refused_and_the_others_keep_serving(
    many: tuple[Daemon, Path],
) -> None:
    d, tmp = many
    override = d.var / "nginx" / "overrides" / "broken.conf"
    override.parent.mkdir(parents=True, exist_ok=True)
    override.write_text("proxy_pass_typo on;\n")
    repo = AppRepo(d, "broken", tmp / "broken")
    before = live_parts(d)
    try:
        with Prober(d.http_port, "/app05/") as probe:
            sha = repo.commit({"index.html": "broken\n"})
            outcome = wait_outcome(d, repo.push_trigger(sha))
        assert outcome["event"] == "DeployFailed", outcome
        assert outcome["stage"] == "swap", outcome
        refused = [
            e["message"]
            for e in d.events()
            if e["event"] == "NginxConfigRejected" and e.get("deploy") == outcome["deploy"]
        ]
        assert refused, outcome
        assert "proxy_pass_typo" in refused[0]
        assert probe.failures == [], probe.answers
        assert http_get(d.http_port, "/broken/")[0] == 404
        assert live_parts(d) == before  # the config in force is the one before
        every_app_serves(d)
    finally:
        override.unlink()
    settled(d)
    outcome = wait_outcome(d, repo.push_trigger(repo.commit({"index.html": "mended\n"})))
    assert outcome["event"] == "DeployFinished", outcome
    assert http_get(d.http_port, "/broken/") == (200, "mended\n")
    every_app_serves(d)
