"""aiohttp loaded by the daemon parses no CA bundle, yet its default client context still
verifies: against the system's hashed CA folder, a certificate at a time."""

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[2]
DAY = dt.timedelta(days=1)

# Runs in a child: the system's defaults name `folder` as the CA folder (this test cannot add
# a CA to the host's own), then a real TLS server on loopback and aiohttp's default client.
CHILD = """
import asyncio, ssl, sys
folder, good, stranger = sys.argv[1:4]
real = ssl.get_default_verify_paths
ssl.get_default_verify_paths = lambda: real()._replace(openssl_capath=folder)
from hyperdrive import httplib
httplib.load()
import aiohttp, aiohttp.connector
from aiohttp import web

async def fetch(chain):
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(chain)
    app = web.Application()
    app.router.add_get("/", lambda request: web.Response(text="hello"))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"https://localhost:{port}/") as answer:
                return await answer.text()
    except aiohttp.ClientConnectorCertificateError:
        return "refused"
    finally:
        await runner.cleanup()

print(aiohttp.connector._SSL_CONTEXT_VERIFIED.cert_store_stats()["x509_ca"])
print(asyncio.run(fetch(good)), asyncio.run(fetch(stranger)))
"""


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _authority(common: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder(_name(common), _name(common), key.public_key(), 1, now, now + DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _chain(folder: Path, common: str) -> tuple[x509.Certificate, Path]:
    """A CA named `common` and a `localhost` certificate it signed, key and chain in one file."""
    ca_key, ca = _authority(common)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder(ca.subject, _name("localhost"), key.public_key(), 2, now, now + DAY)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    path = folder / f"{common}.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        + cert.public_bytes(serialization.Encoding.PEM)
    )
    return ca, path


def test_the_default_context_loads_no_bundle_and_verifies_from_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "certs"
    folder.mkdir()
    trusted, good = _chain(tmp_path, "trusted-ca")
    _, stranger = _chain(tmp_path, "stranger-ca")
    (folder / "trusted-ca.pem").write_bytes(trusted.public_bytes(serialization.Encoding.PEM))
    subprocess.run(["openssl", "rehash", str(folder)], check=True, timeout=30)
    env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    env.update(SSL_CERT_DIR=str(folder), PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder), str(good), str(stranger)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.split() == ["0", "hello", "refused"]


def test_a_ca_file_the_operator_chose_is_read_as_usual(tmp_path: Path) -> None:
    trusted, _ = _chain(tmp_path, "own-ca")
    bundle = tmp_path / "own.pem"
    bundle.write_bytes(trusted.public_bytes(serialization.Encoding.PEM))
    probe = (
        "from hyperdrive import httplib; httplib.load(); import aiohttp.connector as c; "
        "print(c._SSL_CONTEXT_VERIFIED.cert_store_stats()['x509_ca'])"
    )
    env = {**os.environ, "SSL_CERT_FILE": str(bundle), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.split() == ["1"]
