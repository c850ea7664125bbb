"""The git server against the real `git` and `ssh` clients on loopback."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest

from hyperdrive.access import Identity
from hyperdrive.errors import HyperdriveError
from hyperdrive.gitserver import GitServer
from hyperdrive.keyring import KeyRing
from tests.integration.git_fixtures import (
    FakeDaemon,
    check,
    commit,
    git_env,
    make_key,
    require,
    run,
    ssh_argv,
    triggers,
    work_tree,
)

ZERO = "0" * 40


@dataclass
class Rig:
    server: GitServer
    keyring: KeyRing
    key: Path
    spool: Path
    git_root: Path
    tmp: Path

    @property
    def port(self) -> int:
        return self.server.bound_port

    @property
    def env(self) -> dict[str, str]:
        return git_env(self.key, self.port)

    def url(self, repo: str) -> str:
        return f"ssh://git@127.0.0.1:{self.port}/{repo}"

    async def ssh(
        self,
        *command: str,
        key: Path | None = None,
        extra: tuple[str, ...] = (),
        stdin: bytes | None = None,
    ):
        argv = ssh_argv(key or self.key, self.port, *extra)
        return await run(*argv, "git@127.0.0.1", *command, stdin=stdin)


Commands = dict[str, object]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    require("git", "ssh", "ssh-keygen")
    key = await make_key(tmp_path / "admiral")
    keyring = KeyRing()
    keyring.replace({"alice": [(tmp_path / "admiral.pub").read_text()]})
    spool, git_root = tmp_path / "spool", tmp_path / "git"
    hook_env = {"HYPERDRIVE_SPOOL": str(spool), "HYPERDRIVE_SOCKET": str(tmp_path / "no.sock")}
    calls: list[tuple[str, list[str], str | None]] = []

    async def admiral_commands(who: Identity, argv: list[str], process) -> int:  # type: ignore[no-untyped-def]
        calls.append((who.name, argv, process.term_type))
        process.stdout.write(f"{argv[0]} for {who.name}\n".encode())
        if argv[0] == "logs":
            await asyncio.wait_for(rig.release.wait(), 30)
        return 3 if argv[0] == "deploy" else 0

    server = GitServer(
        "127.0.0.1", 0, tmp_path / "host_key", git_root, keyring, hook_env, admiral_commands
    )
    await server.start()
    rig = Rig(server, keyring, key, spool, git_root, tmp_path)
    rig.calls = calls  # type: ignore[attr-defined]
    rig.release = asyncio.Event()  # type: ignore[attr-defined]
    try:
        yield rig
    finally:
        await server.close(grace=5)


async def push_app(rig: Rig, name: str = "web", files: dict[str, bytes] | None = None):
    """A fresh work tree with one commit, pushed to `name`; returns (tree, sha, result)."""
    tree = rig.tmp / f"tree-{name}"
    sha = await work_tree(tree, rig.env, files or {"index.html": b"hello\n"})
    await check("git", "remote", "add", "hyperdrive", rig.url(name), cwd=tree, env=rig.env)
    result = await run("git", "push", "hyperdrive", "master", cwd=tree, env=rig.env)
    return tree, sha, result


async def test_push_creates_the_repo_and_one_trigger_per_ref(rig: Rig) -> None:
    tree, sha, result = await push_app(rig)
    assert result.returncode == 0, result.output
    assert "remote: -----> queued" in result.stderr
    assert "remote: -----> queued: the deploy starts when hyperdrive is running" in result.stderr
    repo = rig.git_root / "web.git"
    head = await check("git", "symbolic-ref", "HEAD", cwd=repo)
    assert head.stdout.strip() == "refs/heads/master"
    [trigger] = triggers(rig.spool)
    assert trigger["kind"] == "push"
    assert trigger["app"] == "web"
    assert trigger["data"] == {
        "ref": "refs/heads/master", "old": ZERO, "new": sha, "admiral": "alice"
    }  # fmt: skip
    await check("git", "tag", "v1", cwd=tree, env=rig.env)
    second = await commit(tree, rig.env, {"b.txt": b"b\n"})
    pushed = await run("git", "push", "hyperdrive", "master", "v1", cwd=tree, env=rig.env)
    assert pushed.returncode == 0, pushed.output
    found = {(t["data"]["ref"], t["data"]["new"]) for t in triggers(rig.spool)[1:]}  # type: ignore[index]
    assert found == {("refs/heads/master", second), ("refs/tags/v1", sha)}


async def test_a_receive_pack_that_pushes_nothing_leaves_no_repo(rig: Rig) -> None:
    quiet = await rig.ssh("git-receive-pack 'zzz'", stdin=b"0000")
    assert quiet.returncode == 0, quiet.output
    assert "refs/heads" not in quiet.stdout  # an empty repo's advertisement: it was made
    assert list(rig.git_root.iterdir()) == []
    await rig.ssh("git-receive-pack 'zzz'")  # a client that hangs up without a word
    assert list(rig.git_root.iterdir()) == []
    nothing = await run("git", "ls-remote", rig.url("zzz"), env=rig.env)
    assert "repository 'zzz' does not exist" in nothing.stderr
    _, sha, pushed = await push_app(rig, "zzz")  # a real first push still makes it, and keeps it
    assert pushed.returncode == 0, pushed.output
    listed = await run("git", "ls-remote", rig.url("zzz"), env=rig.env)
    assert f"{sha}\trefs/heads/master" in listed.stdout


async def test_an_existing_empty_repo_is_kept_after_a_push_of_nothing(rig: Rig) -> None:
    await rig.server.ensure_repo("hq")
    assert (await rig.ssh("git-receive-pack 'hq'", stdin=b"0000")).returncode == 0
    assert (rig.git_root / "hq.git" / "HEAD").is_file()


async def test_a_repo_made_by_an_older_install_runs_the_hooks_in_force(rig: Rig) -> None:
    """Repos record core.hooksPath at creation; an install that moved the hooks (the old
    `/opt/hyperdrive/src/bin`) must not turn every later push into a silent no-deploy."""
    _, _, first = await push_app(rig)
    assert first.returncode == 0, first.output
    repo = rig.git_root / "web.git"
    await check("git", "config", "core.hooksPath", str(rig.tmp / "gone" / "bin"), cwd=repo)
    tree = rig.tmp / "tree-web"
    await commit(tree, rig.env, {"b.txt": b"b\n"})
    pushed = await run("git", "push", "hyperdrive", "master", cwd=tree, env=rig.env)
    assert pushed.returncode == 0, pushed.output
    assert "remote: -----> queued" in pushed.stderr
    assert len(triggers(rig.spool)) == 2


@pytest.mark.parametrize("broken", ["missing", "not executable"])
async def test_serving_without_runnable_hooks_is_refused(
    rig: Rig, tmp_path: Path, broken: str
) -> None:
    """git skips a hook it cannot run without failing the push: refuse to start instead."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    for name in ("pre-receive", "post-receive"):
        (hooks / name).write_text("#!/bin/sh\nexit 0\n")
        (hooks / name).chmod(0o755)
    if broken == "missing":
        (hooks / "post-receive").unlink()
    else:
        (hooks / "pre-receive").chmod(0o644)
    server = GitServer(
        "127.0.0.1", 0, tmp_path / "host_key", rig.git_root, rig.keyring, {}, None, hooks
    )
    with pytest.raises(HyperdriveError, match="reinstall hyperdrive"):
        await server.start()


