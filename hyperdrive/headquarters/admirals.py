"""Admiral and captain keys: the one reader of OpenSSH public key lines (`type base64 [comment]`).

HQ's `authorized_keys/<admiral>.pub`, `<app>/captains/<captain>.pub` and the bootstrap file
(HYPERDRIVE_ADMIRAL_KEYS) are all read with `key_lines` and `public_key`; each says what a bad
line means for its own file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from hyperdrive.headquarters.orders import MAX_FILE_BYTES, shown
from hyperdrive.sshlib import asyncssh

KEYS_DIR = "authorized_keys"
CAPTAINS_DIR = "captains"  # <app>/captains/<name>.pub: keys with rights over that app only
ADMIRAL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._@+-]{0,63}")
PRIVATE_MARKERS = (b"PRIVATE KEY", b"PuTTY-User-Key-File", b"SSH2 ENCRYPTED PRIVATE KEY")
PUBLIC_KEYS_HINT = "use OpenSSH lines like 'ssh-ed25519 AAAA… comment'"


def key_lines(lines: Iterable[str]) -> Iterator[tuple[int, str]]:
    """Numbered (from 1) lines that should hold a key: blanks and `#` comments are skipped."""
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield number, line


def public_key(line: str) -> asyncssh.SSHKey:
    """One OpenSSH public key line; ValueError with asyncssh's reason when it is not one."""
    try:
        return asyncssh.import_public_key(line)
    except (asyncssh.KeyImportError, ValueError) as err:
        raise ValueError(str(err)) from None


@dataclass(frozen=True)
class AdmiralKey:
    """One admiral public key, as loaded from `authorized_keys/<admiral>.pub`."""

    admiral: str
    line: str
    fingerprint: str


def parse_admiral_file(name: str, data: bytes, role: str = "admiral") -> list[AdmiralKey]:
    """Parse `authorized_keys/<name>.pub` (or a captain's `.pub`): OpenSSH public key lines.

    Raises ValueError with a message safe to show: it never quotes the file, because a
    private key committed by mistake must not be echoed anywhere.
    """
    admiral = name.removesuffix(".pub")
    if not ADMIRAL_NAME.fullmatch(admiral):
        raise ValueError(f"{shown(admiral)} is not a usable {role} name")
    if any(marker in data for marker in PRIVATE_MARKERS):
        raise ValueError(
            "holds a PRIVATE key: it was not loaded; remove it from HQ and replace that key"
        )
    if len(data) > MAX_FILE_BYTES or b"\x00" in data:
        raise ValueError(f"is not a public key file ({PUBLIC_KEYS_HINT})")
    text = data.decode("utf-8", "replace")
    keys = [_admiral_key(admiral, line, n) for n, line in key_lines(text.split("\n"))]
    if not keys:
        raise ValueError(f"holds no key ({PUBLIC_KEYS_HINT})")
    return keys


def _admiral_key(admiral: str, line: str, number: int) -> AdmiralKey:
    """Validate one OpenSSH public key line and normalise it."""
    try:
        key = public_key(line)
    except ValueError:
        raise ValueError(
            f"line {number} is not an OpenSSH public key ({PUBLIC_KEYS_HINT})"
        ) from None
    canonical = key.export_public_key("openssh").decode("ascii").strip()
    return AdmiralKey(admiral, canonical, str(key.get_fingerprint("sha256")))
