"""The one environment git talks to remotes with (app repos and a remote HQ)."""

from __future__ import annotations

import shlex
from pathlib import Path

from hyperdrive.repos import ALLOWED_PROTOCOLS, git_ssh_env


def test_no_prompt_only_the_allowed_protocols_and_hosts_remembered(tmp_path: Path) -> None:
    env = git_ssh_env(tmp_path, tmp_path / "known hosts", tmp_path / "no-such-key")
    assert env["GIT_TERMINAL_PROMPT"] == "0"
    assert env["GIT_ALLOW_PROTOCOL"] == ALLOWED_PROTOCOLS
    assert env["HOME"] == str(tmp_path)
    assert shlex.split(env["GIT_SSH_COMMAND"]) == [
        "ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new",
        "-o", f"UserKnownHostsFile={tmp_path}/known hosts",
    ]  # fmt: skip


def test_the_deploy_key_is_used_alone_when_it_exists(tmp_path: Path) -> None:
    key = tmp_path / "private keys" / "site"
    key.parent.mkdir()
    key.write_text("a key")
    argv = shlex.split(git_ssh_env(tmp_path, tmp_path / "kh", key)["GIT_SSH_COMMAND"])
    assert argv[-4:] == ["-i", str(key), "-o", "IdentitiesOnly=yes"]
