"""Each process loads only what it uses: an idle daemon no dulwich or jinja2 until their first
use, git's hooks and `hd` no server stack."""

import subprocess
import sys
from pathlib import Path

import pytest

CASES = {
    # the daemon: dulwich and jinja2 load at their first use, uvloop when its loop is made
    # (HYPERDRIVE_EVENT_LOOP=asyncio never loads it)
    "hyperdrive.server": {"dulwich", "jinja2", "uvloop"},
    # a squadron alone never loads the NATS client (the fleet link is loaded only in a fleet)
    "hyperdrive.server, hyperdrive.bootstrap, hyperdrive.fleet.service": {"nats"},
    # git's hooks write triggers without the event loop machinery
    "hyperdrive.triggers": {"asyncio", "aiohttp", "asyncssh"},
    # post-receive and `hd` follow deploys over plain http.client
    "hyperdrive.hooks.post_receive, hyperdrive.cli": {
        "aiohttp",
        "asyncssh",
        "rich",
        "hyperdrive.eventlog",
    },
    # a push's trigger is on disk before the hook loads what follows the deploy
    "hyperdrive.hooks.post_receive": {"http.client", "dulwich", "hyperdrive.follow", "asyncio"},
    # `hd status` is interpreter start plus imports: logging and hashlib wait for their use
    "hyperdrive.cli": {"logging", "hashlib", "secrets", "getpass"},
}


@pytest.mark.parametrize(("modules", "unwanted"), list(CASES.items()))
def test_importing_loads_nothing_it_does_not_use(modules: str, unwanted: set[str]) -> None:
    probe = f"import sys, {modules}; print(sorted(set({sorted(unwanted)!r}) & set(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


def test_a_push_to_heads_branch_adopts_without_dulwich(tmp_path: Path) -> None:
    """The common push (HEAD's branch written) keeps HEAD and never loads dulwich."""
    repo = tmp_path / "app.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(repo)], check=True, timeout=30)
    probe = (
        "import sys; from pathlib import Path; from hyperdrive.heads import adopt_pushed_branch; "
        f"print(adopt_pushed_branch(Path({str(repo)!r}), [('refs/heads/main', 'a' * 40)]), "
        "'dulwich' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["main", "False"]