async def test_clone_and_fetch_see_exactly_what_was_pushed(rig: Rig) -> None:
    files = {f"dir/{n}.bin": os.urandom(20_000) for n in range(30)}
    tree, sha, result = await push_app(rig, "app2", files)
    assert result.returncode == 0, result.output
    clone = rig.tmp / "clone"
    await check("git", "clone", "-q", rig.url("app2.git"), clone, env=rig.env)
    assert (await check("git", "rev-parse", "HEAD", cwd=clone)).stdout.strip() == sha
    await check("git", "fsck", "--strict", cwd=clone)
    assert (clone / "dir/7.bin").read_bytes() == files["dir/7.bin"]
    newer = await commit(tree, rig.env, {"more.bin": os.urandom(300_000)})
    await check("git", "push", "-q", "hyperdrive", "master", cwd=tree, env=rig.env)
    await check("git", "fetch", "-q", "origin", cwd=clone, env=rig.env)
    fetched = await check("git", "rev-parse", "origin/master", cwd=clone)
    assert fetched.stdout.strip() == newer
    await check("git", "fsck", "--strict", cwd=clone)
    await check("git", "fsck", "--strict", cwd=rig.git_root / "app2.git")


async def test_a_pack_larger_than_every_buffer_arrives_whole(rig: Rig) -> None:
    # 12 MB of incompressible files: more than git's stdin pipe (1 MB), one batch of SSH data
    # (1 MB) and asyncssh's window (2 MB) hold, so batches form and the pipe can fill
    files = {f"d/{n}.bin": os.urandom(400_000) for n in range(30)}
    _, sha, result = await push_app(rig, "large", files)
    assert result.returncode == 0, result.output
    await check("git", "fsck", "--strict", cwd=rig.git_root / "large.git")
    clone = rig.tmp / "large-clone"
    await check("git", "clone", "-q", rig.url("large.git"), clone, env=rig.env)
    assert (await check("git", "rev-parse", "HEAD", cwd=clone)).stdout.strip() == sha
    assert all((clone / name).read_bytes() == data for name, data in files.items())


