"""The live admiral key set: lookups, atomic replacement, bootstrap keys, bad lines."""

from __future__ import annotations

from pathlib import Path

import asyncssh
import pytest

from hyperdrive.headquarters.admirals import parse_admiral_file
from hyperdrive.keyring import KeyRing, parse_keys


def new_key(comment: str = "") -> tuple[asyncssh.SSHKey, str]:
    key = asyncssh.generate_private_key("ssh-ed25519", comment=comment or None)
    return key, key.export_public_key().decode().strip()


def test_replace_names_the_admiral_of_each_key() -> None:
    (alice, alice_line), (bob, bob_line) = new_key(), new_key()
    ring = KeyRing()
    assert ring.replace({"alice": [alice_line], "bob": ["# laptop", "", bob_line]}) == []
    assert ring.admiral_for(alice) == "alice"
    assert ring.admiral_for(bob) == "bob"
    assert ring.admiral_for(new_key()[0]) is None
    assert ring.count() == 2


def test_replace_is_whole_a_removed_key_is_gone() -> None:
    (alice, alice_line), (bob, bob_line) = new_key(), new_key()
    ring = KeyRing()
    ring.replace({"alice": [alice_line], "bob": [bob_line]})
    ring.replace({"bob": [bob_line]})
    assert ring.admiral_for(alice) is None
    assert ring.admiral_for(bob) == "bob"


def test_bootstrap_keys_stay_beside_hq_and_hq_names_win() -> None:
    (boot, boot_line), (shared, shared_line) = new_key("ops@laptop"), new_key()
    ring = KeyRing()
    ring.add_bootstrap([boot_line, shared_line])
    assert ring.admiral_for(boot) == "bootstrap:ops@laptop"
    assert ring.admiral_for(shared) == "bootstrap"
    ring.replace({"carol": [shared_line]})
    assert ring.admiral_for(shared) == "carol"
    ring.replace({})
    assert ring.admiral_for(boot) == "bootstrap:ops@laptop"
    assert ring.count() == 2


def test_unreadable_lines_are_reported_and_skipped() -> None:
    key, line = new_key()
    ring = KeyRing()
    problems = ring.replace({"dave": ["ssh-ed25519 not-base64!", line, "hello"]})
    assert [p.split(":")[:2] for p in problems] == [["dave", "1"], ["dave", "3"]]
    assert ring.admiral_for(key) == "dave"
    assert ring.add_bootstrap(["garbage"], source="/etc/hyperdrive/admirals.pub") == [
        "/etc/hyperdrive/admirals.pub:1: not an OpenSSH public key (Invalid public key)"
    ]


def test_hostile_comments_do_not_leak_into_admiral_names() -> None:
    key, line = new_key("x; rm -rf /$(reboot)")
    ring = KeyRing()
    ring.add_bootstrap([line])
    assert ring.admiral_for(key) == "bootstrap:xrm-rfreboot"


def test_reload_bootstrap_replaces_the_file_keys_whole(tmp_path: Path) -> None:
    (first, first_line), (second, second_line) = new_key("one"), new_key("two")
    path = tmp_path / "admirals.pub"
    ring = KeyRing()
    assert ring.reload_bootstrap(path).fingerprints == ()  # no file yet: nobody
    path.write_text(first_line)
    loaded = ring.reload_bootstrap(path)
    assert loaded.changed
    assert ring.admiral_for(first) == "bootstrap:one"
    assert loaded.fingerprints == (first.get_fingerprint(),)
    path.write_text(f"{second_line}\nnot a key\n")
    loaded = ring.reload_bootstrap(path)
    assert ring.admiral_for(first) is None
    assert ring.admiral_for(second) == "bootstrap:two"
    assert loaded.problems == (f"{path}:2: not an OpenSSH public key (Invalid public key)",)
    assert not ring.reload_bootstrap(path).changed  # the same keys again: no change


def test_reload_bootstrap_refuses_a_file_with_a_private_key(tmp_path: Path) -> None:
    key, line = new_key("ops")
    path = tmp_path / "admirals.pub"
    path.write_text(line)
    ring = KeyRing()
    ring.reload_bootstrap(path)
    private = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    other, other_line = new_key()
    path.write_text(f"{line}\n{other_line}\n{private}")
    loaded = ring.reload_bootstrap(path)
    assert loaded.refused
    assert not loaded.changed
    assert "PRIVATE key" in loaded.problems[0]
    assert private.splitlines()[1] not in repr(loaded)
    assert ring.admiral_for(key) == "bootstrap:ops"  # the keys in force stay
    assert ring.admiral_for(other) is None


def test_hq_files_and_the_bootstrap_file_read_key_lines_alike() -> None:
    """One reader of `type base64 comment` lines: the same lines count and the same one fails."""
    key, line = new_key("ops@laptop")
    text = f"# laptop\n\n  {line}  \r\nssh-ed25519 not-base64!\n"
    keys, problems = parse_keys(text.split("\n"), "admirals.pub")
    assert [k.public_data for k in keys] == [key.public_data]
    assert [p.split(":")[:2] for p in problems] == [["admirals.pub", "4"]]
    with pytest.raises(ValueError, match=r"^line 4 is not an OpenSSH public key \(use OpenSSH"):
        parse_admiral_file("ops.pub", text.encode())
    [loaded] = parse_admiral_file("ops.pub", f"# laptop\n\n  {line}  \r\n".encode())
    assert loaded.line == line
    assert loaded.fingerprint == key.get_fingerprint("sha256")
