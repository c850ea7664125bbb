"""The squadron-wide env: `$DATA/includes/*.env`, merged under every app's own orders."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from hyperdrive.errors import ConfigError
from hyperdrive.files import read_capped
from hyperdrive.headquarters.orders import ENV_NAME, MAX_FILE_BYTES


def read_env_file(text: str, path: str) -> dict[str, str]:
    """Read `KEY=VALUE` lines (`#` comments, optional `export `, optional matching quotes).

    Nothing is expanded. A bad line raises ConfigError naming file and line.
    """
    env: dict[str, str] = {}
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, eq, value = line.removeprefix("export ").lstrip().partition("=")
        key = key.strip()
        if not eq or not ENV_NAME.fullmatch(key) or "\x00" in value:
            raise ConfigError(f"{path}:{number}: expected KEY=VALUE")
        env[key] = _unquote(value.strip())
    return env


def _unquote(value: str) -> str:
    """Strip one pair of matching outer quotes."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def read_includes(folder: Path) -> dict[str, str]:
    """Every `*.env` in `folder`, in name order (a later file wins); a missing folder is empty."""
    env: dict[str, str] = {}
    if not folder.is_dir():
        return env
    for path in sorted(folder.glob("*.env")):
        data = read_capped(path, MAX_FILE_BYTES)
        if data is None or len(data) > MAX_FILE_BYTES:
            raise ConfigError(f"{path}: not a regular file of at most {MAX_FILE_BYTES} bytes")
        env.update(read_env_file(data.decode("utf-8", "replace"), str(path)))
    return env


def merge_env(includes: Mapping[str, str], orders_env: Mapping[str, str]) -> dict[str, str]:
    """The env a ship gets: squadron-wide includes under the app's own orders (orders win)."""
    return {**includes, **orders_env}