async def test_protocol_v2_reaches_git(rig: Rig) -> None:
    await push_app(rig)
    env = {**rig.env, "GIT_TRACE_PACKET": "1"}
    listed = await check("git", "-c", "protocol.version=2", "ls-remote", rig.url("web"), env=env)
    assert "< version 2" in listed.stderr
    assert "refs/heads/master" in listed.stdout


async def test_archive_over_ssh(rig: Rig) -> None:
    await push_app(rig, files={"README": b"read me\n"})
    out = rig.tmp / "a.tar"
    await check("git", "archive", f"--remote={rig.url('web')}", "-o", out, "master", env=rig.env)
    listed = await check("tar", "-tf", out)
    assert listed.stdout.split() == ["README"]


async def test_headquarters_push_is_an_hq_trigger(rig: Rig) -> None:
    admiral = Path(f"{rig.key}.pub").read_bytes()  # HQ must keep an admiral (lockout check)
    files = {"web/orders": b"healthcheck /\n", "authorized_keys/me.pub": admiral}
    _, sha, result = await push_app(rig, "headquarters", files)
    assert "site: deploy" not in result.stderr
    assert "web: deploy" in result.stderr, result.output
    assert result.returncode == 0, result.output
    [trigger] = triggers(rig.spool)
    assert (trigger["kind"], trigger["app"]) == ("hq", None)
    assert trigger["data"]["new"] == sha  # type: ignore[index]


async def test_a_first_push_of_main_makes_main_the_default_branch(rig: Rig) -> None:
    tree = rig.tmp / "tree"
    await check("git", "init", "-q", "-b", "main", tree, env=rig.env)
    sha = await commit(tree, rig.env, {"index.html": b"hi\n"})
    pushed = await run("git", "push", rig.url("web"), "main", cwd=tree, env=rig.env)
    assert pushed.returncode == 0, pushed.output
    head = await check("git", "symbolic-ref", "HEAD", cwd=rig.git_root / "web.git")
    assert head.stdout.strip() == "refs/heads/main"
    assert [t["data"]["ref"] for t in triggers(rig.spool)] == ["refs/heads/main"]  # type: ignore[index]
    other = await run("git", "push", rig.url("web"), "main:master", cwd=tree, env=rig.env)
    assert other.returncode == 0, other.output
    head = await check("git", "symbolic-ref", "HEAD", cwd=rig.git_root / "web.git")
    assert head.stdout.strip() == "refs/heads/main", "a later branch does not move HEAD"
    assert sha


async def test_an_empty_headquarters_clones_and_a_plain_git_push_is_checked(rig: Rig) -> None:
    await rig.server.ensure_repo("headquarters")
    clone = rig.tmp / "hq"
    cloned = await run("git", "clone", rig.url("headquarters"), clone, env=rig.env)
    assert cloned.returncode == 0, cloned.output
    assert "cloned an empty repository" in cloned.stderr
    branch = await check("git", "branch", "--show-current", cwd=clone)
    assert branch.stdout.strip() == "main"
    admiral = Path(f"{rig.key}.pub").read_bytes()
    files = {"authorized_keys/me.pub": admiral, "web/orders": b"healthcheck /\n"}
    sha = await commit(clone, rig.env, files)
    pushed = await run("git", "push", cwd=clone, env=rig.env)
    assert pushed.returncode == 0, pushed.output
    assert "web: deploy" in pushed.stderr, pushed.output
    assert [t["data"]["new"] for t in triggers(rig.spool)] == [sha]  # type: ignore[index]
    await check("git", "checkout", "-q", "-b", "draft", cwd=clone, env=rig.env)
    draft = await run("git", "push", "origin", "draft", cwd=clone, env=rig.env)
    assert draft.returncode == 0, draft.output
    assert "refs/heads/draft is not headquarters: headquarters follows main" in draft.stderr
    assert "web: deploy" not in draft.stderr


