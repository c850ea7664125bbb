"""A real ACME server on loopback for tests and benchmarks: Debian's `pebble`, with
`pebble-challtestsrv` as its DNS (every name is 127.0.0.1), validating HTTP-01 on the port
the squadron's nginx serves HTTP on.

Debian ships no test certificate for pebble's own HTTPS: a throw-away CA made here signs it,
and that CA is what HYPERDRIVE_ACME_CA trusts. The certificates pebble issues chain to its own
root, which its management API gives (`/roots/0`): that is what clients check served chains
against. Ports are free ones on 127.0.0.1; everything stops in `close()`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import free_port

START_S = 20.0


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
) -> x509.Certificate:
    """A CA certificate (issuer None) or a 127.0.0.1/localhost leaf signed by `issuer`."""
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    signer_name, signer_key = (
        (name, key)
        if issuer is None
        else (x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer[0])]), issuer[1])
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(signer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is not None:
        import ipaddress  # noqa: PLC0415

        sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(signer_key, hashes.SHA256())


def wait_port(port: int, what: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_S
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{what} did not listen on {port}: {log.read_text()[-2000:]}"
                ) from None
            time.sleep(0.05)


class Pebble:
    """pebble + pebble-challtestsrv under `folder`, validating on 127.0.0.1:`http_port`."""

    def __init__(self, folder: Path, http_port: int, validity_s: int | None = None) -> None:
        for program in ("pebble", "pebble-challtestsrv"):
            if shutil.which(program) is None:
                raise AssertionError(f"{program} is not installed (apt-get install pebble)")
        self.folder, self.http_port, self.validity_s = folder, http_port, validity_s
        folder.mkdir(parents=True, exist_ok=True)
        self.port, self.management, self.dns = free_port(), free_port(), free_port()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ca_file = folder / "directory-ca.pem"
        self._tls_files()

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def _tls_files(self) -> None:
        """A CA for pebble's own HTTPS (what HYPERDRIVE_ACME_CA trusts) and its leaf."""
        ca_key, key = (
            ec.generate_private_key(ec.SECP256R1()),
            ec.generate_private_key(ec.SECP256R1()),
        )
        ca = _cert("hyperdrive test directory CA", ca_key, None)
        leaf = _cert("localhost", key, ("hyperdrive test directory CA", ca_key))
        self.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        (self.folder / "cert.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        (self.folder / "key.pem").write_bytes(_pem_key(key))

    def _config(self) -> Path:
        pebble = {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.management}",
            "certificate": str(self.folder / "cert.pem"),
            "privateKey": str(self.folder / "key.pem"),
            "httpPort": self.http_port,
            "tlsPort": free_port(),  # nobody answers TLS-ALPN-01 there: HTTP-01 it is
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
        if self.validity_s is not None:
            pebble["certificateValidityPeriod"] = self.validity_s
        path = self.folder / "pebble-config.json"
        path.write_text(json.dumps({"pebble": pebble}))
        return path

    def _spawn(
        self, argv: list[str], name: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.folder / f"{name}.log").open("ab")
        proc = subprocess.Popen(argv, stdout=log, stderr=log, env=env, cwd=self.folder)
        log.close()
        self.procs.append(proc)
        return proc

    def start(self) -> Pebble:
        """challtestsrv (DNS only), then pebble; returns once both listen."""
        if not any(p.poll() is None and p.args[0] == "pebble-challtestsrv" for p in self.procs):
            dns = self._spawn(
                [
                    "pebble-challtestsrv",
                    "-dns01",
                    f"127.0.0.1:{self.dns}",
                    "-http01",
                    "",
                    "-https01",
                    "",
                    "-tlsalpn01",
                    "",
                    "-management",
                    f"127.0.0.1:{free_port()}",
                    "-defaultIPv4",
                    "127.0.0.1",
                    "-defaultIPv6",
                    "",
                ],
                "challtestsrv",
            )
            time.sleep(0.2)
            if dns.poll() is not None:
                raise AssertionError((self.folder / "challtestsrv.log").read_text()[-2000:])
        env = {
            "PATH": os.environ["PATH"],
            "PEBBLE_VA_NOSLEEP": "1",
            "PEBBLE_VA_ALWAYS_VALID": "0",  # validate for real, against our nginx
            "PEBBLE_WFE_NONCEREJECT": "0",
            "PEBBLE_AUTHZREUSE": "0",  # every order proves its name again
        }
        argv = [
            "pebble",
            "-config",
            str(self._config()),
            "-dnsserver",
            f"127.0.0.1:{self.dns}",
            "-strict",
        ]
        proc = self._spawn(argv, "pebble", env)
        wait_port(self.port, "pebble", proc, self.folder / "pebble.log")
        wait_port(self.management, "pebble's management API", proc, self.folder / "pebble.log")
        return self

    def stop_pebble(self) -> None:
        """pebble alone goes (the ACME server down); challtestsrv stays."""
        for proc in self.procs:
            if proc.args[0] == "pebble" and proc.poll() is None:
                proc.terminate()
                proc.wait(10)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)

    def root_pem(self) -> bytes:
        """pebble's root CA, from its management API: what issued chains must lead to."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        url = f"https://127.0.0.1:{self.management}/roots/0"
        with urllib.request.urlopen(url, timeout=10, context=context) as response:
            return response.read()

    def roots_file(self) -> Path:
        path = self.folder / f"root-{time.monotonic_ns()}.pem"
        path.write_bytes(self.root_pem())
        return path


def served_chain(port: int, name: str, cafile: Path, timeout: float = 5.0) -> x509.Certificate:
    """The leaf nginx serves for `name` (SNI) on 127.0.0.1:port, verified against `cafile`
    (hostname included); ssl.SSLError if it does not verify."""
    context = ssl.create_default_context(cafile=str(cafile))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def https_get(
    port: int, name: str, path: str, cafile: Path, timeout: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    """GET https://name:port/path on 127.0.0.1 with the chain verified against `cafile`."""
    import http.client  # noqa: PLC0415

    context = ssl.create_default_context(cafile=str(cafile))
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=context)
    try:
        conn.sock = context.wrap_socket(
            socket.create_connection(("127.0.0.1", port), timeout=timeout), server_hostname=name
        )
        conn.request("GET", path, headers={"Host": name})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()
