"""Git remote URLs in one comparable form, so a forge's push can be matched to an app's orders.

`https://github.com/Owner/Repo.git`, `git@github.com:owner/repo`, `ssh://git@github.com:22/owner/repo/`
and `github.com/owner/repo` all become `github.com/owner/repo`. The form is for comparing only:
ports, user names, credentials, queries and fragments are dropped, host and path are lower-cased,
`.git` suffixes and empty segments go. Local paths (`/srv/git/app.git`, `file:///srv/git/app.git`)
become `/srv/git/app`. Never fetch from a normalised URL; fetch from the URL the orders name.
"""

from __future__ import annotations

import functools
import re
from urllib.parse import urlsplit

from hyperdrive.credentials import shown_url
from hyperdrive.errors import InvalidName

__all__ = ["normalize_url", "same_repo", "shown_url", "split_branch"]

SCHEMES = frozenset({"http", "https", "ssh", "git", "git+ssh", "ssh+git", "file"})
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_SCP = re.compile(r"(?:[^@/:\[\]]+@)?([^@/:\[\]]+):(.+)")
_BARE = re.compile(r"(\[[0-9a-f:.]+\]|[^@/:\[\]]+)/(.*)")
_HOST = re.compile(r"[a-z0-9._-]+|\[[0-9a-f:.]+\]")
_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f]")
MAX_URL = 2048


@functools.lru_cache(maxsize=4096)  # forges send the same few URLs with every push
def normalize_url(url: str) -> str:
    """Return `host/owner/repo` (or `/local/path`) for any usual spelling of a git remote.

    Raise InvalidName for text that is not a git URL. Idempotent: normalising the result
    again gives the same string.
    """
    text = _clean_text(url)
    scheme = _SCHEME.match(text)
    if scheme:
        return _from_scheme_url(text, scheme.group(1).lower())
    if text.startswith("/"):
        return _local(text)
    bare = _BARE.fullmatch(text)
    if bare:
        return _join(bare.group(1), bare.group(2), url)
    scp = _SCP.fullmatch(text)
    if scp:
        return _join(scp.group(1), scp.group(2), url)
    raise InvalidName(f"not a git URL: {_shown(url)}")


def split_branch(spec: str) -> tuple[str, str | None]:
    """`URL#branch` → (URL, branch); a URL without `#` → (URL, None)."""
    url, sep, branch = spec.partition("#")
    return url, (branch if sep and branch else None)


def same_repo(first: str, second: str) -> bool:
    """True when both URLs name the same repository; a malformed URL matches nothing."""
    try:
        return normalize_url(first) == normalize_url(second)
    except InvalidName:
        return False


def _clean_text(url: str) -> str:
    if not isinstance(url, str) or not url.strip() or len(url) > MAX_URL:
        raise InvalidName(f"not a git URL: {_shown(str(url))}")
    text = url.strip()
    if _UNSAFE.search(text):
        raise InvalidName(f"git URL contains spaces or control characters: {_shown(url)}")
    return text.split("#", 1)[0].split("?", 1)[0]


def _from_scheme_url(text: str, scheme: str) -> str:
    if scheme not in SCHEMES:
        raise InvalidName(f"not a git URL scheme: {scheme!r}")
    try:
        parts = urlsplit(text)
        host = parts.hostname or ""
    except ValueError as err:
        raise InvalidName(f"not a git URL: {_shown(text)}: {err}") from err
    if scheme == "file":
        if host not in ("", "localhost"):
            raise InvalidName(f"file URL names a remote host: {_shown(text)}")
        return _local(parts.path or "/")
    if not host:
        raise InvalidName(f"git URL has no host: {_shown(text)}")
    if ":" in host:  # urlsplit drops the brackets of an IPv6 literal
        host = f"[{host}]"
    return _join(host, parts.path, text)


def _join(host: str, path: str, original: str) -> str:
    host = host.lower().rstrip(".")
    if not _HOST.fullmatch(host):
        raise InvalidName(f"git URL has an invalid host: {_shown(original)}")
    segments = _segments(path, original)
    if not segments:
        raise InvalidName(f"git URL names no repository: {_shown(original)}")
    return "/".join([host, *segments])


def _local(path: str) -> str:
    segments = _segments(path, path)
    if not segments:
        raise InvalidName(f"git path names no repository: {_shown(path)}")
    return "/" + "/".join(segments)


def _segments(path: str, original: str) -> list[str]:
    """Lower-case path segments without empties, `.` and trailing `.git` suffixes."""
    segments = [s for s in path.lower().split("/") if s not in ("", ".")]
    if ".." in segments:
        raise InvalidName(f"git URL climbs with '..': {_shown(original)}")
    while segments and segments[-1].endswith(".git"):
        segments[-1] = segments[-1][: -len(".git")]
        if segments[-1] in ("", "."):
            segments.pop()
    return segments


def _shown(text: str, limit: int = 80) -> str:
    text = shown_url(text)
    return repr(text if len(text) <= limit else text[:limit] + "…")