async def test_a_headquarters_push_with_limits_no_ship_takes_is_refused(rig: Rig) -> None:
    await rig.server.ensure_repo("headquarters")
    clone = rig.tmp / "hq"
    assert (await run("git", "clone", rig.url("headquarters"), clone, env=rig.env)).returncode == 0
    admiral = Path(f"{rig.key}.pub").read_bytes()
    orders = b"healthcheck /\ncpus 0.001\n"
    await commit(clone, rig.env, {"authorized_keys/me.pub": admiral, "web/orders": orders})
    pushed = await run("git", "push", cwd=clone, env=rig.env)
    assert pushed.returncode != 0
    assert "web/orders:2: cpus '0.001' is out of range: 0.01 to 1024" in pushed.stderr
    refs = await check("git", "for-each-ref", cwd=rig.git_root / "headquarters.git")
    assert refs.stdout == ""
    assert triggers(rig.spool) == []


async def test_nowait_queues_without_waiting(rig: Rig) -> None:
    tree = rig.tmp / "tree"
    sha = await work_tree(tree, rig.env, {"a": b"a"})
    argv = ("git", "push", "-o", "nowait", rig.url("web"), "master")
    result = await run(*argv, cwd=tree, env=rig.env)
    assert result.returncode == 0, result.output
    assert "remote: -----> queued" in result.stderr
    assert "hyperdrive is running" not in result.stderr
    assert [t["data"]["new"] for t in triggers(rig.spool)] == [sha]  # type: ignore[index]


async def test_force_push_and_branch_deletion_write_triggers(rig: Rig) -> None:
    tree, first, _ = await push_app(rig)
    await check("git", "push", "-q", "hyperdrive", "master:feature", cwd=tree, env=rig.env)
    await check("git", "commit", "-q", "--amend", "-m", "rewritten", cwd=tree, env=rig.env)
    rewritten = (await check("git", "rev-parse", "HEAD", cwd=tree)).stdout.strip()
    forced = await run("git", "push", "--force", "hyperdrive", "master", cwd=tree, env=rig.env)
    assert forced.returncode == 0, forced.output
    await check("git", "push", "-q", "hyperdrive", ":feature", cwd=tree, env=rig.env)
    updates = [(t["data"]["ref"], t["data"]["old"], t["data"]["new"]) for t in triggers(rig.spool)]  # type: ignore[index]
    assert ("refs/heads/master", first, rewritten) in updates
    assert ("refs/heads/feature", first, ZERO) in updates


async def test_fetching_an_unknown_repo_is_a_clear_error(rig: Rig) -> None:
    result = await run("git", "clone", rig.url("nope"), rig.tmp / "c", env=rig.env)
    assert result.returncode != 0
    assert "repository 'nope' does not exist" in result.stderr
    assert not (rig.git_root / "nope.git").exists()


async def test_unknown_key_is_refused(rig: Rig) -> None:
    stranger = await make_key(rig.tmp / "stranger")
    result = await rig.ssh("status", key=stranger)
    assert result.returncode == 255
    assert "Permission denied (publickey)" in result.stderr
    assert rig.calls == []  # type: ignore[attr-defined]


async def test_password_and_keyboard_interactive_are_not_offered(rig: Rig) -> None:
    extra = ("-o", "PubkeyAuthentication=no", "-o",
             "PreferredAuthentications=password,keyboard-interactive", "-v")  # fmt: skip
    result = await rig.ssh("status", extra=extra)
    assert result.returncode == 255
    assert "Authentications that can continue: publickey\n" in result.stderr.replace("\r", "")
    assert "Permission denied (publickey)" in result.stderr


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("git-receive-pack '../../etc'", "invalid app name '../../etc'"),
        ("git-upload-pack '/etc/passwd'", "invalid app name 'etc/passwd'"),
        ("x; rm -rf /", "unknown command: x;"),
        ("git-receive-pack", "usage: git-receive-pack <repository>"),
        ("sh", "unknown command: sh"),
        ("frobnicate --now", "unknown command: frobnicate"),
        ("git-receive-pack 'unterminated", "cannot parse the command"),
    ],
)
async def test_bad_commands_get_a_clear_error(rig: Rig, command: str, message: str) -> None:
    result = await rig.ssh(command)
    assert (result.returncode, result.stdout) == (1, "")
    assert message in result.stderr
    assert list(rig.git_root.iterdir()) == []


