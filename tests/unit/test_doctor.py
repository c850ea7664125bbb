"""`hd doctor`'s admirals check: nobody able to log in is a failure with a fix line."""

from __future__ import annotations

from pathlib import Path

import asyncssh

from hyperdrive.config import Config
from hyperdrive.doctor import check_admirals


def _pub() -> str:
    return asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()


def test_no_admiral_key_anywhere_fails_with_a_fix(tmp_path: Path) -> None:
    config = Config(data=tmp_path / "data", var=tmp_path / "var", admiral_keys=tmp_path / "a.pub")
    (tmp_path / "a.pub").write_text("# add your key here\nnot a key\n")
    check = check_admirals(config, daemon_up=False)
    assert not check.ok
    assert check.fix == (
        f"no admiral can log in: add a public key to {tmp_path / 'a.pub'} (it applies at once)"
    )


def test_bootstrap_and_hq_keys_on_disk_count_once_each(tmp_path: Path) -> None:
    config = Config(data=tmp_path / "data", var=tmp_path / "var", admiral_keys=tmp_path / "a.pub")
    shared, other = _pub(), _pub()
    (tmp_path / "a.pub").write_text(shared)
    keys = tmp_path / "var" / "public_keys"
    keys.mkdir(parents=True)
    (keys / "alice.pub").write_text(shared + other)
    check = check_admirals(config, daemon_up=False)
    assert check.ok
    assert check.detail == "2 admiral key(s) on disk"
