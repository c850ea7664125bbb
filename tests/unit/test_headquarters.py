"""Reading a headquarters (folder and bare git repo), admiral keys, push checks and the plan."""

import subprocess
import sys
import textwrap
from pathlib import Path

import asyncssh
import pytest

from hyperdrive.errors import InvalidName, OrdersRejected
from hyperdrive.headquarters import (
    Headquarters,
    Orders,
    Plan,
    check,
    parse_admiral_file,
    parse_orders,
    plan,
    read_headquarters,
    read_headquarters_from_git,
)
from tests.conftest import GIT_ENV


@pytest.fixture(scope="module")
def keys() -> list[asyncssh.SSHKey]:
    return [asyncssh.generate_private_key("ssh-ed25519") for _ in range(3)]


def pub(key: asyncssh.SSHKey, comment: str = "") -> str:
    line = key.export_public_key("openssh").decode().strip()
    return f"{line} {comment}".strip() + "\n"


def write_tree(root: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


def orders(app: str, text: str) -> Orders:
    return parse_orders(text, f"{app}/orders", default_hull="debian")


def hq_of(**apps: str) -> Headquarters:
    return Headquarters(apps={app: orders(app, text) for app, text in apps.items()})


# ─── admiral keys ────────────────────────────────────────────────────────────


def test_admiral_file_with_two_keys_and_comments(keys) -> None:
    data = f"# alice's keys\n{pub(keys[0], 'laptop')}\n{pub(keys[1])}".encode()
    loaded = parse_admiral_file("alice@example.com.pub", data)
    assert [key.admiral for key in loaded] == ["alice@example.com"] * 2
    assert loaded[0].line == pub(keys[0], "laptop").strip()
    assert loaded[0].fingerprint == keys[0].get_fingerprint("sha256")
    assert loaded[0].fingerprint.startswith("SHA256:")


@pytest.mark.parametrize(
    "content", [b"hello world\n", b"ssh-ed25519 AAAAnotbase64\n", b"", b"# only\n"]
)
def test_pub_file_that_is_not_a_key(content: bytes) -> None:
    with pytest.raises(ValueError, match=r"OpenSSH|no key"):
        parse_admiral_file("bob.pub", content)


@pytest.mark.parametrize("fmt", ["openssh", "pkcs8-pem"])
def test_private_key_is_refused_and_never_echoed(keys, fmt: str) -> None:
    secret = keys[2].export_private_key(fmt)
    with pytest.raises(ValueError, match="PRIVATE key") as caught:
        parse_admiral_file("carol.pub", pub(keys[0]).encode() + secret)
    body = [line for line in secret.decode().splitlines() if "-----" not in line]
    assert not any(chunk in str(caught.value) for chunk in body)


def test_admiral_name_must_be_usable(keys) -> None:
    with pytest.raises(ValueError, match="admiral name"):
        parse_admiral_file("-rf.pub", pub(keys[0]).encode())


# ─── reading a checkout ──────────────────────────────────────────────────────


def sample_files(keys) -> dict[str, str | bytes]:
    return {
        "authorized_keys/alice.pub": pub(keys[0]),
        "authorized_keys/README.md": "not a key file, ignored\n",
        "api/orders": "autodeploy https://example.com/api.git#main\nexport PORT=8080\n",
        "web/orders": "hull busybox\nservername www.example.com\n",
        "broken/orders": "export PORT=http\n",
        "Capital/orders": "",
        "docs/README.md": "a folder without orders is not an app\n",
        ".git/orders": "ignored\n",
        ".github/x/orders": "ignored\n",
    }


def test_read_headquarters_folder(tmp_path, keys) -> None:
    hq = read_headquarters(write_tree(tmp_path, sample_files(keys)), "debian")
    assert sorted(hq.apps) == ["api", "web"]
    assert hq.apps["api"].branch == "main"
    assert hq.apps["api"].hull == "debian"
    assert hq.apps["web"].hull == "busybox"
    assert sorted(hq.rejected) == ["Capital", "broken"]
    assert hq.rejected["broken"].line == 1
    assert "invalid app name" in hq.rejected["Capital"].message
    assert list(hq.admirals) == ["alice"]
    assert hq.key_errors == []


def test_bad_key_files_are_reported_not_loaded(tmp_path, keys) -> None:
    files = {
        "authorized_keys/alice.pub": pub(keys[0]),
        "authorized_keys/oops.pub": keys[1].export_private_key("openssh"),
        "authorized_keys/junk.pub": "this is not a key\n",
        "authorized_keys/twin.pub": pub(keys[0]),
    }
    hq = read_headquarters(write_tree(tmp_path, files), "debian")
    assert list(hq.admirals) == ["alice"]
    errors = "\n".join(hq.key_errors)
    assert "authorized_keys/oops.pub: holds a PRIVATE key" in errors
    assert "authorized_keys/junk.pub: line 1 is not an OpenSSH public key" in errors
    assert "authorized_keys/twin.pub: key SHA256:" in errors
    assert "already belongs to alice" in errors


def test_symlinks_are_refused_not_followed(tmp_path, keys) -> None:
    secret = tmp_path / "secret"
    secret.write_text("export STOLEN=1\n")
    hq_root = write_tree(tmp_path / "hq", {"authorized_keys/alice.pub": pub(keys[0])})
    (hq_root / "api").mkdir()
    (hq_root / "api" / "orders").symlink_to(secret)
    (hq_root / "authorized_keys" / "mallory.pub").symlink_to(secret)
    hq = read_headquarters(hq_root, "debian")
    assert "api" not in hq.apps
    assert "not a regular file" in hq.rejected["api"].message
    assert hq.key_errors == [
        "authorized_keys/mallory.pub: not a regular file (symlinks are not followed)"
    ]


def test_a_folder_named_orders_or_pub_is_refused_not_read(tmp_path, keys) -> None:
    hq_root = write_tree(tmp_path / "hq", {"authorized_keys/alice.pub": pub(keys[0])})
    (hq_root / "api" / "orders").mkdir(parents=True)
    (hq_root / "authorized_keys" / "bob.pub").mkdir()
    hq = read_headquarters(hq_root, "debian")
    assert "not a regular file" in hq.rejected["api"].message
    assert hq.key_errors == [
        "authorized_keys/bob.pub: not a regular file (symlinks are not followed)"
    ]


def test_huge_and_binary_orders_in_a_checkout(tmp_path) -> None:
    files: dict[str, str | bytes] = {
        "big/orders": b"#" * 10_000_000,
        "bin/orders": b"\x7fELF\x00\x01",
    }
    hq = read_headquarters(write_tree(tmp_path, files), "debian")
    assert "too big" in hq.rejected["big"].message
    assert "binary" in hq.rejected["bin"].message


def test_app_named_like_the_hq_repo_is_rejected(tmp_path) -> None:
    hq = read_headquarters(write_tree(tmp_path, {"headquarters/orders": ""}), "debian")
    assert "HQ repo's own name" in hq.rejected["headquarters"].message


# ─── check ───────────────────────────────────────────────────────────────────


def test_check_accepts_a_good_hq(tmp_path, keys) -> None:
    files = {"authorized_keys/a.pub": pub(keys[0]), "api/orders": "export PUBLISH_PORT=8443\n"}
    hq = read_headquarters(write_tree(tmp_path, files), "debian")
    assert check(hq, bootstrap_keys_present=False) == []


def test_check_reports_every_problem_as_file_line_message(tmp_path, keys) -> None:
    files = {
        "authorized_keys/a.pub": pub(keys[0]),
        "authorized_keys/oops.pub": keys[1].export_private_key("openssh"),
        "api/orders": "export PUBLISH_PORT=8443\nservername example.com\n",
        "web/orders": "servername www.example.com\n\nexport PUBLISH_PORT=8443\n",
        "www/orders": "servername EXAMPLE.com\n",
        "bad/orders": "\nfrobnicate\n",
        "Caps/orders": "",
        "odd/orders": "export PUBLISH_PORT=80\n",
    }
    hq = read_headquarters(write_tree(tmp_path, files), "debian")
    problems = check(hq, bootstrap_keys_present=True, reserved_ports={80: "Hyperdrive's HTTP port"})
    assert problems == [
        "Caps/orders: invalid app name 'Caps': use [a-z0-9][a-z0-9-]{0,38}",
        "bad/orders:2: unknown directive 'frobnicate'; known: autodeploy, branch, export, "
        "hull, healthcheck, servername, memory, cpus, egress, secret, previews, forge, notify, "
        "guard, drain, rollout, https",
        "authorized_keys/oops.pub: holds a PRIVATE key: it was not loaded; remove it from HQ "
        "and replace that key",
        "odd/orders:1: PUBLISH_PORT 80 is Hyperdrive's HTTP port",
        "web/orders:3: PUBLISH_PORT 8443 is already published by api (api/orders:1)",
        "www/orders:1: servername example.com is already served by api (api/orders:2)",
    ]


def test_servername_against_implicit_domain_names() -> None:
    hq = hq_of(api="", web="servername api.example.org")
    assert check(hq, bootstrap_keys_present=True) == []
    assert check(hq, bootstrap_keys_present=True, domain="example.org") == [
        "web/orders:1: servername api.example.org is already served by api "
        "(its own name under the domain)"
    ]


def test_lockout_rule(keys) -> None:
    no_keys = hq_of(api="")
    assert check(no_keys, bootstrap_keys_present=True) == []
    [problem] = check(no_keys, bootstrap_keys_present=False)
    assert "no valid admiral key" in problem
    only_bad_keys = Headquarters(key_errors=["authorized_keys/x.pub: line 1 is not …"])
    assert len(check(only_bad_keys, bootstrap_keys_present=False)) == 2


# ─── plan ────────────────────────────────────────────────────────────────────


def test_plan_renders_each_kind_of_change() -> None:
    old = hq_of(api="export PORT=3000", web="", old="")
    new = hq_of(api="export PORT=3001", web="", new="")
    result = plan(old, new, {}, {})
    assert result == Plan(
        added=("new",),
        changed={"api": "PORT 3000→3001"},
        removed=("old",),
        unchanged=("web",),
        running=frozenset({"api", "web", "old"}),
    )
    assert result.lines() == [
        "api: redeploy (PORT 3000→3001)",
        "new: deploy",
        "old: retire",
        "web: unchanged",
    ]


def test_first_hq_deploys_everything() -> None:
    assert plan(None, hq_of(a="", b=""), {}, {}).lines() == ["a: deploy", "b: deploy"]


def test_rejected_orders_keep_the_ship_and_the_rest_proceeds() -> None:
    old = hq_of(api="", web="")
    err = OrdersRejected("api/orders", 2, "unknown directive 'x'")
    new = Headquarters(apps={"web": orders("web", "export A=1")}, rejected={"api": err, "neu": err})
    result = plan(old, new, {}, {})
    assert result.removed == ()
    assert result.lines() == [
        "api: rejected, keeps its current ship (api/orders:2: unknown directive 'x')",
        "neu: rejected, not deployed (api/orders:2: unknown directive 'x')",
        "web: redeploy (A added)",
    ]


def test_an_app_rejected_before_and_deleted_now_is_retired() -> None:
    err = OrdersRejected("api/orders", 1, "bad")
    old = Headquarters(rejected={"api": err, "../x": err})
    assert plan(old, Headquarters(), {}, {}).removed == ("api",)


def test_hq_that_deletes_every_app_retires_each() -> None:
    result = plan(hq_of(a="", b="", c=""), Headquarters(), {}, {})
    assert result.removed == ("a", "b", "c")
    assert result.lines() == ["a: retire", "b: retire", "c: retire"]


def test_reasons_never_show_secret_values() -> None:
    old = hq_of(api="export TOKEN=old-secret\nautodeploy https://u:pw1@h/x.git")
    new = hq_of(api="export TOKEN=new-secret\nautodeploy https://u:pw2@h/x.git")
    [line] = plan(old, new, {}, {}).lines()
    assert line == "api: redeploy (autodeploy URL changed, TOKEN changed)"


def test_reasons_for_every_field() -> None:
    old = hq_of(api="autodeploy /r.git\nhull debian\nmemory 256M\ncpus 1\nservername a.com b.com")
    new = hq_of(
        api="autodeploy /r.git dev\nhull busybox\nmemory 1G\ncpus 1.5\nservername b.com c.com"
    )
    reason = plan(old, new, {}, {}).changed["api"]
    assert reason == "branch (default)→dev, hull debian→busybox, memory 256M→1G, 2 more"
    health = plan(hq_of(api=""), hq_of(api="healthcheck /ok 5"), {}, {}).changed["api"]
    assert health == "healthcheck /→/ok, healthcheck 60s→5s"
    servers = plan(hq_of(api="servername a.com"), hq_of(api="servername b.com"), {}, {})
    assert servers.changed["api"] == "servername +b.com -a.com"


def test_includes_change_redeploys_only_the_apps_it_affects() -> None:
    hq = hq_of(api="", web="export DB_URL=own")
    result = plan(hq, hq, {"DB_URL": "one"}, {"DB_URL": "two"})
    assert result.changed == {"api": "DB_URL changed"}
    assert result.unchanged == ("web",)
    assert plan(hq, hq, {"X": "1"}, {"X": "1"}).changed == {}


def test_moving_lines_around_is_not_a_change() -> None:
    old = hq_of(api="hull busybox\nexport A=1")
    new = hq_of(api="# reordered\nexport A=1\n\nhull busybox")
    assert plan(old, new, {}, {}).unchanged == ("api",)


# ─── reading straight from git ───────────────────────────────────────────────


def git(*args: str, cwd: Path, check_ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env=GIT_ENV,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if check_ok and done.returncode != 0:
        raise AssertionError(f"git {args} failed: {done.stdout}{done.stderr}")
    return done


def summary(hq: Headquarters) -> tuple[object, ...]:
    """Exceptions compare by identity, so compare rejections by what they say."""
    rejected = {app: str(err) for app, err in hq.rejected.items()}
    return hq.apps, rejected, hq.admirals, hq.key_errors


def commit(
    work: Path, files: dict[str, str | bytes], message: str, remove: tuple[str, ...] = ()
) -> str:
    write_tree(work, files)
    for name in remove:
        git("rm", "-q", "-r", name, cwd=work)
    git("add", "-A", cwd=work)
    git("commit", "-q", "--allow-empty", "-m", message, cwd=work)
    return git("rev-parse", "HEAD", cwd=work).stdout.strip()


@pytest.fixture
def repos(tmp_path) -> tuple[Path, Path]:
    bare, work = tmp_path / "headquarters.git", tmp_path / "work"
    git("init", "-q", "--bare", "-b", "master", str(bare), cwd=tmp_path)
    git("init", "-q", "-b", "master", str(work), cwd=tmp_path)
    git("remote", "add", "hq", str(bare), cwd=work)
    return bare, work


def test_git_reader_matches_folder_reader(repos, tmp_path, keys) -> None:
    bare, work = repos
    files = sample_files(keys)
    sha = commit(work, files, "first")
    (work / "link").mkdir()
    (work / "link" / "orders").symlink_to("/etc/passwd")
    linked = commit(work, {}, "a symlinked orders file")
    git("push", "-q", "hq", "master", cwd=work)

    from_git = read_headquarters_from_git(bare, sha, "debian")
    from_folder = read_headquarters(write_tree(tmp_path / "copy", files), "debian")
    assert summary(from_git) == summary(from_folder)
    assert sorted(from_git.apps) == ["api", "web"]

    at_branch = read_headquarters_from_git(bare, "master", "debian")
    assert "not a regular file" in at_branch.rejected["link"].message
    assert summary(read_headquarters_from_git(bare, "refs/heads/master", "debian")) == summary(
        at_branch
    )
    assert summary(read_headquarters_from_git(bare, linked, "debian")) == summary(at_branch)


def test_git_reader_sees_deleted_apps_and_peels_tags(repos, keys) -> None:
    bare, work = repos
    first = commit(
        work, {"authorized_keys/a.pub": pub(keys[0]), "api/orders": "", "web/orders": ""}, "1"
    )
    commit(work, {}, "delete every app", remove=("api", "web"))
    git("tag", "-a", "-m", "annotated", "v1", first, cwd=work)
    git("push", "-q", "hq", "master", "v1", cwd=work)
    old = read_headquarters_from_git(bare, "refs/tags/v1", "debian")
    new = read_headquarters_from_git(bare, "master", "debian")
    assert sorted(old.apps) == ["api", "web"]
    assert new.apps == {}
    assert plan(old, new, {}, {}).lines() == ["api: retire", "web: retire"]


@pytest.mark.parametrize("rev", ["0" * 40, "nobranch", "refs/heads/../x"])
def test_git_reader_unknown_revision(repos, rev: str) -> None:
    bare, work = repos
    commit(work, {"api/orders": ""}, "1")
    git("push", "-q", "hq", "master", cwd=work)
    with pytest.raises(InvalidName):
        read_headquarters_from_git(bare, rev, "debian")


HOOK = """\
    #!{python}
    import os, sys
    from pathlib import Path
    from hyperdrive.headquarters import check, read_headquarters_from_git
    quarantine = [Path(os.environ["GIT_QUARANTINE_PATH"])]
    for update in sys.stdin:
        old, new, ref = update.split()
        hq = read_headquarters_from_git(Path.cwd(), new, "debian", object_dirs=quarantine)
        problems = check(hq, bootstrap_keys_present=False)
        print("\\n".join(problems) or "ok", file=sys.stderr)
        sys.exit(1 if problems else 0)
"""


def test_pre_receive_check_reads_the_quarantined_push(repos, keys) -> None:
    bare, work = repos
    hook = bare / "hooks" / "pre-receive"
    hook.write_text(textwrap.dedent(HOOK.format(python=sys.executable)))
    hook.chmod(0o755)
    commit(
        work, {"authorized_keys/a.pub": pub(keys[0]), "api/orders": "export PORT=3000\n"}, "good"
    )
    assert "remote: ok" in git("push", "hq", "master", cwd=work).stderr

    bad = commit(work, {"api/orders": "export PORT=3000\nexport PORT\n"}, "bad")
    refused = git("push", "hq", "master", cwd=work, check_ok=False)
    assert refused.returncode != 0
    assert "remote: api/orders:2: export 'PORT' has no '='" in refused.stderr
    assert git("rev-parse", "master", cwd=bare).stdout.strip() != bad

    git("reset", "-q", "--hard", "HEAD~", cwd=work)
    unbuildable = commit(work, {"api/orders": "export PORT=3000\nhull ubuntu\n"}, "no such hull")
    refused = git("push", "hq", "master", cwd=work, check_ok=False)
    known = "known: debian, debian-13, busybox"
    assert f"remote: api/orders:2: unknown hull 'ubuntu'; {known}" in refused.stderr
    assert git("rev-parse", "master", cwd=bare).stdout.strip() != unbuildable

    commit(work, {}, "lock everyone out", remove=("authorized_keys",))
    refused = git("push", "hq", "master", cwd=work, check_ok=False)
    assert "no valid admiral key" in refused.stderr
