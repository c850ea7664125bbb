"""Captains against the real asyncssh server with the real OpenSSH and git clients: their own
app's repo is theirs to push and clone; another app's and headquarters' are refused before git
runs, with one line on stderr and an AccessRefused event."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hyperdrive.access import Identity, Refusals
from hyperdrive.gitserver import GitServer
from hyperdrive.keyring import KeyRing
from tests.integration.git_fixtures import (
    check,
    git_env,
    make_key,
    require,
    run,
    ssh_argv,
    triggers,
    work_tree,
)


@dataclass
class Crew:
    server: GitServer
    keyring: KeyRing
    keys: dict[str, Path]
    tmp: Path
    events: list[Mapping[str, Any]] = field(default_factory=list)
    calls: list[tuple[Identity, list[str]]] = field(default_factory=list)

    def env(self, who: str) -> dict[str, str]:
        return git_env(self.keys[who], self.server.bound_port)

    def url(self, repo: str) -> str:
        return f"ssh://git@127.0.0.1:{self.server.bound_port}/{repo}"

    async def push(self, who: str, app: str) -> Any:
        tree = self.tmp / f"{who}-{app}"
        await work_tree(tree, self.env(who), {"index.html": f"{app} by {who}\n".encode()})
        return await run("git", "push", self.url(app), "master", cwd=tree, env=self.env(who))

    async def ssh(self, who: str, *command: str) -> Any:
        argv = ssh_argv(self.keys[who], self.server.bound_port)
        return await run(*argv, "git@127.0.0.1", *command)


@pytest.fixture
async def crew(tmp_path: Path) -> AsyncIterator[Crew]:
    require("git", "ssh", "ssh-keygen")
    keys = {who: await make_key(tmp_path / who) for who in ("lead", "alice", "stranger")}
    keyring = KeyRing()
    keyring.replace({"lead": [Path(f"{keys['lead']}.pub").read_text()]})
    keyring.replace_captains({"blog": {"alice": [Path(f"{keys['alice']}.pub").read_text()]}})
    hook_env = {"HYPERDRIVE_SPOOL": str(tmp_path / "spool"), "HYPERDRIVE_SOCKET": "/no.sock"}
    crew: Crew
    events: list[Mapping[str, Any]] = []

    async def commands(who: Identity, argv: list[str], process: Any) -> int:
        crew.calls.append((who, argv))
        return 0

    server = GitServer(
        "127.0.0.1", 0, tmp_path / "host_key", tmp_path / "git", keyring, hook_env, commands,
        refusals=Refusals(events.append),
    )  # fmt: skip
    crew = Crew(server, keyring, keys, tmp_path, events)
    await server.start()
    try:
        yield crew
    finally:
        await server.close(grace=5)


async def test_a_captain_pushes_and_clones_their_app_and_the_push_says_who(crew: Crew) -> None:
    pushed = await crew.push("alice", "blog")
    assert pushed.returncode == 0, pushed.output
    [trigger] = triggers(crew.tmp / "spool")
    assert (trigger["app"], trigger["data"]["admiral"]) == ("blog", "captain:alice")  # type: ignore[index]
    clone = await run("git", "clone", "-q", crew.url("blog"), crew.tmp / "c", env=crew.env("alice"))
    assert clone.returncode == 0, clone.output
    assert (crew.tmp / "c" / "index.html").read_text() == "blog by alice\n"
    assert crew.events == []


async def test_another_app_and_headquarters_are_refused_before_git_runs(crew: Crew) -> None:
    shop = await crew.push("alice", "shop")
    assert shop.returncode != 0
    said = "hyperdrive: captain 'alice' may not push 'shop': captain of 'blog' only\n"
    assert shop.stderr.startswith(said), shop.stderr
    assert not (crew.tmp / "git" / "shop.git").exists(), "no repo was made for the refusal"
    assert triggers(crew.tmp / "spool") == []

    hq = await crew.ssh("alice", "git-upload-pack 'headquarters.git'")
    assert hq.returncode == 1
    assert hq.stderr == (
        "hyperdrive: captain 'alice' may not fetch 'headquarters': "
        "headquarters is for admirals only\n"
    )
    assert hq.stdout == "", "not one byte of the repo"
    assert [(e["event"], e["captain"], e["asked"], e["app"]) for e in crew.events] == [
        ("AccessRefused", "alice", "push", "shop"),
        ("AccessRefused", "alice", "fetch", "headquarters"),
    ]
    key = Path(f"{crew.keys['alice']}.pub").read_text().split()[1]
    assert key not in repr(crew.events), "never the key"


async def test_admirals_get_everything_captains_reach_the_commands_strangers_nothing(
    crew: Crew,
) -> None:
    assert (await crew.push("lead", "shop")).returncode == 0
    await check("git", "ls-remote", crew.url("shop"), env=crew.env("lead"))
    assert (await crew.ssh("alice", "deploy", "blog")).returncode == 0
    assert crew.calls[-1] == (Identity.captain("alice", {"blog"}), ["deploy", "blog"])
    assert (await crew.ssh("lead", "status")).returncode == 0
    assert crew.calls[-1] == (Identity("lead"), ["status"])
    stranger = await crew.ssh("stranger", "status")
    assert stranger.returncode == 255
    assert "Permission denied" in stranger.stderr
    crew.keyring.replace_captains({})  # HQ dropped alice: her next login is refused at once
    assert (await crew.ssh("alice", "status")).returncode == 255
