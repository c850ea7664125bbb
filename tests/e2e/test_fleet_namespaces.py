"""Issue 15's fleet as on three machines: three squadrons, each daemon in a network namespace
of its own (tests/e2e/fleet_netns.py), formed by `hd fleet init` and `hd fleet join` into
one fleet of three JetStream nodes. Real daemons, nats-server, git over SSH, LXC and nginx.

One fleet serves the whole module (forming it is the slow part); the cases run in order and
each leaves the fleet whole for the next.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.e2e.fleet_netns import Fleet, NsDaemon, http_get, post_hook
from tests.e2e.squadron import forge_repo, settled
from tests.e2e.test_webhook_deploy import push_payload
from tests.fixtures.webhooks.forge import SECRET, github

pytestmark = [
    pytest.mark.root,
    pytest.mark.lxc,
    pytest.mark.nginx,
    pytest.mark.slow,
    pytest.mark.timeout(600),
]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    made = Fleet(tmp_path_factory.mktemp("fleet"), HYPERDRIVE_WEBHOOK_SECRET=SECRET)
    try:
        made.open()
        made.form()
        yield made
    finally:
        made.close()


def serves(d: NsDaemon, path: str, body: str, timeout: float = 120) -> None:
    try:
        wait_for(lambda: http_get(d, path) == (200, body), timeout, 0.3, f"{body!r}")
    except AssertionError as err:
        raise AssertionError(f"{err} on {d.netns}: fleet {d.fleet()}; log: {d.log()}") from None


def fleet_view(d: NsDaemon, timeout: float = 60) -> dict:
    """`hd fleet status --json` once the fleet's state can be read: just after a node came
    back, its leaders move and the command says it cannot read them yet, rather than
    listing nobody."""
    answers: list[str] = []

    def shown() -> dict | None:
        answer = d.hd("fleet", "status", "--json", check=False, timeout=30)
        if answer.returncode == 0:
            return json.loads(answer.stdout)
        answers.append(answer.stderr)
        assert "out of reach" in answer.stderr or "did not answer" in answer.stderr, answer.stderr
        return None

    try:
        return wait_for(shown, timeout, 1, "`hd fleet status`")
    except AssertionError as err:
        raise AssertionError(f"{err}: {answers[-3:]}") from None


@pytest.fixture(scope="module")
def site(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working copy of the app `site`, hosted on the first squadron."""
    work = tmp_path_factory.mktemp("site")
    return fleet.admiral(fleet.squadrons[0]).working_copy(work / "site", "site")


def push_site(fleet: Fleet, work: Path, text: str, *, wait: bool = True) -> None:
    admiral = fleet.admiral(fleet.squadrons[0])
    admiral.commit(work, {"index.html": text})
    options = [] if wait else ["-o", "nowait"]
    pushed = admiral.git("push", *options, "hyperdrive", "master", cwd=work)
    if wait:
        failed = [e for e in fleet.squadrons[0].events() if e.get("event") == "DeployFailed"]
        assert "site deployed" in pushed.stdout + pushed.stderr, [e["message"] for e in failed]


def test_a_push_to_a_is_served_by_a_b_and_c(fleet: Fleet, site: Path) -> None:
    push_site(fleet, site, "v1 on three squadrons\n")
    for d in fleet.squadrons:
        serves(d, "/site/", "v1 on three squadrons\n")


