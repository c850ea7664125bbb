"""The certificate store under `$VAR/certs`: what nginx may serve for each name.

`$VAR/certs/<name>/{fullchain.pem,privkey.pem}` is an admiral's own certificate (it wins);
Hyperdrive's own state lives in `$VAR/certs/.hyperdrive/` (a DNS name never starts with a
dot): the ACME account key, the HTTP-01 webroot, and issued certificates as immutable,
validated files `issued/<name>/<sha12>.pem` (key + chain, 0600) that nginx's config names (its
master reads them as root: keys stay 0600). A file that does not parse or whose key does not
match is set aside (`.bad`), an expired one removed: neither is ever named in the config.
`cryptography.x509` (~1.5 MB) loads when there is a certificate to read or make.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hyperdrive.errors import CertificateError

if TYPE_CHECKING:
    from cryptography import x509

log = logging.getLogger(__name__)

OWN_CHAIN, OWN_KEY = "fullchain.pem", "privkey.pem"
KEEP_VERSIONS = 2  # the live file and the one before it (a rolled-back config may name it)
RENEW_FRACTION = 1 / 3  # renew when a third of the lifetime is left


@dataclass(frozen=True)
class Certificate:
    """A validated certificate nginx may serve for `name`, and when to renew it."""

    name: str
    path: Path  # key and chain in one file (nginx reads both from it)
    not_before: dt.datetime
    not_after: dt.datetime
    issuer: str
    own: bool = False  # an admiral's own: never renewed by Hyperdrive

    @property
    def renew_at(self) -> dt.datetime:
        """When a third of the lifetime is left."""
        return renew_at(self.not_before, self.not_after)

    def to_json(self) -> dict[str, str | bool]:
        return {
            "name": self.name,
            "expires": iso(self.not_after),
            "issuer": self.issuer,
            "own": self.own,
            "renew": "" if self.own else iso(self.renew_at),
        }


def renew_at(not_before: dt.datetime, not_after: dt.datetime) -> dt.datetime:
    """The moment a third of the certificate's lifetime is left."""
    return not_after - (not_after - not_before) * RENEW_FRACTION


def iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def covers(cert: x509.Certificate, name: str) -> bool:
    """Whether the certificate's DNS names include `name` (exactly, or by a `*.` wildcard)."""
    from cryptography import x509  # noqa: PLC0415 - see the module's docstring

    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return False
    names = ext.value.get_values_for_type(x509.DNSName)
    parent = name.split(".", 1)[1] if "." in name else ""
    return name in names or (bool(parent) and f"*.{parent}" in names)


def _issuer(cert: x509.Certificate) -> str:
    from cryptography.x509.oid import NameOID  # noqa: PLC0415 - see the module's docstring

    common = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(common[0].value) if common else cert.issuer.rfc4514_string()


def check(name: str, chain_pem: bytes, key_pem: bytes, now: dt.datetime) -> x509.Certificate:
    """The leaf of a key + chain that may be served for `name` now, or CertificateError."""
    from cryptography import x509  # noqa: PLC0415 - see the module's docstring

    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as err:
        raise CertificateError(f"{name}: not a PEM certificate and key ({err})") from None
    leaf = chain[0]
    if leaf.public_key().public_bytes(*_SPKI) != key.public_key().public_bytes(*_SPKI):
        raise CertificateError(f"{name}: the private key does not belong to the certificate")
    if not covers(leaf, name):
        raise CertificateError(f"{name}: the certificate is not for this name")
    if not leaf.not_valid_before_utc <= now < leaf.not_valid_after_utc:
        raise Expired(f"{name}: the certificate is not valid now (expired?)")
    return leaf


class Expired(CertificateError):
    """A certificate outside its validity period."""


