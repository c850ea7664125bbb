"""Each process loads only what it uses: an idle daemon no dulwich, jinja2, dnspython, X.509 or
version libraries until their first use, git's hooks and `hd` no server stack."""

import subprocess
import sys
from pathlib import Path

import pytest

CASES = {
    # the daemon: each loads at its first use (a deploy, a ship's DNS query, a certificate,
    # an app's runtime files, a mistyped directive), uvloop when its loop is made; asyncssh
    # never loads its X.509 support
    "hyperdrive.server": {
        "dulwich",
        "jinja2",
        "dns",
        "OpenSSL",
        "cryptography.x509",
        "nodesemver",
        "packaging",
        "tomllib",
        "difflib",
        "zipfile",
        "uvloop",
        "hyperdrive.hull_debian",  # the first Debian hull loads it (and its apt sources)
        "hyperdrive.aptsource",
        "hyperdrive.pipeline.fakes",  # the ports' in-memory fakes are for the unit tests
    },
    # a squadron alone never loads the NATS client (the fleet link is loaded only in a fleet),
    # nor the managed node, the outbox or the code bundles
    "hyperdrive.server, hyperdrive.bootstrap, hyperdrive.fleet.service": {
        "nats",
        "hyperdrive.fleet.link",
        "hyperdrive.fleet.node",
        "hyperdrive.fleet.outbox",
        "hyperdrive.fleet.bundles",
    },
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
    # `hd status` is interpreter start plus imports: logging and hashlib wait for their use,
    # the client speaks HTTP itself (no http.client, its email parser, ssl), other verbs'
    # modules load in those verbs
    "hyperdrive.cli": {
        "logging",
        "hashlib",
        "secrets",
        "getpass",
        "http.client",
        "email",
        "ssl",
        "threading",
        "hyperdrive.triggers",
        "hyperdrive.follow",
    },
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


def test_what_the_daemon_leaves_out_still_loads_after_it() -> None:
    """asyncssh without X.509 in the daemon; pyOpenSSL, acme and x509 import as usual later,
    and asyncssh reads the admirals' keys as before."""
    probe = (
        "import sys, hyperdrive.server; from hyperdrive.sshlib import asyncssh; "
        "import OpenSSL.crypto, acme.client, cryptography.x509, dns.message; "
        "key = asyncssh.generate_private_key('ssh-ed25519'); "
        "line = key.export_public_key().decode(); "
        "print(asyncssh.import_public_key(line).public_data == key.public_data, "
        "hasattr(asyncssh.crypto, 'X509Certificate'), cryptography.x509.load_pem_x509_certificate "
        "is not None)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["True", "False", "True"]
