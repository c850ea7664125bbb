"""HTTPS as a user sees it: the whole daemon, a busybox ship, real nginx and a real ACME
server (pebble on loopback, its directory trusted through HYPERDRIVE_ACME_CA). Served chains
are checked against pebble's own root; the names resolve to 127.0.0.1 through
pebble-challtestsrv, so validation reaches this squadron's HTTP port and nothing else."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon, wait_for
from tests.e2e.squadron import (
    AppRepo,
    admiral_squadron,
    http_get,
    make_squadron,
    push_orders,
    teardown,
    wait_outcome,
)
from tests.integration.net_fixtures import http_get as raw_get
from tests.pebble import Pebble, https_get, served_chain

pytestmark = [pytest.mark.root, pytest.mark.lxc, pytest.mark.nginx, pytest.mark.slow]

ISSUE_S = 90.0


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Daemon, Pebble]]:
    """A squadron whose ACME directory is a pebble of its own (not started yet)."""
    d = make_squadron(tmp_path / "hd")
    pebble = Pebble(tmp_path / "pebble", d.http_port)
    d.env |= {
        "HYPERDRIVE_ACME_DIRECTORY": pebble.directory,
        "HYPERDRIVE_ACME_CA": str(pebble.ca_file),
        "HYPERDRIVE_ACME_EMAIL": "admiral@example.com",
        "HYPERDRIVE_ACME_RETRY": "1",
    }
    try:
        yield d, pebble
    finally:
        teardown(d)
        pebble.close()


def https_port(d: Daemon) -> int:
    conf = (d.root / "main.conf").read_text()
    return int(
        next(line for line in conf.splitlines() if line.startswith("HYPERDRIVE_HTTPS_PORT=")).split(
            "="
        )[1]
    )


def deploy_web(d: Daemon, tmp_path: Path, orders: str) -> None:
    push_orders(d, tmp_path / "hq", {"web": orders})
    repo = AppRepo(d, "web", tmp_path / "web")
    outcome = wait_outcome(d, repo.push_trigger(repo.commit({"index.html": "hello over tls\n"})))
    assert outcome["event"] == "DeployFinished", outcome


def test_first_certificate_and_https_only(world: tuple[Daemon, Pebble], tmp_path: Path) -> None:
    d, pebble = world
    pebble.start()
    d.start()
    host = f"web.{d.env['HYPERDRIVE_NAME']}.test"
    deploy_web(d, tmp_path, f"servername {host}\nhttps only\nhealthcheck / 3\n")
    issued = d.wait_event("CertificateIssued", ISSUE_S, host=host)
    assert "Pebble" in issued["issuer"]
    root = pebble.roots_file()
    port = https_port(d)
    leaf = served_chain(port, host, root)
    assert leaf.not_valid_after_utc.isoformat(timespec="seconds").startswith(issued["expires"][:16])
    status, headers, body = https_get(port, host, "/", root)
    assert (status, body) == (200, b"hello over tls\n")
    assert headers["Strict-Transport-Security"] == "max-age=31536000"
    status, headers, _ = raw_get(d.http_port, "/x?y=1", host)  # urllib would follow it
    assert (status, headers["Location"]) == (308, f"https://{host}:{port}/x?y=1")
    # the app's path on the squadron's own name is not redirected (it has no certificate)
    assert http_get(d.http_port, "/web/")[0] == 200
    rows = json.loads(d.hd("status", "--json").stdout)["certificates"]
    assert [(r["name"], r["expires"], r["own"]) for r in rows] == [(host, issued["expires"], False)]


def test_acme_down_at_deploy_serves_http_and_retries(
    world: tuple[Daemon, Pebble], tmp_path: Path
) -> None:
    d, pebble = world
    d.start()  # pebble not running: the ACME server is down
    host = f"web.{d.env['HYPERDRIVE_NAME']}.test"
    deploy_web(d, tmp_path, f"servername {host}\nhealthcheck / 3\n")  # the deploy did not wait
    failed = d.wait_event("CertificateFailed", ISSUE_S, host=host)
    assert host in failed["message"]
    assert failed["retry"]
    assert http_get(d.http_port, "/", host) == (200, "hello over tls\n")
    row = json.loads(d.hd("status", "--json").stdout)["certificates"][0]
    assert row["error"]
    pebble.start()
    d.wait_event("CertificateIssued", ISSUE_S, host=host)
    assert https_get(https_port(d), host, "/", pebble.roots_file())[2] == b"hello over tls\n"


def test_api_port_serves_https_as_its_name(world: tuple[Daemon, Pebble], tmp_path: Path) -> None:
    """HYPERDRIVE_API_TLS: self-signed until the name's certificate comes, then the real one."""
    d, pebble = world
    pebble.start()
    name = f"hooks.{d.env['HYPERDRIVE_NAME']}.test"
    d.env["HYPERDRIVE_API_TLS"] = name
    log = d.log_path.open("ab")
    d.proc = subprocess.Popen(
        [sys.executable, "-m", "hyperdrive", "serve"], env=d.env, stdout=log, stderr=log
    )
    log.close()
    wait_for(
        lambda: d.proc.poll() is None and (d.data / "events.jsonl").exists(), 20, 0.05, d.log()
    )
    d.wait_event("CertificateIssued", ISSUE_S, host=name)
    root = pebble.roots_file()

    def verified() -> bool:
        try:
            served_chain(d.api_port, name, root)
        except (ssl.SSLError, OSError):
            return False
        return True

    wait_for(verified, 20, 0.1, lambda: f"the API to serve {name}'s certificate; log: {d.log()}")
    status, _, body = https_get(d.api_port, name, "/healthz", root)
    assert (status, json.loads(body)["status"]) == (200, "ok")
    assert http_get(d.api_port, "/healthz")[0] == 0  # no plain HTTP on the API port


