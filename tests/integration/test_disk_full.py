"""The spool and the event log on a real, full filesystem (a small tmpfs): a trigger is refused
before anything is written, a record whose write runs out of room leaves no torn line behind,
and both take records again once room is made."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from hyperdrive.errors import SpoolError, SpoolFull
from hyperdrive.eventlog import JsonlEventLog
from hyperdrive.spool import JOURNAL, FileSpool, read_journal
from hyperdrive.triggers import RefUpdate, Trigger
from tests.diskfull import fill, tmpfs

pytestmark = [pytest.mark.root]


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MB tmpfs of our own, unmounted after the test."""
    with tmpfs(tmp_path / "disk", "8m", "0700") as where:
        yield where


def push(n: int) -> Trigger:
    made = Trigger.push("web", RefUpdate("refs/heads/master", "0" * 40, f"{n:040x}"), "test")
    return replace(made, id=f"push-disk-{n}")


def whole_lines(path: Path) -> list[dict]:
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), "no torn last line"
    return [json.loads(line) for line in data.splitlines()]


async def test_a_full_disk_refuses_triggers_cleanly_and_takes_them_again(disk: Path) -> None:
    spool = FileSpool(disk / "spool")
    await spool.open()
    assert await spool.put(push(1))
    filler = fill(disk)
    with pytest.raises(SpoolFull, match="the data disk is full"):
        await spool.put(push(2))
    assert [t.id for t in spool.pending()] == ["push-disk-1"], "nothing half-taken"
    filler.unlink()
    assert await spool.put(push(3))
    await spool.close()
    pending, _, _ = read_journal(disk / "spool" / JOURNAL)
    assert list(pending) == ["push-disk-1", "push-disk-3"]
    whole_lines(disk / "spool" / JOURNAL)


async def test_puts_that_arrive_together_share_one_look_at_the_disk_and_each_is_refused(
    disk: Path,
) -> None:
    """One statvfs answers for the puts of a loop pass: on a full disk every one of them is
    refused, and the next pass looks again once room is made."""
    spool = FileSpool(disk / "spool")
    await spool.open()
    assert all(await asyncio.gather(spool.put(push(1)), spool.put(push(2))))
    filler = fill(disk)
    said = await asyncio.gather(spool.put(push(3)), spool.put(push(4)), return_exceptions=True)
    assert all(isinstance(e, SpoolFull) for e in said), said
    filler.unlink()
    assert all(await asyncio.gather(spool.put(push(5)), spool.put(push(6))))
    await spool.close()
    pending, _, _ = read_journal(disk / "spool" / JOURNAL)
    assert list(pending) == [f"push-disk-{n}" for n in (1, 2, 5, 6)]


async def test_an_event_that_does_not_fit_leaves_the_log_whole(disk: Path) -> None:
    log = JsonlEventLog(disk / "events.jsonl")
    log.open()
    log.append({"event": "DeployStarted", "app": "web", "message": "before"})
    filler = fill(disk, leave=8192)  # room for part of a record (two pages), not all of it
    said = log.append({"event": "DeployFinished", "app": "web", "message": "x" * 40_000})
    assert said["event"] == "DeployFinished", "followers are still told"
    filler.unlink()
    log.append({"event": "DeployStarted", "app": "web", "message": "after"})
    log.close()
    stored = [e["message"] for e in whole_lines(disk / "events.jsonl")]
    assert stored == ["before", "after"]


async def test_a_trigger_whose_write_runs_out_of_room_leaves_no_torn_record(
    disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer took the reserve between the check and the write: the write itself fails
    part way; the journal is cut back to its last whole record."""
    monkeypatch.setattr("hyperdrive.spool.shortage", lambda folder, reserve: "")
    spool = FileSpool(disk / "spool")
    await spool.open()
    assert await spool.put(push(1))
    big = replace(push(2), data={**push(2).data, "admiral": "a" * 20_000})
    filler = fill(disk, leave=8192)
    with pytest.raises(SpoolError, match="could not persist"):
        await spool.put(big)
    filler.unlink()
    assert await spool.put(push(3))
    await spool.close()
    assert [r["trigger"]["id"] for r in whole_lines(disk / "spool" / JOURNAL)] == [
        "push-disk-1",
        "push-disk-3",
    ]
