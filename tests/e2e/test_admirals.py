"""HYPERDRIVE_ADMIRAL_KEYS applies live: a key added there logs in without a restart."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.conftest import Daemon, make_daemon, wait_for
from tests.e2e.squadron import Admiral, keygen


def _started(root: Path, admirals: str) -> Daemon:
    root.mkdir(parents=True)
    (root / "admirals.pub").write_text(admirals)
    d = make_daemon(root)
    d.start()
    return d


def _refused(admiral: Admiral) -> bool:
    result = admiral.ssh("status", check=False)
    return result.returncode == 255 and "Permission denied" in result.stderr


def _fingerprint(key: Path) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", f"{key}.pub"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    return out.split()[1]


def test_a_key_appended_to_the_file_logs_in_without_a_restart(tmp_path: Path) -> None:
    d = _started(tmp_path / "hd", "")
    try:
        admiral = Admiral(d, keygen(tmp_path / "ops"))
        assert _refused(admiral)
        assert d.proc is not None
        pid = d.proc.pid
        with open(d.root / "admirals.pub", "a") as fh:  # what `cat ops.pub >> admirals.pub` does
            fh.write((tmp_path / "ops.pub").read_text())
        changed = d.wait_event("AdmiralsChanged", keys=1)
        assert changed["file"] == str(d.root / "admirals.pub")
        assert changed["fingerprints"] == [_fingerprint(tmp_path / "ops")]
        status = wait_for(lambda: admiral.ssh("status", check=False), what="ssh status to log in")
        assert status.returncode == 0, status.stderr
        assert d.env["HYPERDRIVE_NAME"] in status.stdout  # the squadron answered
        assert d.proc.pid == pid  # the same daemon: no restart
        assert d.proc.poll() is None
    finally:
        d.stop()


def test_an_editor_save_replaces_the_keys_and_bad_lines_are_refused(tmp_path: Path) -> None:
    old, new = keygen(tmp_path / "old"), keygen(tmp_path / "new")
    d = _started(tmp_path / "hd", (tmp_path / "old.pub").read_text())
    try:
        old_admiral, new_admiral = Admiral(d, old), Admiral(d, new)
        assert old_admiral.ssh("status").returncode == 0
        assert _refused(new_admiral)
        swap = d.root / ".admirals.pub.swp"  # an editor writes beside the file, then renames
        swap.write_text(f"{(tmp_path / 'new.pub').read_text()}ssh-ed25519 not-a-key\n")
        os.replace(swap, d.root / "admirals.pub")
        rejected = d.wait_event("AdmiralKeysRejected")
        assert rejected["message"].startswith(f"{d.root / 'admirals.pub'}:2: not an OpenSSH")
        d.wait_event("AdmiralsChanged", fingerprints=[_fingerprint(new)])
        assert new_admiral.ssh("status").returncode == 0
        assert _refused(old_admiral)
        private = (tmp_path / "old").read_text()
        with open(d.root / "admirals.pub", "a") as fh:  # a private key pasted by mistake
            fh.write(private)
        refused = wait_for(
            lambda: [e for e in d.events() if "PRIVATE key" in str(e.get("message"))],
            what="the private key to be refused",
        )
        assert private.splitlines()[1] not in (d.data / "events.jsonl").read_text()
        assert refused[0]["event"] == "AdmiralKeysRejected"
        assert new_admiral.ssh("status").returncode == 0  # the keys in force stay
        assert _refused(old_admiral)
    finally:
        d.stop()


def _doctor(d: Daemon) -> tuple[int, str]:
    result = d.hd("doctor", check=False)
    return result.returncode, " ".join(result.stdout.split())  # rich wraps at the width


def test_doctor_fails_while_nobody_can_log_in(tmp_path: Path) -> None:
    d = _started(tmp_path / "hd", "")
    try:
        code, said = _doctor(d)
        assert "FAIL admirals: 0 admiral key(s) in force" in said
        assert "fix: no admiral can log in: add a public key to" in said
        assert code == 1
        keygen(tmp_path / "ops")
        (d.root / "admirals.pub").write_text((tmp_path / "ops.pub").read_text())
        d.wait_event("AdmiralsChanged", keys=1)
        code, said = _doctor(d)
        assert "ok admirals: 1 admiral key(s) in force" in said
        assert code == (1 if "FAIL" in said else 0)
    finally:
        d.stop()
