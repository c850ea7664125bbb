"""HYPERDRIVE_ADMIRAL_USER's authorized_keys: a managed block, the user's own keys untouched."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from hyperdrive.authorized_keys import BEGIN, END, AuthorizedKeysError, install, merge

ALICE = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAlice alice@laptop"
BOB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBob"
OWN = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQOwn me@desk"
ME = (os.getuid(), os.getgid())


def block_of(text: str) -> list[str]:
    lines = text.splitlines()
    return lines[lines.index(BEGIN) + 1 : lines.index(END)]


def test_a_new_file_holds_only_the_block(tmp_path: Path) -> None:
    target = install(tmp_path / ".ssh", {"alice": [ALICE]}, *ME)
    assert target == tmp_path / ".ssh" / "authorized_keys"
    assert f"{ALICE} hyperdrive-admiral-alice" in block_of(target.read_text())
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / ".ssh").stat().st_mode) == 0o700


def test_the_users_own_keys_stay_around_the_block(tmp_path: Path) -> None:
    ssh = tmp_path / ".ssh"
    ssh.mkdir()
    (ssh / "authorized_keys").write_text(f"# mine\n{OWN}\n")
    install(ssh, {"alice": [ALICE], "bob": [BOB]}, *ME)
    install(ssh, {"bob": [BOB]}, *ME)
    text = (ssh / "authorized_keys").read_text()
    assert text.startswith(f"# mine\n{OWN}\n{BEGIN}\n")
    assert ALICE not in text
    assert [line for line in block_of(text) if not line.startswith("#")] == [
        f"{BOB} hyperdrive-admiral-bob"
    ]
    (ssh / "authorized_keys").write_text(text + "ssh-ed25519 AAAAafter added@later\n")
    install(ssh, {"alice": [ALICE]}, *ME)
    text = (ssh / "authorized_keys").read_text()
    assert text.endswith(f"{END}\nssh-ed25519 AAAAafter added@later\n")
    assert OWN in text
    assert BOB not in text


def test_no_admirals_leaves_an_empty_block_never_an_empty_file(tmp_path: Path) -> None:
    ssh = tmp_path / ".ssh"
    assert install(ssh, {}, *ME) is None
    assert not (ssh / "authorized_keys").exists()
    install(ssh, {"alice": [ALICE]}, *ME)
    install(ssh, {}, *ME)
    text = (ssh / "authorized_keys").read_text()
    assert text.strip()
    assert [line for line in block_of(text) if not line.startswith("#")] == []


def test_lines_an_older_version_wrote_are_taken_into_the_block() -> None:
    """Before the block, the whole file was `<key> hyperdrive-admiral-<name>` lines."""
    old = f"{ALICE} hyperdrive-admiral-alice\n{OWN}\n{BOB} hyperdrive-admiral-bob\n"
    text = merge(old, [f"{BOB} hyperdrive-admiral-bob"])
    assert ALICE not in text
    assert text.count(BOB) == 1
    assert text.startswith(f"{OWN}\n{BEGIN}\n")


def test_mode_and_owner_of_the_file_are_kept(tmp_path: Path) -> None:
    ssh = tmp_path / ".ssh"
    ssh.mkdir()
    target = ssh / "authorized_keys"
    target.write_text(f"{OWN}\n")
    target.chmod(0o640)
    if os.getuid() == 0:
        os.chown(target, 65534, 65534)
    before = target.stat()
    install(ssh, {"alice": [ALICE]}, *ME)
    after = target.stat()
    assert stat.S_IMODE(after.st_mode) == 0o640
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)
    assert after.st_ino != before.st_ino, "replaced by rename, not rewritten in place"
    assert [p.name for p in ssh.iterdir()] == ["authorized_keys"], "no temp file left"


@pytest.mark.parametrize(
    "broken",
    [
        f"{OWN}\n{BEGIN}\n{ALICE}\n",
        f"{OWN}\n{END}\n{ALICE}\n{BEGIN}\n",
        f"{BEGIN}\n{END}\n{BEGIN}\n{END}\n",
    ],
)
def test_a_hand_broken_block_leaves_the_file_as_it_was(tmp_path: Path, broken: str) -> None:
    ssh = tmp_path / ".ssh"
    ssh.mkdir()
    (ssh / "authorized_keys").write_text(broken)
    with pytest.raises(AuthorizedKeysError, match="fix the file by hand"):
        install(ssh, {"bob": [BOB]}, *ME)
    assert (ssh / "authorized_keys").read_text() == broken


def test_a_symbolic_link_is_not_followed(tmp_path: Path) -> None:
    """The user owns ~/.ssh: a link there must not make root rewrite another file."""
    ssh = tmp_path / ".ssh"
    ssh.mkdir()
    elsewhere = tmp_path / "shadow"
    elsewhere.write_text("root:x:0:0\n")
    (ssh / "authorized_keys").symlink_to(elsewhere)
    with pytest.raises(AuthorizedKeysError, match="symbolic link"):
        install(ssh, {"bob": [BOB]}, *ME)
    assert elsewhere.read_text() == "root:x:0:0\n"
