"""Load while faults happen, short enough for CI (bench/storm.py runs the issue's full 60 s):
webhooks at a steady rate, concurrent pushes over SSH, the daemon SIGKILLed in the middle."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon
from tests.e2e.squadron import Admiral, admiral_squadron
from tests.e2e.storm import storm
from tests.fixtures.webhooks.forge import SECRET

pytestmark = [pytest.mark.root, pytest.mark.lxc, pytest.mark.nginx, pytest.mark.slow]


@pytest.fixture
def squadron(tmp_path: Path) -> Iterator[tuple[Daemon, Admiral]]:
    with admiral_squadron(tmp_path, HYPERDRIVE_WEBHOOK_SECRET=SECRET) as pair:
        yield pair


@pytest.mark.timeout(600)
def test_no_acknowledged_trigger_is_lost_and_no_request_fails_through_a_sigkill(
    squadron: tuple[Daemon, Admiral], tmp_path: Path
) -> None:
    d, admiral = squadron
    report = storm(d, admiral, tmp_path, apps=3, per_app=2, rate=20, seconds=12)
    assert report.acknowledged, "webhooks were taken"
    assert report.lost == [], f"acknowledged but never finished: {report.lost[:5]}"
    assert all(report.newest.values()), report.newest
    assert report.failed == [], report.failed[:10]
    assert report.requests > 100
