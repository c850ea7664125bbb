"""Runtime versions an app asks for, whether a hull has them, and which hull is chosen."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyperdrive.config import KNOWN_HULLS
from hyperdrive.errors import DeployError
from hyperdrive.runtimes import CHOICE_ORDER, KNOWN, Ask, choose_hull, read_asks, satisfies

OFFERS = {
    "debian": {"python": "3.11.2", "node": "18.19.0"},
    "debian-13": {"python": "3.13.5", "node": "20.19.2"},
    "busybox": {},
}


def app(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("files", "wanted", "source"),
    [
        ({".python-version": "3.14\n"}, "3.14", ".python-version"),
        ({".python-version": "3.13.1"}, "3.13.1", ".python-version"),
        ({".python-version": "python-3.12\n"}, "3.12", ".python-version"),
        ({"runtime.txt": "python-3.12.4\n"}, "3.12.4", "runtime.txt"),
        (
            {"pyproject.toml": '[project]\nname = "x"\nrequires-python = ">=3.10,<3.14"\n'},
            ">=3.10,<3.14",
            "pyproject.toml requires-python",
        ),
        (
            {".python-version": "3.13\n", "runtime.txt": "python-3.11.9\n"},
            "3.13",
            ".python-version",
        ),
        (
            {"runtime.txt": "python-3.11.9\n", "pyproject.toml": 'project.requires-python=">=3"'},
            "3.11.9",
            "runtime.txt",
        ),
    ],
)
def test_the_python_an_app_asks_for_is_read_from_its_files(
    tmp_path: Path, files: dict[str, str], wanted: str, source: str
) -> None:
    assert read_asks(app(tmp_path, files)) == [Ask("python", wanted, source)]


def test_node_engines_are_read_and_an_app_without_asks_asks_nothing(tmp_path: Path) -> None:
    assert read_asks(app(tmp_path, {"package.json": '{"name": "x"}'})) == []
    package = '{"name": "x", "engines": {"node": ">=20", "npm": ">=9"}}'
    assert read_asks(app(tmp_path, {"package.json": package})) == [
        Ask("node", ">=20", "package.json engines.node")
    ]


def test_broken_files_are_left_to_pip_and_npm(tmp_path: Path) -> None:
    files = {"package.json": "{not json", "pyproject.toml": "[project\n"}
    assert read_asks(app(tmp_path, files)) == []


@pytest.mark.parametrize(
    "files", [{".python-version": "latest\n"}, {"package.json": '{"engines": {"node": "lts"}}'}]
)
def test_a_version_that_cannot_be_read_fails_clearly(tmp_path: Path, files: dict[str, str]) -> None:
    with pytest.raises(DeployError, match=r"cannot read (Python latest|Node lts)"):
        read_asks(app(tmp_path, files))


@pytest.mark.parametrize(
    ("runtime", "wanted", "version", "met"),
    [
        ("python", "3.13", "3.13.5", True),
        ("python", "3.13", "3.11.2", False),
        ("python", "3.14", "3.13.5", False),
        ("python", "3.13.1", "3.13.5", True),  # a patch pin asks for its minor
        ("python", "3.13.6", "3.13.5", True),
        ("python", "3.12.4", "3.13.5", False),
        ("python", "3.11.2", "3.11.2", True),
        ("python", ">=3.10", "3.11.2", True),
        ("python", ">=3.12", "3.11.2", False),
        ("python", ">=3.10,<3.13", "3.13.5", False),
        ("python", "~=3.11", "3.13.5", True),
        ("node", ">=18", "18.19.0", True),
        ("node", ">=20", "18.19.0", False),
        ("node", "20.x", "20.19.2", True),
        ("node", "20.x", "18.19.0", False),
        ("node", "^20.1", "20.19.2", True),
        ("node", "^18.20", "18.19.0", False),
        ("node", "~20.19", "20.19.2", True),
        ("node", "18 || 20", "20.19.2", True),
        ("node", ">=18 <20", "20.19.2", False),
        ("node", "*", "18.19.0", True),
    ],
)
def test_versions_are_matched_like_pip_and_npm_do(
    runtime: str, wanted: str, version: str, met: bool
) -> None:
    assert Ask(runtime, wanted, "f").met_by(version) is met


def test_a_hull_without_the_runtime_satisfies_no_ask() -> None:
    assert satisfies([], {})
    assert not satisfies([Ask("python", "3.11", "f")], {})
    assert not satisfies([Ask("python", "3.11", "f")], {"python": "not a version"})


def test_the_default_hull_is_kept_when_it_satisfies_or_nothing_is_asked() -> None:
    assert choose_hull([], OFFERS, "busybox", None) == "busybox"
    assert choose_hull([Ask("python", "3.11", "f")], OFFERS, "debian", None) == "debian"
    assert choose_hull([Ask("python", ">=3.11", "f")], OFFERS, "debian-13", None) == "debian-13"


def test_otherwise_the_first_kind_in_order_that_has_the_versions() -> None:
    assert choose_hull([Ask("python", ">=3.10", "f")], OFFERS, "busybox", None) == "debian"
    assert choose_hull([Ask("python", "3.13", "f")], OFFERS, "debian", None) == "debian-13"
    both = [Ask("python", ">=3.11", "f"), Ask("node", ">=20", "g")]
    assert choose_hull(both, OFFERS, "debian", None) == "debian-13"


def test_no_hull_with_the_version_is_a_clear_line() -> None:
    ask = Ask("python", "3.14", ".python-version")
    with pytest.raises(DeployError) as err:
        choose_hull([ask], OFFERS, "debian", None)
    assert str(err.value).endswith(
        "asks for Python 3.14 (.python-version); hulls here have 3.11.2 (debian), "
        "3.13.5 (debian-13)"
    )


def test_a_named_hull_that_lacks_the_version_fails_and_says_which_has_it() -> None:
    ask = Ask("python", "3.13", ".python-version")
    assert choose_hull([ask], OFFERS, "debian-13", "debian-13") == "debian-13"
    with pytest.raises(DeployError) as err:
        choose_hull([ask], OFFERS, "debian", "debian")
    message = str(err.value)
    assert "asks for Python 3.13 (.python-version); hulls here have 3.11.2 (debian)," in message
    assert "3.13.5 (debian-13); the orders name hull debian: name another or none" in message


def test_every_hull_kind_has_known_runtimes_and_a_place_in_the_order() -> None:
    assert set(KNOWN) == set(KNOWN_HULLS) == set(CHOICE_ORDER)
