"""The security boundary for names: every app, ship, hull and ref name is checked here, once."""

import re
from ipaddress import IPv4Address

from hyperdrive.errors import InvalidName

APP_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,38}")
HULL_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,30}")
SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
REF_CHARS = re.compile(r"[A-Za-z0-9._/+-]+")
HEADQUARTERS = "headquarters"
ZERO_SHA = "0" * 40  # what git reports for the missing side of a ref created or deleted


def sanitize_app_name(name: str) -> str:
    """Return `name` if it is a valid app name; raise InvalidName otherwise.

    App names become folder names, container names and nginx locations, so this is
    the one check that keeps hostile input out of every path and command.
    """
    if not isinstance(name, str) or not APP_NAME.fullmatch(name):
        raise InvalidName(f"invalid app name {name!r}: use [a-z0-9][a-z0-9-]{{0,38}}")
    return name


def is_app_name(name: str) -> bool:
    """Whether `name` would pass sanitize_app_name (a rejected HQ folder may not)."""
    return isinstance(name, str) and APP_NAME.fullmatch(name) is not None


def repo_name(path: str) -> str:
    """Turn what a git client asks for (`/app.git`, `app`, `'~/app'`) into an app name."""
    name = path.strip().lstrip("/")
    if name.startswith("~/"):
        name = name[2:]
    if name.endswith(".git"):
        name = name[:-4]
    return sanitize_app_name(name)


def check_sha(sha: str) -> str:
    """Return a full lower-case hex object id, or raise InvalidName."""
    if not isinstance(sha, str) or not SHA.fullmatch(sha):
        raise InvalidName(f"invalid commit id {sha!r}")
    return sha


def check_ref(ref: str) -> str:
    """Accept only refs/heads/* and refs/tags/* names git itself would accept."""
    ok = (
        isinstance(ref, str)
        and ref.startswith(("refs/heads/", "refs/tags/"))
        and len(ref) <= 255
        and ".." not in ref
        and not ref.endswith(("/", ".lock", "."))
        and REF_CHARS.fullmatch(ref) is not None
        and "//" not in ref
    )
    if not ok:
        raise InvalidName(f"invalid ref {ref!r}")
    return ref


def ship_name(prefix: str, app: str, sha: str) -> str:
    """`<name>-<app>-<sha7>`: the ship that runs `app` at `sha`."""
    return f"{prefix}-{sanitize_app_name(app)}-{check_sha(sha)[:7]}"


def mac_for_ip(ip: IPv4Address | str) -> str:
    """A locally administered unicast MAC that is a function of the IPv4 address alone."""
    octets = IPv4Address(ip).packed
    return ":".join(f"{b:02x}" for b in (0x02, 0x48, *octets))
