"""Runtime versions: what an app asks for (read from its files) and which hull kind has it.

| file             | read                              | example                      |
|------------------|-----------------------------------|------------------------------|
| `.python-version`| the first line; `python-` allowed | `3.13`, `3.13.1`, `python-3.12` |
| `runtime.txt`    | `python-<version>`                | `python-3.12.4`              |
| `pyproject.toml` | `[project] requires-python`       | `>=3.10,<3.14`               |
| `package.json`   | `engines.node` (an npm range)     | `>=18`, `20.x`, `^20.1`      |

`.python-version` wins over `runtime.txt`, which wins over `requires-python`. A version with a
patch (`3.13.1`, Heroku's usual pin) asks for that minor: Debian backports fixes into the patch
release it ships (bookworm's 3.11.2 has fixes of later 3.11s), so its number says little.
A hull is chosen before the ship is assembled, so a mismatch fails before any build runs.
The version libraries (nodesemver, packaging, tomllib: ~1 MB) load when an app's files are read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hyperdrive.buildpacks import read_app_file
from hyperdrive.errors import DeployError

if TYPE_CHECKING:
    from packaging.specifiers import SpecifierSet

# What each hull kind carries when it has not been measured yet (Debian's packages).
KNOWN: Mapping[str, Mapping[str, str]] = {
    "busybox": {},
    "debian": {"python": "3.11.2", "node": "18.19.0"},
    "debian-13": {"python": "3.13.5", "node": "20.19.2"},
}
# The order in which a hull is chosen for an app whose orders name none (after the default).
CHOICE_ORDER = ("debian", "debian-13", "busybox")
PYTHON_VERSION = re.compile(r"(?:python-)?([0-9]+\.[0-9]+(?:\.[0-9]+)?)")
NAMES = {"python": "Python", "node": "Node"}


@dataclass(frozen=True)
class Ask:
    """One runtime version an app asks for: which runtime, the range, and the file it came from."""

    runtime: str  # "python" or "node"
    wanted: str  # as written: "3.14", ">=3.10", "^20.1"
    source: str  # ".python-version", "pyproject.toml requires-python"…

    def met_by(self, version: str) -> bool:
        """Whether a hull's `version` (`3.13.5`) satisfies this ask."""
        import nodesemver  # noqa: PLC0415 - see the module's docstring
        from packaging.version import Version  # noqa: PLC0415 - see the module's docstring

        if self.runtime == "node":
            return bool(nodesemver.satisfies(version, self.wanted, loose=True))
        return Version(version) in _python_specifier(self.wanted)

    def describe(self) -> str:
        return f"{NAMES[self.runtime]} {self.wanted} ({self.source})"


def _python_specifier(wanted: str) -> SpecifierSet:
    """`3.13` and `3.13.1` → `==3.13.*` (see the module's note on patches); a specifier (from
    requires-python) stays as it is."""
    from packaging.specifiers import SpecifierSet  # noqa: PLC0415 - see the module's docstring

    match = PYTHON_VERSION.fullmatch(wanted)
    if match is None:
        return SpecifierSet(wanted)
    major, minor = match.group(1).split(".")[:2]
    return SpecifierSet(f"=={major}.{minor}.*")


def read_asks(app_dir: Path) -> list[Ask]:
    """What the app's files ask for, at most one Python and one Node ask; DeployError when a
    file names a version that cannot be read."""
    asks = [ask for ask in (_python_ask(app_dir), _node_ask(app_dir)) if ask is not None]
    for ask in asks:
        _check(ask)
    return asks


def _python_ask(app_dir: Path) -> Ask | None:
    for name in (".python-version", "runtime.txt"):
        text = read_app_file(app_dir, name, "assemble")
        if text is not None:
            first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
            if first and not first.startswith("#"):
                return Ask("python", first.removeprefix("python-"), name)
    project = _toml(read_app_file(app_dir, "pyproject.toml", "assemble")).get("project", {})
    wanted = project.get("requires-python") if isinstance(project, dict) else None
    if isinstance(wanted, str) and wanted.strip():
        return Ask("python", wanted.strip(), "pyproject.toml requires-python")
    return None


def _node_ask(app_dir: Path) -> Ask | None:
    text = read_app_file(app_dir, "package.json", "assemble")
    try:
        engines = json.loads(text).get("engines", {}) if text else {}
    except (ValueError, AttributeError):
        return None  # npm itself says what is wrong with the file
    wanted = engines.get("node") if isinstance(engines, dict) else None
    if isinstance(wanted, str) and wanted.strip():
        return Ask("node", wanted.strip(), "package.json engines.node")
    return None


def _check(ask: Ask) -> None:
    """A version nobody can satisfy because it cannot be read is the app's mistake: say so."""
    import nodesemver  # noqa: PLC0415 - see the module's docstring
    from packaging.specifiers import InvalidSpecifier  # noqa: PLC0415 - see the module's docstring

    if ask.runtime == "node":
        ok = nodesemver.valid_range(ask.wanted, loose=True) is not None
    else:
        try:
            _python_specifier(ask.wanted)
            ok = True
        except InvalidSpecifier:
            ok = False
    if not ok:
        raise DeployError("assemble", f"cannot read {ask.describe()}: give a version like 3.13")


def _toml(text: str | None) -> dict[str, object]:
    import tomllib  # noqa: PLC0415 - see the module's docstring

    try:
        return tomllib.loads(text) if text else {}
    except tomllib.TOMLDecodeError:
        return {}  # pip says what is wrong with the file


def satisfies(asks: Iterable[Ask], runtimes: Mapping[str, str]) -> bool:
    """Whether a hull carrying `runtimes` ({"python": "3.11.2"}) has every asked version."""
    from packaging.version import InvalidVersion  # noqa: PLC0415 - see the module's docstring

    for ask in asks:
        version = runtimes.get(ask.runtime)
        try:
            if version is None or not ask.met_by(version):
                return False
        except InvalidVersion:
            return False
    return True


def choose_hull(
    asks: list[Ask], offers: Mapping[str, Mapping[str, str]], default: str, named: str | None
) -> str:
    """The hull kind for an app: the one its orders name (it must satisfy the app), else the
    default when it satisfies, else the first in CHOICE_ORDER that does; DeployError if none."""
    if named is not None:
        if satisfies(asks, offers.get(named, {})):
            return named
        raise DeployError("assemble", _mismatch(asks, offers, named))
    order = [default, *(k for k in CHOICE_ORDER if k != default and k in offers)]
    for kind in order:
        if not asks or satisfies(asks, offers.get(kind, {})):
            return kind
    raise DeployError("assemble", _mismatch(asks, offers, None))


def _mismatch(asks: list[Ask], offers: Mapping[str, Mapping[str, str]], named: str | None) -> str:
    """`asks for Python 3.14 (.python-version); hulls here have 3.11.2 (debian), …`."""
    unmet = [a for a in asks if not satisfies([a], offers.get(named or "", {}))] if named else asks
    parts = []
    for ask in unmet or asks:
        have = [f"{rt[ask.runtime]} ({kind})" for kind, rt in offers.items() if ask.runtime in rt]
        parts.append(f"asks for {ask.describe()}; hulls here have {', '.join(have) or 'none'}")
    line = "; ".join(parts)
    if named is not None:
        line += f"; the orders name hull {named}: name another or none"
    return line
