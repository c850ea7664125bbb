"""The Heroku sample layout (tests/fixtures/python-getting-started: Django, gunicorn binding
`[::]:$PORT`, whitenoise) deploys unchanged: its `.python-version` (3.13) chooses the debian-13
hull, pip installs from a local index named by a squadron-wide include, and the page and a
static file answer through nginx. The same app asking for Python 3.14 fails before pip.

The index serves the pinned wheels `.ci/run` downloads (tests/e2e/wheel_index.py) from a world
namespace of the test's own (tests/e2e/world.py), reached by name through the ships' DNS and
the host's masquerade: no traffic leaves the machine.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon
from tests.e2e.squadron import AppRepo, behind_world, git, http_get, wait_outcome
from tests.e2e.wheel_index import require_wheels
from tests.e2e.world import World

pytestmark = [
    pytest.mark.root,
    pytest.mark.lxc,
    pytest.mark.nginx,
    pytest.mark.slow,
    pytest.mark.timeout(900),
]

SAMPLE = Path(__file__).parent.parent / "fixtures" / "python-getting-started"
PROJECTS = ("django", "gunicorn", "whitenoise", "asgiref", "sqlparse", "packaging")


@pytest.fixture(scope="module")
def squadron(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, World]]:
    """A squadron whose default hull is bookworm's, with the world's index in its includes."""
    wheels = require_wheels(*PROJECTS)
    root = tmp_path_factory.mktemp("heroku")
    with behind_world(root, wheels, mirror=True, HYPERDRIVE_HULL="debian") as both:
        yield both


def asked(world: World) -> list[str]:
    """Every path the world's index was asked for."""
    return [r["path"] for r in world.requests()]


def push_sample(d: Daemon, work: Path, python: str | None = None) -> dict:
    """Push the sample as it is (or with another `.python-version`); its deploy's outcome."""
    repo = AppRepo(d, "sample", work)
    for entry in work.iterdir():
        if entry.name != ".git":
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    shutil.copytree(SAMPLE, work, dirs_exist_ok=True)
    if python is not None:
        (work / ".python-version").write_text(f"{python}\n")
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "sample", cwd=work)
    return wait_outcome(d, repo.push_trigger(git("rev-parse", "HEAD", cwd=work)), timeout=600)


def of(d: Daemon, deploy: str, name: str) -> list[dict]:
    return [e for e in d.events() if e.get("deploy") == deploy and e["event"] == name]


def test_the_sample_deploys_unchanged_on_debian_13_and_serves_its_page_and_static_file(
    squadron: tuple[Daemon, World], tmp_path: Path
) -> None:
    d, world = squadron
    outcome = push_sample(d, tmp_path / "sample")
    assert outcome["event"] == "DeployFinished", outcome.get("message")
    assembled = of(d, outcome["deploy"], "ShipAssembled")[0]["message"]
    assert "from hull '" in assembled
    assert "-hull-debian-13-" in assembled, "the .python-version chose the debian-13 hull"
    assert any(r.startswith("/files/django-") for r in asked(world)), "pip used the index"
    built = " ".join(e["message"] for e in of(d, outcome["deploy"], "BuildOutput"))
    assert "1 static file copied to '/app/staticfiles'" in built, "collectstatic ran"

    status, page = http_get(d.http_port, "/sample/", timeout=10)
    assert status == 200, page
    assert page.startswith("Getting started with Python 3.13\n")
    logo = re.search(r"logo: (/static/lang-logo\.[0-9a-f]+\.txt)", page)
    assert logo is not None, page
    assert http_get(d.http_port, f"/sample{logo.group(1)}", timeout=10) == (
        200,
        "a static file served by whitenoise\n",
    )

    hulls = json.loads(d.hd("status", "--json").stdout)["hulls"]
    assert hulls["debian-13"]["runtimes"]["python"].startswith("3.13.")


def test_the_sample_asking_for_python_314_fails_before_pip_with_a_clear_line(
    squadron: tuple[Daemon, World], tmp_path: Path
) -> None:
    d, world = squadron
    asked_before = len(asked(world))
    outcome = push_sample(d, tmp_path / "sample314", python="3.14")
    assert outcome["event"] == "DeployFailed", outcome.get("message")
    assert outcome["stage"] == "assemble"
    message = outcome["message"]
    assert "asks for Python 3.14 (.python-version); hulls here have 3.11." in message
    assert "(debian), 3.13." in message
    assert "(debian-13)" in message
    assert of(d, outcome["deploy"], "BuildOutput") == [], "no build ran"
    assert of(d, outcome["deploy"], "ShipAssembled") == [], "no ship was made"
    assert len(asked(world)) == asked_before, "pip never ran"