async def test_an_empty_command_gets_no_shell(rig: Rig) -> None:
    for command in ((), ("",)):
        result = await rig.ssh(*command)
        assert result.returncode == 1
        assert "no shell here" in result.stderr


async def test_huge_commands_are_refused_and_the_server_lives_on(rig: Rig) -> None:
    big = await rig.ssh("status", "x" * 100_000)
    assert big.returncode == 1
    assert "command too long (100007 bytes" in big.stderr
    huge = await rig.ssh(*(["y" * 65_536] * 16))  # 1 MB; OpenSSH may refuse to send it
    assert huge.returncode != 0
    assert (await rig.ssh("status")).returncode == 0


async def test_terminals_only_for_enter(rig: Rig) -> None:
    refused = await rig.ssh("git-upload-pack", "web", extra=("-tt",))
    assert refused.returncode == 1
    assert "takes no terminal" in refused.output
    entered = await rig.ssh("enter", "web", extra=("-tt",))
    assert entered.returncode == 0, entered.output
    assert rig.calls[-1][0:2] == ("alice", ["enter", "web"])  # type: ignore[attr-defined]
    assert rig.calls[-1][2] is not None  # type: ignore[attr-defined]


async def test_admiral_commands_reach_the_handler(rig: Rig) -> None:
    status = await rig.ssh("status")
    assert (status.returncode, status.stdout) == (0, "status for alice\n")
    deploy = await rig.ssh("deploy", "web", "abc1234")
    assert deploy.returncode == 3
    assert rig.calls[-1] == ("alice", ["deploy", "web", "abc1234"], None)  # type: ignore[attr-defined]


async def test_a_removed_key_opens_no_new_session_but_running_ones_finish(rig: Rig) -> None:
    running = asyncio.create_task(rig.ssh("logs", "-f"))
    for _ in range(200):
        if rig.calls:  # type: ignore[attr-defined]
            break
        await asyncio.sleep(0.05)
    assert rig.calls, "the first session never started"  # type: ignore[attr-defined]
    rig.keyring.replace({})
    refused = await rig.ssh("status")
    assert refused.returncode == 255
    rig.release.set()  # type: ignore[attr-defined]
    finished = await running
    assert (finished.returncode, finished.stdout) == (0, "logs for alice\n")


async def _flood(
    port: int, count: int, source: str
) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """`count` raw TCP connections from `source` that never log in (half send a banner)."""
    flood = []
    for index in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        if index % 2:
            writer.write(b"SSH-2.0-flood\r\n")
        flood.append((reader, writer))
    return flood


async def _gated(rig: Rig, **limits: int) -> GitServer:
    """A second server on the rig's keys and repos with its own unauthenticated limits."""
    server = GitServer(
        "127.0.0.1", 0, rig.tmp / "host_key", rig.git_root, rig.keyring, {}, None, **limits
    )
    await server.start()
    return server


async def test_one_address_flooding_the_gate_does_not_lock_out_another(rig: Rig) -> None:
    server = await _gated(rig, max_unauthenticated=40, max_per_source=10)
    flood = await _flood(server.bound_port, 120, "127.0.0.2")
    try:
        await asyncio.sleep(0.2)
        assert server.unauthenticated("127.0.0.2") <= 40
        await push_app(rig)
        url = f"ssh://git@127.0.0.1:{server.bound_port}/web"
        for _ in range(10):  # every one of them gets in while the flood holds the gate
            listed = await run("git", "ls-remote", url, env=rig.env)
            assert listed.returncode == 0, listed.output
            assert "refs/heads/" in listed.stdout
        closed = [await _closed(reader) for reader, _ in flood]
        assert sum(closed) >= 80
    finally:
        for _, writer in flood:
            writer.close()
        await server.close(grace=5)


