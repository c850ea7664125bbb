"""The per-app secrets of outbound deliveries, kept out of HQ in `$VAR/private_keys`:
`<app>.forge-token` (the forge API token) and `<app>.notify-secret` (the Standard Webhooks
signing secret). Mode 0600, written atomically; read only when a delivery is sent."""

from __future__ import annotations

from pathlib import Path

from hyperdrive.errors import HyperdriveError
from hyperdrive.files import write_atomically
from hyperdrive.modes import SECRET_MODE
from hyperdrive.names import sanitize_app_name

FORGE_TOKEN, NOTIFY_SECRET = "forge-token", "notify-secret"
KINDS = (FORGE_TOKEN, NOTIFY_SECRET)
MAX_BYTES = 4096


def key_path(private_keys: Path, app: str, kind: str) -> Path:
    """`$VAR/private_keys/<app>.<kind>`; app names hold no dot, so no deploy key is hit."""
    if kind not in KINDS:
        raise HyperdriveError(f"unknown secret kind {kind!r}")
    return private_keys / f"{sanitize_app_name(app)}.{kind}"


def store(private_keys: Path, app: str, kind: str, value: str) -> Path:
    """Keep one secret (its surrounding blanks cut); an empty or multi-line one is refused."""
    text = value.strip()
    if not text or "\n" in text or len(text) > MAX_BYTES or not text.isprintable():
        raise HyperdriveError(f"a {kind} is one printable line of at most {MAX_BYTES} bytes")
    private_keys.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = key_path(private_keys, app, kind)
    write_atomically(path, text + "\n", mode=SECRET_MODE)
    return path


def load(private_keys: Path, app: str, kind: str) -> str | None:
    """The secret, or None when none is kept."""
    try:
        text = key_path(private_keys, app, kind).read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return text or None
