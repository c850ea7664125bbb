"""Credentials kept out of text people see: URLs are shown without their userinfo.

`http://deploy:TOKEN@host/x.git` is fetched as written but shown as `http://host/x.git`.
An `ssh://` user without a password (`ssh://git@host/x`) is an account name, not a secret,
and stays; scp-style `git@host:x` has no password by design and stays too.
"""

from __future__ import annotations

import re
from typing import Any

# scheme://userinfo@ where userinfo has no '/', '@' or whitespace (RFC 3986 §3.2.1)
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^\s/@?#\"'<>]+)@")
_NAME_ONLY = frozenset({"ssh", "git+ssh", "ssh+git"})


def shown_url(url: str) -> str:
    """`url` as Hyperdrive shows it: no password, no token, no HTTP user."""
    return strip_userinfo(url)


def strip_userinfo(text: str) -> str:
    """Text with the userinfo of every URL in it removed (git's stderr may echo the URL)."""
    return _USERINFO.sub(_keep_safe, text)


def strip_userinfo_in(value: Any) -> Any:
    """`strip_userinfo` over every string inside a JSON-like value (the event log's last line)."""
    if isinstance(value, str):
        return strip_userinfo(value) if "@" in value else value
    if isinstance(value, tuple):
        return tuple(strip_userinfo_in(v) for v in value)
    if isinstance(value, list):
        return [strip_userinfo_in(v) for v in value]
    if isinstance(value, dict):
        return {k: strip_userinfo_in(v) for k, v in value.items()}
    return value


def _keep_safe(match: re.Match[str]) -> str:
    scheme, userinfo = match.group(1), match.group(2)
    if scheme[:-3].lower() in _NAME_ONLY and ":" not in userinfo:
        return match.group(0)
    return scheme
