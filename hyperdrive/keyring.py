"""The live set of admiral and captain keys: who may push, deploy and enter ships over SSH.

HQ's `authorized_keys/*.pub` are swapped in whole with `replace()` each time HQ changes; the
bootstrap keys (HYPERDRIVE_ADMIRAL_KEYS) stay valid beside them so the first HQ push can happen;
that file is re-read whenever it changes (`reload_bootstrap`), so a key added there works at once.
Captains (HQ's `<app>/captains/*.pub`) are swapped in whole with `replace_captains()`.
A lookup reads one dict reference, so a swap is atomic: a removed key opens no new connection,
while sessions it already opened run to their end.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hyperdrive.access import Identity
from hyperdrive.headquarters.admirals import PRIVATE_MARKERS, key_lines, public_key
from hyperdrive.headquarters.orders import MAX_FILE_BYTES
from hyperdrive.sshlib import asyncssh

log = logging.getLogger(__name__)

BOOTSTRAP = "bootstrap"
_UNSAFE = re.compile(r"[^A-Za-z0-9._@+-]")


def parse_keys(lines: Iterable[str], source: str) -> tuple[list[asyncssh.SSHKey], list[str]]:
    """Parse OpenSSH public key lines: (keys, problems), one problem per unreadable line."""
    keys: list[asyncssh.SSHKey] = []
    problems: list[str] = []
    for number, line in key_lines(lines):
        try:
            keys.append(public_key(line))
        except ValueError as err:
            problems.append(f"{source}:{number}: not an OpenSSH public key ({err})")
    return keys, problems


def _bootstrap_name(key: asyncssh.SSHKey) -> str:
    """Name a bootstrap admiral after the key's comment, made safe for env vars and logs."""
    comment = key.get_comment() or ""
    safe = _UNSAFE.sub("", comment)[:64]
    return f"{BOOTSTRAP}:{safe}" if safe else BOOTSTRAP


@dataclass(frozen=True)
class BootstrapKeys:
    """What one read of HYPERDRIVE_ADMIRAL_KEYS put in force (fingerprints, never keys)."""

    path: str
    fingerprints: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()
    changed: bool = False  # the set of keys that may log in is not what it was
    refused: bool = False  # the file holds a private key: nothing in it was loaded


class KeyRing:
    """Maps public key blobs to admiral names; HQ's set is replaced whole, atomically."""

    def __init__(self) -> None:
        self._hq: dict[bytes, str] = {}
        self._bootstrap: dict[bytes, str] = {}
        self._captains: dict[bytes, Identity] = {}
        self._fingerprints: tuple[str, ...] = ()

    def replace(self, keys: Mapping[str, Sequence[str]]) -> list[str]:
        """Install HQ's admirals (name → key lines); return the lines that were skipped."""
        fresh: dict[bytes, str] = {}
        problems: list[str] = []
        for admiral, lines in sorted(keys.items()):
            parsed, bad = parse_keys(lines, admiral)
            problems += bad
            for key in parsed:
                fresh.setdefault(key.public_data, admiral)
        self._hq = fresh  # one reference swap: lookups see the old set or the new one
        for problem in problems:
            log.warning("admiral keys: %s", problem)
        return problems

    def replace_captains(self, captains: Mapping[str, Mapping[str, Sequence[str]]]) -> list[str]:
        """Install HQ's captains (app → captain → key lines); a key listed by several apps is
        captain of each, under the name it has in the first; return the lines skipped."""
        names: dict[bytes, str] = {}
        apps: dict[bytes, set[str]] = {}
        problems: list[str] = []
        for app, crew in sorted(captains.items()):
            for captain, lines in sorted(crew.items()):
                parsed, bad = parse_keys(lines, f"{app}/captains/{captain}")
                problems += bad
                for key in parsed:
                    names.setdefault(key.public_data, captain)
                    apps.setdefault(key.public_data, set()).add(app)
        self._captains = {blob: Identity.captain(names[blob], apps[blob]) for blob in names}
        for problem in problems:
            log.warning("captain keys: %s", problem)
        return problems

    def add_bootstrap(self, lines: Iterable[str], source: str = BOOTSTRAP) -> list[str]:
        """Add keys that stay valid whatever HQ says; return the lines that were skipped."""
        parsed, problems = parse_keys(lines, source)
        merged = dict(self._bootstrap)
        for key in parsed:
            merged.setdefault(key.public_data, _bootstrap_name(key))
        self._bootstrap = merged
        fingerprints = {*self._fingerprints, *(key.get_fingerprint() for key in parsed)}
        self._fingerprints = tuple(sorted(fingerprints))
        for problem in problems:
            log.warning("bootstrap admiral keys: %s", problem)
        return problems

    def reload_bootstrap(self, path: Path) -> BootstrapKeys:
        """Replace the bootstrap keys with what `path` holds now (missing = none).

        A file holding a private key is refused whole, like HQ refuses one: the keys in force
        stay, and the message never quotes the file.
        """
        try:
            data = path.read_bytes()[: MAX_FILE_BYTES + 1]
        except FileNotFoundError:
            data = b""
        except OSError as err:
            return BootstrapKeys(str(path), problems=(f"{path}: unreadable ({err.strerror})",))
        if any(marker in data for marker in PRIVATE_MARKERS):
            problem = f"{path}: holds a PRIVATE key: nothing in it was loaded; remove it and "
            problem += "replace that key (the keys in force stay)"
            return BootstrapKeys(str(path), self.bootstrap_fingerprints(), (problem,), refused=True)
        parsed, problems = parse_keys(data.decode("utf-8", "replace").splitlines(), str(path))
        fresh: dict[bytes, str] = {}
        for key in parsed:
            fresh.setdefault(key.public_data, _bootstrap_name(key))
        changed = fresh.keys() != self._bootstrap.keys()
        self._bootstrap = fresh  # one reference swap, like replace()
        self._fingerprints = tuple(sorted({key.get_fingerprint() for key in parsed}))
        for problem in problems:
            log.warning("bootstrap admiral keys: %s", problem)
        return BootstrapKeys(str(path), self.bootstrap_fingerprints(), tuple(problems), changed)

    def bootstrap_fingerprints(self) -> tuple[str, ...]:
        """SHA256 fingerprints of the bootstrap keys in force (safe to show)."""
        return self._fingerprints

    def admiral_for(self, key: asyncssh.SSHKey) -> str | None:
        """The admiral who owns `key` (HQ's name first), or None for a stranger."""
        blob = key.public_data
        return self._hq.get(blob) or self._bootstrap.get(blob)

    def identity_for(self, key: asyncssh.SSHKey) -> Identity | None:
        """Who `key` is: an admiral (whatever else lists it), a captain, or None (a stranger)."""
        admiral = self.admiral_for(key)
        if admiral is not None:
            return Identity(admiral)
        return self._captains.get(key.public_data)

    def count(self) -> int:
        """How many distinct admiral keys may log in now."""
        return len(self._hq.keys() | self._bootstrap.keys())

    def captain_count(self) -> int:
        """How many distinct captain keys (that are not admirals' too) may log in now."""
        return len(self._captains.keys() - self._hq.keys() - self._bootstrap.keys())


def bootstrap_keyring(path: Path) -> KeyRing:
    """A key ring holding HYPERDRIVE_ADMIRAL_KEYS (HQ's keys join it when HQ is read)."""
    keyring = KeyRing()
    if not keyring.reload_bootstrap(path).fingerprints:
        log.warning("no bootstrap admiral keys at %s", path)
    return keyring
