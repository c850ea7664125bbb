"""aiohttp, loaded once for the daemon, without parsing the CA bundle at import.

aiohttp makes its two default client TLS contexts when it is imported, and each parses the
system's whole CA bundle (~140 certificates): ~2 MB of every daemon, for the few outbound
HTTPS calls it makes (forge commit statuses), if any. Loaded here, those contexts find CAs in
the system's hashed CA folder instead (`/etc/ssl/certs` on Debian, which update-ca-certificates
fills from the same sources as the bundle), one certificate at the handshake that needs it:
the same CAs, verified the same way. A CA file or folder the operator chose is read as usual.
"""

from __future__ import annotations

import importlib
import os
import ssl
import sys

FILE, FOLDER = "SSL_CERT_FILE", "SSL_CERT_DIR"  # OpenSSL's own variables, read per context


def load() -> None:
    """Import aiohttp with OpenSSL's CA file read as empty while its CA folder serves."""
    if "aiohttp" in sys.modules or not _system_cas_in_folder():
        return
    chosen = os.environ.get(FILE)
    os.environ[FILE] = os.devnull  # no other thread runs yet: the daemon has not started
    try:
        importlib.import_module("aiohttp")
    finally:
        if chosen is None:
            del os.environ[FILE]
        else:
            os.environ[FILE] = chosen


def _system_cas_in_folder() -> bool:
    """The CAs in force are the system's (no other file or folder chosen), and its folder is
    hashed for OpenSSL's lookups (`<hash>.0` links), so the folder alone finds each of them."""
    defaults = ssl.get_default_verify_paths()
    for variable, default in ((FILE, defaults.openssl_cafile), (FOLDER, defaults.openssl_capath)):
        chosen = os.environ.get(variable)
        if chosen is not None and os.path.realpath(chosen) != os.path.realpath(default):
            return False
    try:
        return any(name.endswith(".0") for name in os.listdir(defaults.openssl_capath))
    except OSError:
        return False