async def test_fifty_concurrent_ls_remotes_from_one_address_all_succeed(rig: Rig) -> None:
    await push_app(rig)
    listing = [run("git", "ls-remote", rig.url("web"), env=rig.env) for _ in range(50)]
    results = await asyncio.gather(*listing)
    failed = [result.output for result in results if result.returncode != 0]
    assert not failed, failed[:3]
    assert all("refs/heads/" in result.stdout for result in results)


async def test_idle_connections_from_one_address_do_not_lock_out_an_admiral(rig: Rig) -> None:
    flood = await _flood(rig.port, 50, "127.0.0.2")
    try:
        result = await rig.ssh("status")
        assert result.returncode == 0, result.output
    finally:
        for _, writer in flood:
            writer.close()


async def _closed(reader: asyncio.StreamReader) -> bool:
    """True when the server has closed this connection (EOF after its banner)."""
    try:
        while await asyncio.wait_for(reader.read(65536), 0.05):
            pass
        return True
    except TimeoutError:
        return False
    except ConnectionError:
        return True


async def test_host_key_is_made_once_and_kept_private(rig: Rig, tmp_path: Path) -> None:
    path = tmp_path / "host_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = asyncssh.read_private_key(path).export_public_key()
    await rig.server.close()
    again = GitServer("127.0.0.1", 0, path, rig.git_root, rig.keyring, {}, None)
    await again.start()
    await again.close()
    assert asyncssh.read_private_key(path).export_public_key() == before


SLOW_PROXY = """
import socket, sys, threading, time
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
def down():
    while data := sock.recv(65536):
        sys.stdout.buffer.write(data); sys.stdout.buffer.flush()
threading.Thread(target=down, daemon=True).start()
while data := sys.stdin.buffer.read1(16384):
    sock.sendall(data); time.sleep(0.02)
"""


