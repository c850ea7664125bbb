"""Which mirror and proxy the `debian` hull is built from: parsed from the host's apt files."""

from __future__ import annotations

from pathlib import Path

from hyperdrive.aptsource import (
    DEFAULT_MIRROR,
    host_sources,
    parse_deb822,
    parse_one_line,
    proxies_from_dump,
    redact,
    resolve,
)

DEBIAN_12 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.local/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.local/debian-security
Suites: bookworm-security
Components: main
"""

UBUNTU = """\
Types: deb
URIs: http://archive.ubuntu.com/ubuntu/
Suites: noble noble-updates noble-backports
Components: main restricted universe multiverse

Types: deb
URIs: http://security.ubuntu.com/ubuntu/
Suites: noble-security
Components: main restricted universe multiverse
"""


def test_a_debian_12_host_gives_its_mirror_and_security_mirror(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(DEBIAN_12)
    apt = resolve("", host_sources(tmp_path))
    assert apt.mirror == "http://mirror.local/debian"
    assert apt.security == "http://mirror.local/debian-security"
    assert apt.origin == "the host's apt sources"
    assert apt.env() == {
        "MIRROR": "http://mirror.local/debian",
        "SECURITY_MIRROR": "http://mirror.local/debian-security",
    }


def test_one_line_sources_with_options_and_comments() -> None:
    text = (
        "# deb http://commented.example/debian bookworm main\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://proxy.lan:3142/deb.debian.org/debian/ "
        "bookworm main  # via apt-cacher-ng\n"
        "deb http://security.debian.org/debian-security bookworm-security main\n"
    )
    sources = parse_one_line(text)
    assert [s.uris for s in sources] == [
        ("http://proxy.lan:3142/deb.debian.org/debian/",),
        ("http://security.debian.org/debian-security",),
    ]
    apt = resolve("", sources)
    assert apt.mirror == "http://proxy.lan:3142/deb.debian.org/debian"
    assert apt.security == "http://security.debian.org/debian-security"


def test_an_ubuntu_host_falls_back_to_debian_and_says_so() -> None:
    apt = resolve("", parse_deb822(UBUNTU))
    assert apt.mirror == DEFAULT_MIRROR
    assert apt.security is None
    assert "name no Debian mirror" in apt.describe()


def test_the_setting_overrides_the_host_and_disabled_or_odd_sources_are_left_out() -> None:
    text = (
        "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nEnabled: no\n\n"
        "Types: deb\nURIs: cdrom:[Debian]/ file:/srv/debian\n  http://two.example/debian\n"
        "Suites: bookworm\n\n"
        "Types: deb\nURIs: http://archive.debian.org/debian\nSuites: buster\n"
    )
    sources = parse_deb822(text)
    assert resolve("", sources).mirror == "http://two.example/debian"
    chosen = resolve("http://mine.example/debian/", sources)
    assert chosen.mirror == "http://mine.example/debian"
    assert chosen.origin == "HYPERDRIVE_APT_MIRROR"
    assert resolve("", parse_deb822(text.split("\n\n")[2])).mirror == DEFAULT_MIRROR


def test_old_style_security_suites_are_recognised() -> None:
    sources = parse_one_line(
        "deb http://deb.example/debian buster main\n"
        "deb http://sec.example/debian-security buster/updates main\n"
    )
    assert resolve("", sources).security == "http://sec.example/debian-security"


def test_no_apt_files_at_all(tmp_path: Path) -> None:
    assert host_sources(tmp_path / "nothing") == []
    assert resolve("", []).mirror == DEFAULT_MIRROR


def test_the_host_proxy_is_used_and_its_password_never_shown() -> None:
    dump = (
        'APT "";\n'
        'Acquire::http::Proxy "http://bob:s3cret@proxy.lan:3128/";\n'
        'Acquire::http::Proxy::deb.example "DIRECT";\n'
        'Acquire::https::Proxy "DIRECT";\n'
    )
    assert proxies_from_dump(dump) == (("http", "http://bob:s3cret@proxy.lan:3128/"),)
    apt = resolve("", [], dump)
    assert apt.env()["http_proxy"] == "http://bob:s3cret@proxy.lan:3128/"
    assert "https_proxy" not in apt.env()
    assert "s3cret" not in apt.describe()
    assert "http proxy http://***@proxy.lan:3128/" in apt.describe()
    assert redact("http://proxy.lan:3128") == "http://proxy.lan:3128"
