"""Each process loads only what it uses: an idle daemon no dulwich or jinja2 until their first
use, git's hooks and `hd` no server stack."""

import subprocess
import sys

import pytest

CASES = {
    # the daemon: dulwich and jinja2 load at their first use
    "hyperdrive.server": {"dulwich", "jinja2"},
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