async def test_a_push_cut_off_half_way_leaves_the_repo_intact(rig: Rig) -> None:
    tree = rig.tmp / "big"
    await work_tree(tree, rig.env, {f"f{n}": os.urandom(250_000) for n in range(32)})
    proxy = rig.tmp / "slow_proxy.py"
    proxy.write_text(SLOW_PROXY)
    env = git_env(rig.key, rig.port, "-o", f"ProxyCommand=python3 {proxy} {rig.port}")
    await rig.server.ensure_repo("cut")  # made before: a first push storing nothing leaves none
    push = await asyncio.create_subprocess_exec(
        "git", "push", rig.url("cut"), "master", cwd=tree, env=env, start_new_session=True,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    repo = rig.git_root / "cut.git"
    assert await _wait_for_incoming(repo, 1_000_000), "the pack never started arriving"
    os.killpg(push.pid, signal.SIGKILL)
    await push.wait()
    assert await _wait_gone(repo), "git receive-pack did not clean up its quarantine"
    refs = await check("git", "for-each-ref", cwd=repo)
    assert refs.stdout == ""
    await check("git", "fsck", "--strict", cwd=repo)
    assert triggers(rig.spool) == []
    _, sha, retry = await push_app(rig, "cut")
    assert retry.returncode == 0, retry.output
    assert [t["data"]["new"] for t in triggers(rig.spool)] == [sha]  # type: ignore[index]


def _incoming_bytes(repo: Path) -> int:
    objects = repo / "objects"
    if not objects.is_dir():
        return 0
    folders = [p for p in objects.iterdir() if "incoming-" in p.name]
    return sum(f.stat().st_size for d in folders for f in d.rglob("*") if f.is_file())


async def _wait_for_incoming(repo: Path, size: int) -> bool:
    for _ in range(600):
        try:
            if _incoming_bytes(repo) >= size:
                return True
        except FileNotFoundError:
            pass  # git is moving files around
        await asyncio.sleep(0.02)
    return False


async def _wait_gone(repo: Path) -> bool:
    for _ in range(500):
        if not any("incoming-" in p.name for p in (repo / "objects").iterdir()):
            return True
        await asyncio.sleep(0.02)
    return False


async def test_two_simultaneous_pushes_deploy_exactly_the_winner(rig: Rig) -> None:
    await push_app(rig)
    trees = []
    for name in ("one", "two"):
        tree = rig.tmp / name
        await check("git", "clone", "-q", rig.url("web"), tree, env=rig.env)
        trees.append((tree, await commit(tree, rig.env, {f"{name}.txt": os.urandom(5000)})))
    before = len(triggers(rig.spool))
    results = await asyncio.gather(
        *(run("git", "push", "--force", "origin", "master", cwd=t, env=rig.env) for t, _ in trees)
    )
    outcomes = zip(trees, results, strict=True)
    accepted = {sha for (_, sha), result in outcomes if result.returncode == 0}
    assert accepted, [r.output for r in results]
    written = {t["data"]["new"] for t in triggers(rig.spool)[before:]}  # type: ignore[index]
    assert written == accepted
    final = await check("git", "rev-parse", "master", cwd=rig.git_root / "web.git")
    assert final.stdout.strip() in accepted
    await check("git", "fsck", "--strict", cwd=rig.git_root / "web.git")


def deploy_script(sha: str) -> list[dict[str, object]]:
    return [
        {"event": "PushReceived", "app": "web", "sha": sha},
        {"event": "DeployStarted", "app": "web", "sha": sha},
        {"event": "BuildOutput", "app": "web", "message": "installing\x1b[31m deps"},
        {"event": "ShipHealthy", "app": "web", "ship": "hd-web-abc1234", "ms": 310},
        {"event": "DeployFinished", "app": "web", "ms": 3200, "url": "http://127.0.0.1/web/"},
    ]


async def test_a_push_shows_its_deploy_until_it_finishes(rig: Rig) -> None:
    tree = rig.tmp / "tree"
    sha = await work_tree(tree, rig.env, {"a": b"a"})
    daemon = FakeDaemon(rig.tmp / "no.sock", deploy_script(sha))
    await daemon.start()
    try:
        daemon.finish.set()
        result = await run("git", "push", rig.url("web"), "master", cwd=tree, env=rig.env)
    finally:
        await daemon.close()
    assert result.returncode == 0, result.output
    remote = [line.rstrip() for line in result.stderr.splitlines() if line.startswith("remote:")]
    [trigger] = triggers(rig.spool)
    assert daemon.asked == [trigger["id"]]
    assert remote[1:] == [
        f"remote: -----> Deploying web at {sha[:7]}",
        "remote:        installing[31m deps",
        "remote: -----> Ship healthy hd-web-abc1234 (310 ms)",
        "remote: -----> web deployed (3.2 s): http://127.0.0.1/web/",
    ]


async def test_nowait_does_not_ask_the_daemon(rig: Rig) -> None:
    daemon = FakeDaemon(rig.tmp / "no.sock", deploy_script("0" * 40))
    await daemon.start()
    try:
        tree = rig.tmp / "tree"
        await work_tree(tree, rig.env, {"a": b"a"})
        argv = ("git", "push", "-o", "nowait", rig.url("web"), "master")
        result = await run(*argv, cwd=tree, env=rig.env)
    finally:
        await daemon.close()
    assert result.returncode == 0, result.output
    assert daemon.asked == []
    assert len(triggers(rig.spool)) == 1


async def test_a_pusher_who_hangs_up_cancels_nothing(rig: Rig) -> None:
    tree = rig.tmp / "tree"
    sha = await work_tree(tree, rig.env, {"a": b"a"})
    daemon = FakeDaemon(rig.tmp / "no.sock", deploy_script(sha))
    await daemon.start()
    try:
        push = await asyncio.create_subprocess_exec(
            "git", "push", rig.url("web"), "master", cwd=tree, env=rig.env,
            start_new_session=True, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(400):
            if daemon.asked:
                break
            await asyncio.sleep(0.025)
        assert daemon.asked, "the hook never started following the deploy"
        os.killpg(push.pid, signal.SIGINT)  # Ctrl-C in the pusher's terminal
        assert await asyncio.wait_for(push.wait(), 10) != 0
        assert [t["data"]["new"] for t in triggers(rig.spool)] == [sha]  # type: ignore[index]
        ref = await check("git", "rev-parse", "master", cwd=rig.git_root / "web.git")
        assert ref.stdout.strip() == sha
        daemon.finish.set()  # the deploy ends later; the hook and git end with it
        for _ in range(400):
            if rig.server.active_sessions() == 0:
                break
            await asyncio.sleep(0.025)
        assert rig.server.active_sessions() == 0
    finally:
        await daemon.close()