@pytest.fixture(scope="module")
def shop(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The app `shop` at a forge (a bare repo the squadrons fetch by file://): (forge, work)."""
    root = tmp_path_factory.mktemp("shop")
    return forge_repo(fleet.admiral(fleet.squadrons[2]), root, {"index.html": "v1 of the shop\n"})


def test_an_hq_push_to_c_orders_an_app_on_all_three(
    fleet: Fleet, shop: tuple[Path, Path], tmp_path: Path
) -> None:
    a, _, c = fleet.squadrons
    forge, _ = shop
    admiral = fleet.admiral(c)
    hq = admiral.working_copy(tmp_path / "hq", "headquarters")
    keys = {"authorized_keys/admiral.pub": Path(f"{fleet.key}.pub").read_text()}
    orders = {"shop/orders": f"autodeploy file://{forge}\nhealthcheck / 10\n"}
    admiral.commit(hq, {**keys, **orders})
    admiral.git("push", "hyperdrive", "master", cwd=hq)
    for d in fleet.squadrons:
        serves(d, "/shop/", "v1 of the shop\n")
    assert a.wait_event("AdmiralsChanged", 30)["admirals"] == ["admiral"]


def test_a_signed_webhook_delivered_twice_to_b_deploys_once_on_each(
    fleet: Fleet, shop: tuple[Path, Path]
) -> None:
    b = fleet.squadrons[1]
    forge, work = shop
    admiral = fleet.admiral(b)
    before = admiral.git("rev-parse", "HEAD", cwd=work).stdout.strip()
    admiral.commit(work, {"index.html": "v2 of the shop\n"})
    admiral.git("push", "-q", "origin", "master", cwd=work)
    after = admiral.git("rev-parse", "HEAD", cwd=work).stdout.strip()
    headers, body = github(push_payload(f"file://{forge}", before, after))
    status, answer = post_hook(b, "github", headers, body)
    assert status == 202, answer
    delivery = answer["deploys"]["shop"]
    for d in fleet.squadrons:
        serves(d, "/shop/", "v2 of the shop\n")
    status, again = post_hook(b, "github", headers, body)  # the forge delivers it again
    assert (status, again) == (200, {"status": "duplicate"})
    for d in fleet.squadrons:
        settled(d)
        queued = [e["deploy"] for e in d.events() if e.get("event") == "DeployQueued"]
        assert queued.count(delivery) == 1, d.netns


def test_c_stopped_during_two_pushes_serves_the_newest_when_back(fleet: Fleet, site: Path) -> None:
    a, b, c = fleet.squadrons
    c.stop()
    push_site(fleet, site, "v2 while C was down\n", wait=False)
    push_site(fleet, site, "v3 while C was down\n", wait=False)
    for d in (a, b):
        serves(d, "/site/", "v3 while C was down\n")
    c.start()
    serves(c, "/site/", "v3 while C was down\n")
    fleet.wait_connected()


def test_with_one_nats_node_killed_pushes_reach_the_others_and_it_catches_up(
    fleet: Fleet, site: Path
) -> None:
    a, b, c = fleet.squadrons
    b.stop()  # B's daemon would start its node again at once: stopped first
    b.kill_node()
    wait_for(lambda: b.node_pid() is None, 10, 0.1, "B's nats-server gone")
    push_site(fleet, site, "v4 with B's node gone\n", wait=False)
    push_site(fleet, site, "v5 with B's node gone\n", wait=False)
    for d in (a, c):  # two of three nodes: the R3 stream goes on
        serves(d, "/site/", "v5 with B's node gone\n")
    b.start()  # its node comes back from its store and catches up; so does B
    serves(b, "/site/", "v5 with B's node gone\n")
    fleet.wait_connected()
    assert b.node_pid() is not None


def test_forget_is_refused_for_a_squadron_that_is_up_and_for_oneself(fleet: Fleet) -> None:
    a, b, _ = fleet.squadrons
    name = b.env["HYPERDRIVE_NAME"]
    refused = a.hd("fleet", "forget", name, check=False, timeout=60)
    assert refused.returncode == 1
    assert f"{name} was seen" in refused.stderr
    assert "it is up" in refused.stderr
    own = a.hd("fleet", "forget", a.env["HYPERDRIVE_NAME"], check=False, timeout=60)
    assert own.returncode == 1
    assert "`hd fleet leave` instead" in own.stderr
    assert name in [s["name"] for s in fleet_view(a)["squadrons"]]  # nothing was dropped


HTTPD = "busybox httpd -f -p $PORT -h /app"
# v2 needs a key each squadron's operator puts in $DATA/includes; the second one forgot it
WAVE_V1 = {"Procfile": f"web: {HTTPD}\n", "index.html": "wave v1\n"}
WAVE_V2 = {"Procfile": f'web: test -n "$WAVE_KEY" && exec {HTTPD}\n', "index.html": "wave v2\n"}


def test_a_rollout_whose_health_check_fails_on_b_stops_there(fleet: Fleet, tmp_path: Path) -> None:
    """`rollout 1 2 100%`: the squadrons by name are the waves; v2 fails its health check on
    the second, so the first serves v2 and the third stays on v1 (held)."""
    first, second, third = sorted(fleet.squadrons, key=lambda d: d.env["HYPERDRIVE_NAME"])
    for d in (first, third):
        (d.data / "includes").mkdir(parents=True, exist_ok=True)
        (d.data / "includes" / "wave.env").write_text("WAVE_KEY=k-1\n")
    admiral = fleet.admiral(first)
    hq = admiral.working_copy(tmp_path / "hq", "headquarters")
    admiral.git("pull", "-q", "hyperdrive", "master", cwd=hq)  # HQ as the fleet has it
    admiral.commit(hq, {"wave/orders": "rollout 1 2 100%\nhealthcheck / 5\n"})
    admiral.git("push", "hyperdrive", "master", cwd=hq)
    work = admiral.working_copy(tmp_path / "wave", "wave")
    admiral.commit(work, WAVE_V1)
    admiral.git("push", "-o", "nowait", "hyperdrive", "master", cwd=work)
    for d in fleet.squadrons:
        serves(d, "/wave/", "wave v1\n")
        settled(d)
    admiral.commit(work, WAVE_V2)
    admiral.git("push", "-o", "nowait", "hyperdrive", "master", cwd=work)
    assert second.wait_event("RolloutStopped", 120, app="wave")
    held = third.wait_event("RolloutHeld", 60, app="wave")
    serves(first, "/wave/", "wave v2\n")
    for d in (second, third):
        serves(d, "/wave/", "wave v1\n")  # the old ship keeps serving
    started = {e.get("deploy") for e in third.events() if e.get("event") == "DeployStarted"}
    assert held["deploy"] not in started, "the third never started v2"

    def shown() -> dict[str, str] | None:
        status = json.loads(third.hd("fleet", "status", "--json").stdout)
        rows = [row for row in status["apps"] if row["app"] == "wave"]
        parts = {n: c.get("rollout") for n, c in rows[0]["squadrons"].items()} if rows else {}
        return parts if set(parts.values()) == {"live", "failed", "held"} else None

    parts = wait_for(shown, 60, 0.5, "the rollout shown as stopped")
    names = [d.env["HYPERDRIVE_NAME"] for d in (first, second, third)]
    assert parts == dict(zip(names, ["live", "failed", "held"], strict=True))