_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def new_key() -> bytes:
    """A fresh P-256 private key for one certificate, as PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file 0600 from the start, fsynced, then renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)


class CertStore:
    """Certificates on disk for each name; only validated files are ever handed to nginx."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = root / ".hyperdrive"

    @property
    def webroot(self) -> Path:
        """HTTP-01 answers: nginx serves `/.well-known/acme-challenge/<token>` from here."""
        return self.state / "challenges"

    @property
    def account_key(self) -> Path:
        return self.state / "account-key.pem"

    def prepare(self) -> None:
        """The folders, private (0700) except the webroot nginx's workers must read."""
        for folder in (self.root, self.state, self.state / "issued"):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.webroot.mkdir(parents=True, exist_ok=True)
        self.webroot.chmod(0o755)
        self.root.chmod(0o711)
        self.state.chmod(0o711)

    def issued_dir(self, name: str) -> Path:
        return self.state / "issued" / name

    def current(self, name: str, now: dt.datetime) -> Certificate | None:
        """What may be served for `name` now: the admiral's own if valid, else the newest
        valid issued one; a corrupt or expired file is moved aside and never served."""
        try:
            own = self._own(name, now)
            return own if own is not None else self._issued(name, now)
        except OSError as err:  # a full or read-only disk: serve HTTP, say why, try later
            log.warning("%s: certificates in %s unreadable: %s", name, self.root, err)
            return None

    def _own(self, name: str, now: dt.datetime) -> Certificate | None:
        """An admiral's certificate for the name (or a `*.<parent>` one covering it), copied
        (validated) to an immutable file nginx names."""
        for folder in self._own_folders(name):
            try:
                chain, key = (folder / OWN_CHAIN).read_bytes(), (folder / OWN_KEY).read_bytes()
                leaf = check(name, chain, key, now)
            except (OSError, CertificateError) as err:
                log.warning("%s: admiral's certificate in %s not served: %s", name, folder, err)
                continue
            path = self._keep(name, key + chain, prefix="own-")
            return self._certificate(name, path, leaf, own=True)
        return None

    def _own_folders(self, name: str) -> list[Path]:
        """`<name>/`, then `*.<parent>/`: the folders that may hold an admiral's own."""
        names = [name]
        if "." in name and not name.startswith("*."):
            names.append(f"*.{name.split('.', 1)[1]}")
        return [self.root / n for n in names if (self.root / n / OWN_CHAIN).is_file()]

    def _issued(self, name: str, now: dt.datetime) -> Certificate | None:
        """The newest valid issued certificate for `name`; bad files are set aside, expired
        ones removed."""
        found: list[Certificate] = []
        for path in self._versions(name, ""):
            try:
                data = path.read_bytes()
                found.append(self._certificate(name, path, check(name, data, data, now)))
            except Expired:
                path.unlink(missing_ok=True)
            except (OSError, CertificateError) as err:
                log.warning("%s: %s set aside, not served: %s", name, path.name, err)
                with contextlib.suppress(OSError):
                    path.replace(path.with_suffix(".bad"))
        return max(found, key=lambda c: c.not_after, default=None)

    def _versions(self, name: str, prefix: str) -> list[Path]:
        folder = self.issued_dir(name)
        if not folder.is_dir():
            return []
        paths = [
            p for p in folder.glob(f"{prefix}*.pem") if prefix or not p.name.startswith("own-")
        ]
        return sorted(paths, key=lambda p: p.stat().st_mtime)

    @staticmethod
    def _certificate(
        name: str, path: Path, leaf: x509.Certificate, own: bool = False
    ) -> Certificate:
        return Certificate(
            name, path, leaf.not_valid_before_utc, leaf.not_valid_after_utc, _issuer(leaf), own
        )

    def save(self, name: str, key_pem: bytes, chain_pem: bytes, now: dt.datetime) -> Certificate:
        """Validate a freshly issued certificate and keep it; CertificateError if unusable."""
        leaf = check(name, chain_pem, key_pem, now)
        path = self._keep(name, key_pem + chain_pem, prefix="")
        return self._certificate(name, path, leaf)

    def _keep(self, name: str, data: bytes, prefix: str) -> Path:
        """Write `data` to `issued/<name>/<prefix><sha12>.pem` once; prune old versions."""
        path = self.issued_dir(name) / f"{prefix}{hashlib.sha256(data).hexdigest()[:12]}.pem"
        if not path.is_file() or path.read_bytes() != data:
            write_private(path, data)
            for old in self._versions(name, prefix)[:-KEEP_VERSIONS]:
                old.unlink(missing_ok=True)
        return path

    def survey(self) -> dict[str, tuple[dt.datetime, bool]]:
        """Each name's certificate on disk: (expiry, an admiral's own), valid or not, touching
        nothing (for `hd doctor`); the admiral's own wins as it does when serving."""
        found: dict[str, tuple[dt.datetime, bool]] = {}
        issued = self.state / "issued"
        for folder in sorted(issued.iterdir()) if issued.is_dir() else []:
            ends = [_expiry(p) for p in self._versions(folder.name, "")]
            if dates := [end for end in ends if end is not None]:
                found[folder.name] = (max(dates), False)
        for chain in sorted(self.root.glob(f"[!.]*/{OWN_CHAIN}")):
            if (end := _expiry(chain)) is not None:
                found[chain.parent.name] = (end, True)
        return found

    def account(self) -> bytes:
        """The ACME account's private key (PEM), made once and kept."""
        with contextlib.suppress(FileNotFoundError):
            return self.account_key.read_bytes()
        key = new_key()
        write_private(self.account_key, key)
        return key

    def write_challenge(self, token: str, validation: str) -> Path:
        """Publish one HTTP-01 answer in the webroot (tokens are base64url: safe names)."""
        if not token or not all(c.isalnum() or c in "-_" for c in token):
            raise CertificateError(f"the ACME server sent an odd token {token[:40]!r}")
        path = self.webroot / token
        path.write_text(validation)
        path.chmod(0o644)
        return path


def _expiry(path: Path) -> dt.datetime | None:
    """When the first certificate in a PEM file expires (None: unreadable)."""
    from cryptography import x509  # noqa: PLC0415 - see the module's docstring

    try:
        return x509.load_pem_x509_certificates(path.read_bytes())[0].not_valid_after_utc
    except (OSError, ValueError):
        return None


def fingerprint(cert_pem: bytes) -> str:
    """sha256 of a PEM certificate's DER, hex (for status and tests)."""
    from cryptography import x509  # noqa: PLC0415 - see the module's docstring

    return x509.load_pem_x509_certificate(cert_pem).fingerprint(hashes.SHA256()).hex()


def self_signed(name: str, days: int = 7) -> bytes:
    """A throwaway key + self-signed certificate for `name` (PEM), served until a real one."""
    from cryptography import x509  # noqa: PLC0415 - see the module's docstring
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem + cert.public_bytes(serialization.Encoding.PEM)
