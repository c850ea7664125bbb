"""Headquarters: orders, the squadron-wide includes, admiral and captain keys, reading an HQ,
the push checks and the change plan — one module each; the names other modules use are here too.

Pure and synchronous (no daemon, no SSH): callers run it through `asyncio.to_thread`.
Orders are parsed, never executed. dulwich loads only where git is read.
"""

from hyperdrive.headquarters.admirals import (
    CAPTAINS_DIR,
    KEYS_DIR,
    PRIVATE_MARKERS,
    AdmiralKey,
    key_lines,
    parse_admiral_file,
    public_key,
)
from hyperdrive.headquarters.checks import check, describe
from hyperdrive.headquarters.includes import merge_env, read_env_file, read_includes
from hyperdrive.headquarters.orders import (
    DIRECTIVES,
    MAX_FILE_BYTES,
    ORDERS,
    Orders,
    parse_orders,
    parse_orders_bytes,
)
from hyperdrive.headquarters.plan import Plan, plan
from hyperdrive.headquarters.reader import (
    Files,
    Headquarters,
    headquarters_from_files,
    read_files_from_git,
    read_headquarters,
    read_headquarters_from_git,
)

__all__ = [
    "CAPTAINS_DIR",
    "DIRECTIVES",
    "KEYS_DIR",
    "MAX_FILE_BYTES",
    "ORDERS",
    "PRIVATE_MARKERS",
    "AdmiralKey",
    "Files",
    "Headquarters",
    "Orders",
    "Plan",
    "check",
    "describe",
    "headquarters_from_files",
    "key_lines",
    "merge_env",
    "parse_admiral_file",
    "parse_orders",
    "parse_orders_bytes",
    "plan",
    "public_key",
    "read_env_file",
    "read_files_from_git",
    "read_headquarters",
    "read_headquarters_from_git",
    "read_includes",
]