def test_headquarters_refuses_a_private_key(tmp_path: Path) -> None:
    """An admiral's certificate key belongs in $VAR/certs/<name>/, never in the shared HQ."""
    with admiral_squadron(tmp_path) as (_, lead):
        hq = lead.working_copy(tmp_path / "hq", "headquarters")
        key = Path(f"{lead.key}.pub").read_text()
        lead.commit(hq, {"authorized_keys/lead.pub": key, "web/orders": "https only\n"})
        lead.git("push", "hyperdrive", "HEAD:master", cwd=hq)
        pem = own_key_pem()
        lead.commit(hq, {"web/tls/privkey.pem": pem, "web/orders": "servername w.test\n"})
        refused = lead.git("push", "hyperdrive", "HEAD:master", cwd=hq, check=False)
        said = refused.stdout + refused.stderr
        assert refused.returncode != 0
        assert "headquarters refused, nothing changed" in said
        assert "web/tls/privkey.pem: holds a PRIVATE key" in said
        assert "$VAR/certs/<name>/privkey.pem" in said
        assert "PRIVATE KEY-----" not in said, "the key is never echoed"


def own_key_pem() -> str:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

    return (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        .decode()
    )


def test_renewal_by_the_daemon_with_no_failed_request(tmp_path: Path) -> None:
    """pebble issues 20 s certificates: the daemon's one timer renews each after ~13 s and
    nginx swaps it in while a client keeps asking over new connections."""
    d = make_squadron(tmp_path / "hd")
    pebble = Pebble(tmp_path / "pebble", d.http_port, validity_s=20)
    d.env |= {
        "HYPERDRIVE_ACME_DIRECTORY": pebble.directory,
        "HYPERDRIVE_ACME_CA": str(pebble.ca_file),
        "HYPERDRIVE_ACME_RETRY": "1",
    }
    try:
        pebble.start()
        d.start()
        host = f"web.{d.env['HYPERDRIVE_NAME']}.test"
        deploy_web(d, tmp_path, f"servername {host}\nhealthcheck / 3\n")
        d.wait_event("CertificateIssued", ISSUE_S, host=host)
        root, port = pebble.roots_file(), https_port(d)
        first = served_chain(port, host, root)
        answers: list[object] = []
        stop = threading.Event()

        def ask() -> None:
            while not stop.is_set():
                try:
                    answers.append(https_get(port, host, "/", root)[0])
                except (OSError, ssl.SSLError) as err:
                    answers.append(repr(err))

        client = threading.Thread(target=ask, daemon=True)
        client.start()
        try:
            d.wait_event("CertificateRenewed", ISSUE_S, host=host)
            time.sleep(1.0)  # requests on the renewed certificate too
        finally:
            stop.set()
            client.join(10)
        second = served_chain(port, host, root)
        assert second.serial_number != first.serial_number
        assert answers, "no request was made"
        assert set(answers) == {200}, [a for a in answers if a != 200][:5]
    finally:
        teardown(d)
        pebble.close()
