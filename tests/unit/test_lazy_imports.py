"""An idle daemon holds only what it uses: dulwich and jinja2 load at their first use."""

import subprocess
import sys


def test_the_daemon_imports_neither_dulwich_nor_jinja2_until_it_needs_them() -> None:
    probe = "import sys, hyperdrive.server; print(sorted({'dulwich', 'jinja2'} & set(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


def test_git_hooks_write_triggers_without_the_event_loop_machinery() -> None:
    probe = (
        "import sys, hyperdrive.triggers; "
        "print(sorted({'asyncio', 'aiohttp', 'asyncssh'} & set(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


def test_git_hook_and_hd_load_no_server_stack() -> None:
    """post-receive and `hd` follow deploys over plain http.client: no aiohttp, asyncssh, rich."""
    probe = (
        "import sys, hyperdrive.hooks.post_receive, hyperdrive.cli; "
        "print(sorted({'aiohttp', 'asyncssh', 'rich', 'hyperdrive.eventlog'} & set(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"
