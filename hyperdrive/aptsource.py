"""Where the `debian` hull downloads Debian from: the host's own apt sources and proxy.

A host that already reaches Debian through a local mirror or a caching proxy builds its hulls
the same way. HYPERDRIVE_APT_MIRROR overrides the mirror; a host whose sources name no Debian
mirror (an Ubuntu host, say) falls back to deb.debian.org, and the hull build says so.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from hyperdrive import procs

ETC_APT = Path("/etc/apt")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Debian's suites and code names (Ubuntu's are others): a source for one of them is Debian's.
DEBIAN_SUITES = frozenset(
    {"buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid"}
    | {"stable", "oldstable", "oldoldstable", "testing", "unstable", "experimental"}
)
# archive.debian.org keeps only releases that have ended: it has no bookworm.
NOT_MIRRORS = ("archive.debian.org",)
PROXY_LINE = re.compile(r'^Acquire::(https?)::Proxy "([^"]*)";$')


@dataclass(frozen=True)
class Source:
    """One `deb` line or deb822 stanza: its URIs and suites."""

    uris: tuple[str, ...]
    suites: tuple[str, ...]


@dataclass(frozen=True)
class AptSource:
    """The mirror (and security mirror, proxies) a hull build uses, and where they came from."""

    mirror: str
    origin: str
    security: str | None = None
    proxies: tuple[tuple[str, str], ...] = ()  # ("http", url), ("https", url)

    def env(self) -> dict[str, str]:
        """What lxc-debian, debootstrap and the chroot's apt read: mirrors and proxies."""
        env = {"MIRROR": self.mirror}
        if self.security:
            env["SECURITY_MIRROR"] = self.security
        for scheme, url in self.proxies:
            env[f"{scheme}_proxy"] = url
        return env

    def describe(self) -> str:
        """For events and logs: the mirror, its origin, the proxy without its password."""
        proxy = "".join(f", {scheme} proxy {redact(url)}" for scheme, url in self.proxies)
        return f"mirror {redact(self.mirror)} ({self.origin}{proxy})"


def parse_deb822(text: str) -> list[Source]:
    """`*.sources` stanzas (blank-line separated `Key: value`), `Enabled: no` left out."""
    sources = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line[0].isspace() and key:  # a continuation line
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        types = fields.get("types", "").split()
        if "deb" not in types or fields.get("enabled", "yes").lower() == "no":
            continue
        sources.append(Source(tuple(fields.get("uris", "").split()), _suites(fields)))
    return sources


def _suites(fields: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(fields.get("suites", "").split())


def parse_one_line(text: str) -> list[Source]:
    """`deb [options] URI suite component…` lines of sources.list."""
    sources = []
    for raw in text.splitlines():
        line = re.sub(r"\[[^]]*\]", " ", raw.split("#", 1)[0]).split()
        if len(line) >= 3 and line[0] == "deb":
            sources.append(Source((line[1],), (line[2],)))
    return sources


def host_sources(etc_apt: Path) -> list[Source]:
    """Every `deb` source the host's apt reads, in apt's order."""
    sources = parse_one_line(_read(etc_apt / "sources.list"))
    folder = etc_apt / "sources.list.d"
    for path in sorted(folder.glob("*.list")) if folder.is_dir() else ():
        sources += parse_one_line(_read(path))
    for path in sorted(folder.glob("*.sources")) if folder.is_dir() else ():
        sources += parse_deb822(_read(path))
    return sources


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def debian_mirrors(sources: Iterable[Source]) -> tuple[str | None, str | None]:
    """The first Debian mirror and the first Debian security mirror (http or https only)."""
    mirror = security = None
    for source in sources:
        kinds = {_suite_kind(suite) for suite in source.suites}
        for uri in source.uris:
            if not _usable(uri):
                continue
            if "main" in kinds and mirror is None:
                mirror = uri.rstrip("/")
            if "security" in kinds and security is None:
                security = uri.rstrip("/")
    return mirror, security


def _suite_kind(suite: str) -> str | None:
    """`bookworm`, `bookworm-updates` → main; `bookworm-security` → security; else None."""
    base, _, pocket = suite.partition("-")
    base, _, old_pocket = base.partition("/")  # buster/updates: the old security suite name
    if base not in DEBIAN_SUITES:
        return None
    return "security" if "security" in (pocket, old_pocket) or old_pocket == "updates" else "main"


def _usable(uri: str) -> bool:
    parts = urlsplit(uri)
    return parts.scheme in ("http", "https") and parts.hostname not in (None, *NOT_MIRRORS)


def proxies_from_dump(dump: str) -> tuple[tuple[str, str], ...]:
    """`Acquire::http::Proxy "URL";` (and https) from `apt-config dump`; DIRECT means none."""
    found = []
    for line in dump.splitlines():
        match = PROXY_LINE.match(line.strip())
        if match and match.group(2) and match.group(2).upper() != "DIRECT":
            found.append((match.group(1), match.group(2)))
    return tuple(found)


async def from_host(override: str = "", etc_apt: Path = ETC_APT) -> AptSource:
    """The host's apt sources and `apt-config dump`'s proxies, read now (they may change)."""
    try:
        dump = await procs.run(["apt-config", "dump"], timeout=10)
    except OSError:  # no apt-config: not a Debian host
        dump = None
    text = dump.stdout if dump is not None and dump.returncode == 0 else ""
    return resolve(override, host_sources(etc_apt), text)


def resolve(override: str, sources: Iterable[Source], proxy_dump: str = "") -> AptSource:
    """HYPERDRIVE_APT_MIRROR, else the host's Debian mirror, else deb.debian.org (said so)."""
    mirror, security = debian_mirrors(sources)
    proxies = proxies_from_dump(proxy_dump)
    chosen = override.strip().rstrip("/")
    if chosen:
        return AptSource(chosen, "HYPERDRIVE_APT_MIRROR", security, proxies)
    if mirror:
        return AptSource(mirror, "the host's apt sources", security, proxies)
    origin = "the host's apt sources name no Debian mirror: Debian's own"
    return AptSource(DEFAULT_MIRROR, origin, security, proxies)


def redact(url: str) -> str:
    """A URL without its user and password (a proxy's credentials stay out of events)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, f"***@{netloc}", parts.path, parts.query, parts.fragment))
