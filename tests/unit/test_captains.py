"""Captains: `<app>/captains/*.pub` read from an HQ checkout and a git tree, refused at the push
check like bad admiral keys, put in force by the key ring, and the SSH commands they get."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from hyperdrive.access import Identity
from hyperdrive.admiral import AdmiralCommands
from hyperdrive.eventlog import JsonlEventLog
from hyperdrive.headquarters import check, read_headquarters, read_headquarters_from_git
from hyperdrive.keyring import KeyRing
from hyperdrive.triggers import Trigger
from tests.conftest import GIT_ENV


@pytest.fixture(scope="module")
def keys() -> list[asyncssh.SSHKey]:
    return [asyncssh.generate_private_key("ssh-ed25519") for _ in range(4)]


def pub(key: asyncssh.SSHKey) -> str:
    return key.export_public_key("openssh").decode().strip() + "\n"


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)
    return root


def crew(keys: list[asyncssh.SSHKey]) -> dict[str, str]:
    """An HQ: lead is admiral; alice captains blog and docs, bob captains shop."""
    return {
        "authorized_keys/lead.pub": pub(keys[0]),
        "blog/orders": "healthcheck /\n",
        "blog/captains/alice.pub": f"# alice's laptop\n{pub(keys[1])}",
        "docs/captains/alice.pub": pub(keys[1]),  # a folder with captains and no orders yet
        "shop/orders": "healthcheck /\n",
        "shop/captains/bob.pub": pub(keys[2]),
        "shop/captains/README.md": "not a key file, ignored\n",
    }


# ─── reading ─────────────────────────────────────────────────────────────────


def test_captains_are_read_per_app(tmp_path: Path, keys) -> None:
    hq = read_headquarters(write_tree(tmp_path, crew(keys)), "debian")
    assert hq.key_errors == []
    assert sorted(hq.apps) == ["blog", "shop"]
    assert hq.captain_lines() == {
        "blog": {"alice": [pub(keys[1]).strip()]},
        "docs": {"alice": [pub(keys[1]).strip()]},
        "shop": {"bob": [pub(keys[2]).strip()]},
    }
    assert list(hq.admirals) == ["lead"], "captains are not admirals"
    assert check(hq, bootstrap_keys_present=False) == []


def test_bad_captain_files_refuse_the_push_with_file_and_line(tmp_path: Path, keys) -> None:
    files = {
        "authorized_keys/lead.pub": pub(keys[0]),
        "blog/orders": "healthcheck /\n",
        "blog/captains/alice.pub": f"{pub(keys[1])}ssh-ed25519 not-a-key\n",
        "blog/captains/oops.pub": keys[3].export_private_key("openssh").decode(),
        "blog/captains/twin.pub": pub(keys[2]),
        "blog/captains/twin2.pub": pub(keys[2]),
        "blog/captains/bad name!.pub": pub(keys[3]),
        "headquarters/captains/eve.pub": pub(keys[3]),
        "Shop/captains/eve.pub": pub(keys[3]),
    }
    hq = read_headquarters(write_tree(tmp_path, files), "debian")
    problems = check(hq, bootstrap_keys_present=True)
    said = "\n".join(problems)
    assert "blog/captains/alice.pub: line 2 is not an OpenSSH public key" in said
    assert "blog/captains/bad name!.pub: 'bad name!' is not a usable captain name" in said
    assert "blog/captains/oops.pub: holds a PRIVATE key: it was not loaded" in said
    assert "blog/captains/twin2.pub: key SHA256:" in said
    assert "is already twin's in blog/captains/; not loaded twice" in said
    assert "headquarters/captains/eve.pub: headquarters has no captains" in said
    assert "Shop/captains/eve.pub: 'Shop' is not an app name" in said
    assert "PRIVATE KEY-----" not in said, "a private key is never echoed"
    assert hq.captain_lines() == {"blog": {"twin": [pub(keys[2]).strip()]}}


def test_a_linked_captains_folder_or_key_is_refused_not_followed(tmp_path: Path, keys) -> None:
    outside = write_tree(tmp_path / "outside", {"eve.pub": pub(keys[3])})
    root = write_tree(tmp_path / "hq", {"blog/orders": "", "shop/orders": ""})
    (root / "blog" / "captains").symlink_to(outside)
    (root / "shop" / "captains").mkdir()
    (root / "shop" / "captains" / "eve.pub").symlink_to(outside / "eve.pub")
    hq = read_headquarters(root, "debian")
    assert hq.captain_lines() == {}
    assert hq.key_errors == [
        "blog/captains/: not a regular file (symlinks are not followed)",
        "shop/captains/eve.pub: not a regular file (symlinks are not followed)",
    ]


def git(*args: str, cwd: Path) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, f"git {args}: {done.stderr}"
    return done.stdout.strip()


def test_the_git_reader_sees_what_the_folder_reader_sees(tmp_path: Path, keys) -> None:
    work = write_tree(tmp_path / "work", crew(keys))
    git("init", "-q", "-b", "master", cwd=work)
    os.symlink("/etc", work / "blog" / "captains" / "etc.pub")
    os.symlink("/etc", work / "shop" / "orders-link")
    (work / "api").mkdir()
    os.symlink("/etc", work / "api" / "captains")
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "crew", cwd=work)
    from_git = read_headquarters_from_git(work / ".git", "master", "debian")
    from_folder = read_headquarters(work, "debian")
    assert from_git.captain_lines() == from_folder.captain_lines()
    assert (
        from_git.key_errors
        == from_folder.key_errors
        == [
            "api/captains/: not a regular file (symlinks are not followed)",
            "blog/captains/etc.pub: not a regular file (symlinks are not followed)",
        ]
    )


# ─── the key ring ────────────────────────────────────────────────────────────


def test_a_key_is_captain_of_every_app_that_lists_it_and_an_admiral_wins(keys) -> None:
    ring = KeyRing()
    ring.replace({"lead": [pub(keys[0])]})
    lines = {
        "blog": {"alice": [pub(keys[1])], "lead": [pub(keys[0])]},
        "docs": {"al": [pub(keys[1])]},
        "shop": {"bob": ["# bob", pub(keys[2]), "ssh-ed25519 junk"]},
    }
    problems = ring.replace_captains(lines)
    assert problems == ["shop/captains/bob:3: not an OpenSSH public key (Invalid public key)"]
    assert ring.identity_for(keys[1]) == Identity.captain("alice", {"blog", "docs"})
    assert ring.identity_for(keys[2]) == Identity.captain("bob", {"shop"})
    assert ring.identity_for(keys[0]) == Identity("lead"), "an admiral keeps every right"
    assert ring.identity_for(keys[3]) is None, "a stranger is still refused"
    assert ring.admiral_for(keys[1]) is None, "a captain is no admiral"
    assert (ring.count(), ring.captain_count()) == (1, 2)
    ring.replace_captains({"docs": {"alice": [pub(keys[1])]}})  # replaced whole
    assert ring.identity_for(keys[1]) == Identity.captain("alice", {"docs"})
    assert ring.identity_for(keys[2]) is None


# ─── SSH commands for a captain ──────────────────────────────────────────────


class _Stream:
    def __init__(self) -> None:
        self.data = io.BytesIO()

    def write(self, data: bytes) -> None:
        self.data.write(data)

    async def drain(self) -> None:
        return None


class _Process:
    def __init__(self) -> None:
        self.stdout, self.stderr = _Stream(), _Stream()

    def get_terminal_type(self) -> str | None:
        return None

    def get_terminal_size(self) -> tuple[int, int, int, int]:
        return (0, 0, 0, 0)


class _Spool:
    def __init__(self) -> None:
        self.put: list[Trigger] = []


def _status() -> dict[str, Any]:
    rows = [{"app": app, "ship": None} for app in ("blog", "docs", "shop")]
    return {"name": "hd", "pending": 0, "inflight": 0, "apps": rows}


@pytest.fixture
async def commands(tmp_path: Path) -> Any:
    log = JsonlEventLog(tmp_path / "events.jsonl")
    log.open()
    yield AdmiralCommands(log, _Spool(), _status, Path("/lxc")), log  # type: ignore[arg-type]
    log.close()


ALICE = Identity.captain("alice", {"blog", "docs"})


async def run(commands: AdmiralCommands, who: Identity, *argv: str) -> tuple[int, str, str]:
    process = _Process()
    code = await asyncio.wait_for(commands(who, list(argv), process), 5)  # type: ignore[arg-type]
    return code, process.stdout.data.getvalue().decode(), process.stderr.data.getvalue().decode()


async def test_a_captains_status_lists_only_their_apps(commands) -> None:
    admiral, _ = commands
    code, out, _ = await run(admiral, ALICE, "status", "--json")
    assert code == 0
    assert '"app": "shop"' not in out
    assert out.count('"app":') == 2
    code, out, _ = await run(admiral, Identity("lead"), "status", "--json")
    assert out.count('"app":') == 3


MINE = "captain of 'blog', 'docs' only"


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["deploy", "shop"], f"captain 'alice' may not deploy 'shop': {MINE}"),
        (["rollback", "shop"], f"captain 'alice' may not roll back 'shop': {MINE}"),
        (["enter", "shop"], f"captain 'alice' may not enter 'shop': {MINE}"),
        (["logs", "-f", "shop"], f"captain 'alice' may not read the logs of 'shop': {MINE}"),
        (
            ["logs"],
            "captain 'alice' may not read the squadron's logs: name your app "
            "(logs blog | logs docs)",
        ),
    ],
)
async def test_a_captain_is_refused_what_is_not_theirs_with_one_line_and_an_event(
    commands, argv: list[str], said: str
) -> None:
    admiral, log = commands
    code, out, err = await run(admiral, ALICE, *argv)
    assert (code, out, err) == (1, "", f"hyperdrive: {said}\n")
    assert admiral.spool.put == [], "nothing was queued"
    [event] = [e async for e in log.read() if e["event"] == "AccessRefused"]
    assert (event["captain"], event["asked"], event["message"]) == ("alice", argv[0], said)
    assert event.get("app") == ("shop" if "shop" in argv else None)
