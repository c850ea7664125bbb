"""git's pre-receive hook for the hosted headquarters: check a push before it lands.

Headquarters follows its default branch (HEAD; on the first push, the first branch pushed).
Every orders file is parsed, ports, servernames and names must not collide, and a push that
would leave no admiral key is refused — all with `file:line: message` lines. A good push is
told the plan it will carry out. Pushes to app repos pass untouched.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from hyperdrive import config as configuration
from hyperdrive.errors import ConfigError, HyperdriveError
from hyperdrive.headquarters.checks import check
from hyperdrive.headquarters.includes import read_includes
from hyperdrive.headquarters.plan import plan
from hyperdrive.headquarters.reader import (
    Headquarters,
    private_key_files,
    read_headquarters_from_git,
)
from hyperdrive.heads import branch_after_push, head_branch
from hyperdrive.keyring import parse_keys
from hyperdrive.names import HEADQUARTERS, ZERO_SHA
from hyperdrive.repos import resolve_ref


def _bootstrap_keys(path: Path) -> bool:
    try:
        keys, _ = parse_keys(path.read_text(errors="replace").splitlines(), str(path))
    except OSError:
        return False
    return bool(keys)


def _read(sha: str, hull: str, env: Mapping[str, str]) -> Headquarters:
    quarantine = [Path(env["GIT_QUARANTINE_PATH"])] if env.get("GIT_QUARANTINE_PATH") else []
    return read_headquarters_from_git(Path.cwd(), sha, hull, object_dirs=quarantine)


def _includes(folder: Path, out: TextIO) -> dict[str, str]:
    """The squadron's includes for the plan; a broken file is the server's problem, not the
    pusher's, so it is mentioned and left out rather than refusing the push."""
    try:
        return read_includes(folder)
    except ConfigError as err:
        out.write(f"hyperdrive: note: includes left out of this plan: {err}\n")
        return {}


def _private_keys(sha: str, env: Mapping[str, str]) -> list[str]:
    """A problem line for each file of the push that holds a private key."""
    quarantine = [Path(env["GIT_QUARANTINE_PATH"])] if env.get("GIT_QUARANTINE_PATH") else []
    return [
        f"{path}: holds a PRIVATE key: HQ is shared, keys are not (a certificate's key goes "
        "in $VAR/certs/<name>/privkey.pem on the squadron)"
        for path in private_key_files(Path.cwd(), sha, object_dirs=quarantine)
    ]


def followed_branch(repo: Path, updates: list[tuple[str, str, str]]) -> str:
    """The branch HQ follows once this push lands: HEAD's, or on a first push the first pushed."""
    head = head_branch(repo)
    pushed = {ref: new for _, new, ref in updates}
    ref = f"refs/heads/{head}"
    exists = pushed[ref] != ZERO_SHA if ref in pushed else resolve_ref(repo, ref) is not None
    return branch_after_push(head, exists, [(ref, new) for _, new, ref in updates])


def review(updates: list[tuple[str, str, str]], env: Mapping[str, str], out: TextIO) -> int:
    """0 to accept the push, 1 to refuse it; says why either way."""
    config = configuration.load(environ=env)
    branch = followed_branch(Path(env.get("GIT_DIR") or "."), updates)
    for old, new, ref in updates:
        if ref != f"refs/heads/{branch}":
            out.write(f"hyperdrive: {ref} is not headquarters: headquarters follows {branch}\n")
            continue
        if new == ZERO_SHA:
            out.write(f"hyperdrive: headquarters' branch {branch} cannot be deleted\n")
            return 1
        fresh = _read(new, config.hull, env)
        reserved = {
            config.http_port: "Hyperdrive's HTTP port",
            config.ssh_listen.port: "Hyperdrive's SSH port",
            config.api_listen.port: "Hyperdrive's API port",
            config.https_port: "Hyperdrive's HTTPS port",
        }
        problems = check(
            fresh,
            bootstrap_keys_present=_bootstrap_keys(config.admiral_keys),
            reserved_ports=reserved,
            domain=config.domain,
        )
        problems += _private_keys(new, env)
        if problems:
            out.write("hyperdrive: headquarters refused, nothing changed:\n")
            out.writelines(f"  {line}\n" for line in problems)
            return 1
        before = _read(old, config.hull, env) if old != ZERO_SHA else None
        includes = _includes(config.includes_dir, out)
        out.write("hyperdrive: headquarters accepted; the plan:\n")
        out.writelines(f"  {line}\n" for line in plan(before, fresh, includes, includes).lines())
    return 0


def main() -> int:
    if os.environ.get("HYPERDRIVE_APP") != HEADQUARTERS:
        return 0
    updates = []
    for line in sys.stdin:
        parts = line.split()
        if len(parts) == 3:
            updates.append((parts[0], parts[1], parts[2]))
    try:
        return review(updates, os.environ, sys.stderr)
    except HyperdriveError as err:
        sys.stderr.write(f"hyperdrive: headquarters refused: {err}\n")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
