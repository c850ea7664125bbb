"""Faults a user can cause or meet, end to end on real LXC and nginx: each leaves the running
version serving (checked over HTTP while it happens) and says why in an event."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Daemon, free_port, wait_for
from tests.e2e.squadron import (
    Admiral,
    AppRepo,
    Prober,
    assert_no_orphans,
    containers,
    git,
    http_get,
    keygen,
    make_squadron,
    teardown,
    wait_outcome,
)

pytestmark = [pytest.mark.root, pytest.mark.lxc, pytest.mark.nginx, pytest.mark.slow]

FAST = "healthcheck / 3\n"  # failures are known after 3 s instead of the default 60 s
OK_CGI = '#!/bin/sh\necho "Content-Type: text/plain"\necho\necho fine\n'
BAD_CGI = '#!/bin/sh\necho "Status: 500 Internal Server Error"\necho\necho broken\n'


@dataclass
class Fleet:
    """One squadron shared by the fault tests, its admiral and the published port it ordered."""

    d: Daemon
    admiral: Admiral
    hq: Path
    pub: str
    publish_port: int
    tmp: Path

    def repo(self, app: str) -> AppRepo:
        return AppRepo(self.d, app, self.tmp / "work" / app)

    def hq_push(self, files: dict[str, str]) -> subprocess.CompletedProcess[str]:
        self.admiral.commit(self.hq, files)
        return self.admiral.git("push", "hyperdrive", "master", cwd=self.hq, check=False)


def orders(publish_port: int) -> dict[str, str]:
    """Every app of the fault tests, ordered to fail fast."""
    files = {
        f"{app}/orders": FAST
        for app in ("build", "deaf", "wrongport", "crash", "hand", "other", "porty")
    }
    files["sick/orders"] = "healthcheck /cgi-bin/health 3\n"
    files["pub/orders"] = f"export PUBLISH_PORT={publish_port}\nservername pub.test\n{FAST}"
    # PORT is the port inside the app's own ship: the same number as pub's PUBLISH_PORT is fine
    files["porty/orders"] = f"export PORT={publish_port}\n{FAST}"
    return files


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("faults")
    d = make_squadron(tmp / "hd", HYPERDRIVE_DRAIN_SECONDS="1.5")
    key = keygen(tmp / "admiral")
    pub = Path(f"{key}.pub").read_text()
    (d.root / "admirals.pub").write_text(pub)
    try:
        d.start()
        admiral = Admiral(d, key)
        hq = admiral.working_copy(tmp / "hq", "headquarters")
        port = free_port()
        admiral.commit(hq, {"authorized_keys/alice.pub": pub, **orders(port)})
        admiral.git("push", "hyperdrive", "master", cwd=hq)
        d.wait_event("HeadquartersSynced", timeout=30)
        yield Fleet(d, admiral, hq, pub, port, tmp)
    finally:
        teardown(d)


def deploy(repo: AppRepo, files: dict[str, str], executable: tuple[str, ...] = ()) -> dict:
    return wait_outcome(repo.d, repo.push_trigger(repo.commit(files, executable=executable)))


def live(repo: AppRepo, body: str, files: dict[str, str] | None = None) -> None:
    """Deploy a good version and check it is what users get."""
    outcome = deploy(repo, files or {"index.html": body})
    assert outcome["event"] == "DeployFinished", outcome.get("message")
    assert http_get(repo.d.http_port, f"/{repo.app}/") == (200, body)


def failed_but_served(repo: AppRepo, files: dict[str, str], old: str, stage: str) -> dict:
    """Push a bad version while a client keeps asking: it only ever gets the old version."""
    with Prober(repo.d.http_port, f"/{repo.app}/") as probe:
        outcome = deploy(repo, files)
    assert outcome["event"] == "DeployFailed", outcome
    assert outcome["stage"] == stage, outcome
    assert "keeps serving" in outcome["message"]
    assert probe.failures == [], probe.answers
    assert probe.bodies == {old}, probe.answers
    assert http_get(repo.d.http_port, f"/{repo.app}/") == (200, old)
    return outcome


def events_of(d: Daemon, deploy_id: str) -> dict[str, dict]:
    return {e["event"]: e for e in d.events() if e.get("deploy") == deploy_id}


def test_build_command_fails(fleet: Fleet) -> None:
    repo = fleet.repo("build")
    live(repo, "build one\n")
    bad = {"bin/build": "#!/bin/sh\necho compiling\nexit 3\n", "Procfile": "web: sleep 1\n"}
    outcome = failed_but_served(repo, bad, "build one\n", "build")
    said = events_of(fleet.d, outcome["deploy"])
    assert "exited 3" in said["BuildFailed"]["message"]
    assert "compiling" in Path(outcome["log"]).read_text()


def test_app_never_listens(fleet: Fleet) -> None:
    repo = fleet.repo("deaf")
    live(repo, "deaf one\n")
    outcome = failed_but_served(repo, {"Procfile": "web: sleep 600\n"}, "deaf one\n", "health")
    said = events_of(fleet.d, outcome["deploy"])["HealthCheckFailed"]["message"]
    assert ":3000/" in said, said
    assert "after 3 s" in said, said
    assert "did not answer" in said, said
    assert "listens on no TCP port" in said, said


def test_app_listens_on_the_wrong_port(fleet: Fleet) -> None:
    repo = fleet.repo("wrongport")
    live(repo, "wrong one\n")
    files = {"Procfile": "web: busybox httpd -f -p 9999 -h /app\n"}
    outcome = failed_but_served(repo, files, "wrong one\n", "health")
    said = events_of(fleet.d, outcome["deploy"])["HealthCheckFailed"]["message"]
    assert "listens on 9999, not on PORT 3000" in said, said


def test_health_check_answers_500(fleet: Fleet) -> None:
    repo = fleet.repo("sick")
    cgi = ("cgi-bin/health",)
    outcome = deploy(repo, {"index.html": "sick one\n", "cgi-bin/health": OK_CGI}, cgi)
    assert outcome["event"] == "DeployFinished", outcome
    with Prober(fleet.d.http_port, "/sick/") as probe:
        outcome = deploy(repo, {"index.html": "sick two\n", "cgi-bin/health": BAD_CGI}, cgi)
    assert outcome["event"] == "DeployFailed", outcome
    assert outcome["stage"] == "health", outcome
    assert probe.failures == [], probe.answers
    assert probe.bodies == {"sick one\n"}, probe.answers
    said = events_of(fleet.d, outcome["deploy"])["HealthCheckFailed"]["message"]
    assert "/cgi-bin/health answered HTTP 500 after 3 s" in said, said


def test_app_crashing_right_after_the_swap_is_rolled_back(fleet: Fleet) -> None:
    """Decided behaviour: the old ship keeps running through the drain while the new one is
    watched through the app's stable address; if the new one stops answering then, traffic goes
    back to the old ship (RolledBack says why) and the deploy has failed at the drain: a deploy
    finishes only after its drain. A crash after the drain is left to the ship's respawn loop,
    which restarts the app after 1 s and notes each exit in run/app.log."""
    repo = fleet.repo("crash")
    live(repo, "crash one\n")
    # serves for 0.6 s (long enough to pass health and the swap), then dies; respawned 1 s later
    crash = "web: busybox httpd -f -p $PORT -h /app & sleep 0.6; kill $!; exit 1\n"
    outcome = deploy(repo, {"index.html": "crash two\n", "Procfile": crash})
    assert outcome["event"] == "DeployFailed", outcome
    assert outcome["stage"] == "drain", outcome
    assert "rolled back" in outcome["message"], outcome
    assert "keeps serving" in outcome["message"], outcome
    story = events_of(fleet.d, outcome["deploy"])
    assert "DeployFinished" not in story, story
    assert "stopped answering" in story["RolledBack"]["message"], story
    assert story["RolledBack"]["seq"] < outcome["seq"], story
    again = fleet.d.hd("deploy", "crash", check=False, timeout=60)  # the same commit, by hand
    assert again.returncode == 1, again.stdout + again.stderr
    assert "rolled back" in again.stdout, again.stdout
    assert http_get(fleet.d.http_port, "/crash/") == (200, "crash one\n")
    with Prober(fleet.d.http_port, "/crash/") as probe:
        wait_outcome(fleet.d, repo.push_trigger(repo.commit({"Procfile": "web: sleep 1\n"})))
    assert probe.bodies == {"crash one\n"}, probe.answers
    assert probe.failures == [], probe.answers


def test_port_equal_to_another_apps_publish_port_is_fine(fleet: Fleet) -> None:
    """PORT is where the app listens inside its own ship; PUBLISH_PORT a port of the host."""
    pub, porty = fleet.repo("pub"), fleet.repo("porty")
    live(pub, "pub\n")
    live(porty, "porty\n")
    assert http_get(fleet.publish_port, "/") == (200, "pub\n")
    assert http_get(fleet.d.http_port, "/", host="pub.test") == (200, "pub\n")


def test_claiming_a_taken_publish_port_or_servername_is_refused_at_push(fleet: Fleet) -> None:
    pub = fleet.repo("pub")
    if not (fleet.d.data / "records" / "apps" / "pub.json").exists():
        live(pub, "pub\n")
    taken = {
        "porty/orders": f"export PUBLISH_PORT={fleet.publish_port}\n{FAST}",
        "other/orders": f"servername pub.test\n{FAST}",
    }
    with Prober(fleet.d.http_port, "/", host="pub.test") as probe:
        pushed = fleet.hq_push(taken)
    said = pushed.stdout + pushed.stderr
    assert pushed.returncode != 0, said
    # the check names both apps (it blames whichever comes later in alphabetical order)
    port = clash(said, f"PUBLISH_PORT {fleet.publish_port} is already published by")
    assert "porty/orders:1" in port, said
    assert "pub/orders:1" in port, said
    host = clash(said, "servername pub.test is already served by")
    assert "other" in host, said
    assert "pub/orders:2" in host, said
    subprocess.run(["git", "reset", "-q", "--hard", "HEAD~1"], cwd=fleet.hq, check=True, timeout=10)
    assert probe.failures == []
    assert probe.bodies == {"pub\n"}
    assert http_get(fleet.publish_port, "/") == (200, "pub\n")


def clash(output: str, words: str) -> str:
    return next((line for line in output.splitlines() if words in line), f"no line: {words}")


def test_nginx_config_broken_by_hand(fleet: Fleet) -> None:
    """A generated file edited by hand is replaced by the next deploy; an admiral's bad override
    only fails that app's own deploy, with nginx's words, and nobody stops being served."""
    hand, other = fleet.repo("hand"), fleet.repo("other")
    live(hand, "hand one\n")
    live(other, "other one\n")
    nginx = fleet.d.var / "nginx"
    (nginx / "hosts.conf").write_text("this is { not nginx\n")
    live(hand, "hand two\n")
    assert "not nginx" not in (nginx / "hosts.conf").read_text()

    override = nginx / "overrides" / "other.conf"
    override.write_text("proxy_pass_typo on;\n")
    try:
        with Prober(fleet.d.http_port, "/other/") as probe:
            live(hand, "hand three\n")
            outcome = deploy(other, {"index.html": "other two\n"})
        assert outcome["event"] == "DeployFailed", outcome
        assert outcome["stage"] == "swap", outcome
        rejected = events_of(fleet.d, outcome["deploy"])["NginxConfigRejected"]["message"]
        assert "proxy_pass_typo" in rejected, rejected
        assert "overrides/other.conf" in rejected, rejected
        assert probe.failures == [], probe.answers
        assert probe.bodies == {"other one\n"}, probe.answers
        assert http_get(fleet.d.http_port, "/hand/") == (200, "hand three\n")
    finally:
        override.unlink()
    live(other, "other three\n")


def test_ten_pushes_within_a_second_deploy_only_the_last(fleet: Fleet) -> None:
    repo = fleet.repo("rapid")
    # A build that takes a while keeps each deploy short of its swap while the next push lands
    # (a static deploy alone finishes in ~75 ms, faster than the pushes arrive).
    slow = {
        "bin/build": "#!/bin/sh\nsleep 3\n",
        "Procfile": "web: busybox httpd -f -p $PORT -h /app\n",
    }
    shas = [repo.commit({**slow, "index.html": f"rapid {i}\n"}) for i in range(10)]
    started = time.monotonic()
    ids = [repo.push_trigger(sha) for sha in shas]
    assert time.monotonic() - started < 3, "the pushes must land while the first still builds"
    outcomes = [wait_outcome(fleet.d, deploy_id, timeout=60) for deploy_id in ids]
    assert [o["event"] for o in outcomes] == ["DeploySuperseded"] * 9 + ["DeployFinished"]
    assert http_get(fleet.d.http_port, "/rapid/") == (200, "rapid 9\n")
    swapped = [
        e for e in fleet.d.events() if e["event"] == "TrafficSwapped" and e["app"] == "rapid"
    ]
    assert [e["deploy"] for e in swapped] == [ids[-1]]
    rapid = {c for c in containers(fleet.d) if "-rapid-" in c}
    assert rapid == {f"{fleet.d.env['HYPERDRIVE_NAME']}-rapid-{shas[-1][:7]}"}
    assert_no_orphans(fleet.d)


def test_five_apps_deployed_at_once(fleet: Fleet) -> None:
    repos = [fleet.repo(f"five{i}") for i in range(5)]
    ids = [repo.push_trigger(repo.commit({"index.html": f"{repo.app}\n"})) for repo in repos]
    outcomes = [wait_outcome(fleet.d, deploy_id, timeout=90) for deploy_id in ids]
    assert {o["event"] for o in outcomes} == {"DeployFinished"}, outcomes
    for repo in repos:
        assert http_get(fleet.d.http_port, f"/{repo.app}/") == (200, f"{repo.app}\n")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Daemon]:
    """A squadron whose lxcpath is a 24 MiB tmpfs the test can fill up."""
    d = make_squadron(tmp_path / "hd")
    lxcpath = d.var / "containers"
    lxcpath.mkdir(parents=True)
    mount = ["mount", "-t", "tmpfs", "-o", "size=24m", "hd-test-lxcpath", str(lxcpath)]
    subprocess.run(mount, check=True, timeout=10)
    try:
        d.start()
        yield d
    finally:
        teardown(d)
        subprocess.run(["umount", "-l", str(lxcpath)], timeout=30)


def test_a_snapshot_fails_on_a_full_disk(small_disk: Daemon, tmp_path: Path) -> None:
    d = small_disk
    repo = AppRepo(d, "web", tmp_path / "web")
    live(repo, "disk one\n")
    filler = d.var / "containers" / "filler"
    dd = ["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=64"]
    subprocess.run(dd, capture_output=True, timeout=30)  # stops with ENOSPC: the disk is full
    outcome = failed_but_served(repo, {"index.html": "disk two\n"}, "disk one\n", "assemble")
    assert "could not snapshot hull" in outcome["message"], outcome
    assert "No space left on device" in outcome["message"], outcome
    filler.unlink()
    live(repo, "disk three\n")
    assert_no_orphans(d)


def test_remote_headquarters_clash_is_refused_by_nginx_alone(tmp_path: Path) -> None:
    """A remote HQ has no push check: the app whose new orders claim a taken servername or
    PUBLISH_PORT fails its own deploy at the swap (nginx routes refuse it) and keeps its old
    ship; the app that owns them, and every other app, keep serving and deploying."""
    hq = tmp_path / "hq"
    hq.mkdir()
    git("init", "-q", "-b", "master", cwd=hq)
    port = free_port()
    files = {
        "a/orders": f"servername shop.test\nexport PUBLISH_PORT={port}\n{FAST}",
        "b/orders": FAST,
        "c/orders": FAST,
    }
    hq_commit(hq, files)
    d = make_squadron(tmp_path / "hd", HYPERDRIVE_HEADQUARTERS=f"file://{hq}")
    try:
        d.start()
        d.hd("headquarters", "sync", timeout=60)
        repos = {app: AppRepo(d, app, tmp_path / app) for app in "abc"}
        for app, repo in repos.items():
            live(repo, f"{app} one\n")
        files = {
            "b/orders": f"servername shop.test\n{FAST}",
            "c/orders": f"export PUBLISH_PORT={port}\n{FAST}",
        }
        sha = hq_commit(hq, files)
        with Prober(d.http_port, "/", host="shop.test") as shop, Prober(d.http_port, "/b/") as b:
            d.hd("headquarters", "sync", timeout=60)
            for app, taken in (("b", "server name shop.test"), ("c", f"PUBLISH_PORT {port}")):
                refused = nginx_refused(d, app, f"hq-{sha[:7]}-{app}")
                assert f"{app}: {taken} is already taken by a" in refused
            live(repos["a"], "a two\n")
        assert shop.failures == [], shop.answers
        assert shop.bodies <= {"a one\n", "a two\n"}, shop.answers
        assert b.failures == [], b.answers
        assert b.bodies == {"b one\n"}, b.answers
        assert http_get(port, "/") == (200, "a two\n")
        assert http_get(d.http_port, "/c/") == (200, "c one\n")
    finally:
        teardown(d)


def nginx_refused(d: Daemon, app: str, prefix: str) -> str:
    """The DeployFailed of the HQ deploy of `app` (its id starts with `prefix`), checked."""

    def outcome() -> dict | None:
        for event in d.events():
            if event["event"] == "DeployFailed" and event["deploy"].startswith(prefix):
                return event
        return None

    failed = wait_for(outcome, 60, 0.1, f"the HQ deploy of {app} to fail")
    assert failed["stage"] == "swap", failed
    assert "NginxConfigRejected" in events_of(d, failed["deploy"])
    return str(failed["message"])


def hq_commit(hq: Path, files: dict[str, str]) -> str:
    for name, text in files.items():
        (hq / name).parent.mkdir(parents=True, exist_ok=True)
        (hq / name).write_text(text)
    git("add", "-A", cwd=hq)
    git("commit", "-q", "-m", "orders", cwd=hq)
    return git("rev-parse", "HEAD", cwd=hq)
