"""asyncssh, imported once for the whole package, without its X.509 support.

asyncssh loads pyOpenSSL and `cryptography.x509` at import when they are installed (`acme`
brings pyOpenSSL) for X.509 SSH certificates (RFC 6187), which OpenSSH does not speak and
Hyperdrive never uses: ~1.4 MB of every daemon. For the length of that one import the two
read as not installed (a None in sys.modules, Python's own way to say so); afterwards they
import as usual, for the ACME client and the certificate store.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import cast

WITHOUT = ("OpenSSL", "cryptography.x509")


@contextmanager
def hidden(names: tuple[str, ...]) -> Iterator[None]:
    """Make `names` unimportable inside the block; put back what sys.modules held."""
    modules = cast("dict[str, ModuleType | None]", sys.modules)  # None: "not installed"
    saved = {name: modules.pop(name, None) for name in names}
    modules.update(dict.fromkeys(names))
    try:
        yield
    finally:
        for name, module in saved.items():
            modules.pop(name, None)
            if module is not None:
                modules[name] = module


with hidden(WITHOUT):
    import asyncssh

__all__ = ["asyncssh"]
