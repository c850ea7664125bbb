"""The spool keeps every acknowledged trigger, hands each over once, and survives crashes."""

import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from hyperdrive.errors import SpoolError
from hyperdrive.spool import JOURNAL, FileSpool, read_journal
from hyperdrive.triggers import RefUpdate, Trigger, write_incoming

MASTER = RefUpdate("refs/heads/master", "0" * 40, "a" * 40)


def push(app: str = "web", tid: str | None = None) -> Trigger:
    trigger = Trigger.push(app, MASTER, "test")
    return replace(trigger, id=tid) if tid else trigger


async def next_trigger(spool: FileSpool, timeout: float = 5) -> Trigger:
    return await asyncio.wait_for(anext(aiter(spool.receive())), timeout)


async def test_put_is_received_once_and_done_forgets_it(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path)
    await spool.open()
    trigger = push()
    assert await spool.put(trigger) is True
    assert await spool.put(trigger) is False
    assert await next_trigger(spool) == trigger
    await spool.done(trigger.id, "deployed")
    assert spool.pending() == []
    assert await spool.put(trigger) is False, "a done id is still remembered"
    await spool.close()


async def test_pending_triggers_come_back_after_restart(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path)
    await spool.open()
    first, second = push("a"), push("b")
    await spool.put(first)
    await spool.put(second)
    await spool.done(first.id, "deployed")
    await spool.close()

    again = FileSpool(tmp_path)
    await again.open()
    assert [t.id for t in again.pending()] == [second.id]
    assert await next_trigger(again) == second
    assert await again.put(first) is False
    await again.close()


async def test_concurrent_puts_share_fsyncs(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path)
    await spool.open()
    results = await asyncio.gather(*(spool.put(push()) for _ in range(500)))
    assert all(results)
    assert spool._writer is not None
    assert spool._writer.batches < 500, "group commit must batch concurrent triggers"
    await spool.close()
    pending, _, _ = read_journal(tmp_path / JOURNAL)
    assert len(pending) == 500


async def test_torn_last_record_is_cut_and_journal_keeps_working(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path)
    await spool.open()
    kept = push()
    await spool.put(kept)
    await spool.close()
    with open(tmp_path / JOURNAL, "ab") as fh:
        fh.write(b'{"op":"put","trigger":{"id":"half')
    again = FileSpool(tmp_path)
    await again.open()
    assert [t.id for t in again.pending()] == [kept.id]
    later = push()
    await again.put(later)
    await again.close()
    pending, _, _ = read_journal(tmp_path / JOURNAL)
    assert list(pending) == [kept.id, later.id]


async def test_incoming_files_are_ingested_and_bad_ones_quarantined(tmp_path: Path) -> None:
    rejected: list[tuple[str, str]] = []
    spool = FileSpool(tmp_path, on_rejected=lambda name, why: rejected.append((name, why)))
    await spool.open()
    stop = asyncio.Event()
    watcher = asyncio.create_task(spool.watch(stop))
    await asyncio.sleep(0.2)
    good = push()
    write_incoming(tmp_path, good)
    assert await next_trigger(spool) == good
    (tmp_path / "incoming" / "broken.json").write_text('{"id": "x", "kind"')
    (tmp_path / "incoming" / "notobj.json").write_text("[1, 2]")
    for _ in range(100):
        if len(rejected) == 2:
            break
        await asyncio.sleep(0.05)
    assert sorted(name for name, _ in rejected) == ["broken.json", "notobj.json"]
    assert (tmp_path / "rejected" / "broken.json").exists()
    assert not list((tmp_path / "incoming").glob("*.json"))
    stop.set()
    await asyncio.wait_for(watcher, 10)
    await spool.close()


async def test_incoming_left_by_a_crash_is_taken_at_open(tmp_path: Path) -> None:
    left = push()
    write_incoming(tmp_path, left)
    spool = FileSpool(tmp_path)
    await spool.open()
    assert await next_trigger(spool) == left
    await spool.close()


async def test_compaction_keeps_pending_and_remembers_done(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path)
    await spool.open()
    triggers = [push() for _ in range(50)]
    for trigger in triggers:
        await spool.put(trigger)
    for trigger in triggers[:40]:
        await spool.done(trigger.id, "deployed")
    size_before = (tmp_path / JOURNAL).stat().st_size
    await spool.compact()
    assert (tmp_path / JOURNAL).stat().st_size < size_before
    await spool.put(push())
    await spool.close()
    pending, seen, _ = read_journal(tmp_path / JOURNAL)
    assert len(pending) == 11
    assert set(seen) == {t.id for t in triggers[:40]}


@pytest.mark.parametrize(
    "bad",
    [
        {"id": "../x", "kind": "push"},
        {"id": "ok", "kind": ""},
        {"id": "ok", "kind": "push", "app": "../etc"},
    ],
)
def test_trigger_validation_refuses_hostile_values(bad: dict[str, object]) -> None:

    with pytest.raises(SpoolError):
        Trigger.from_json(bad)


WRITER = """
import asyncio, sys
from pathlib import Path
from hyperdrive.errors import SpoolError
from hyperdrive.spool import FileSpool
from dataclasses import replace
from hyperdrive.triggers import RefUpdate, Trigger
PUSH = Trigger.push("web", RefUpdate("refs/heads/master", "0" * 40, "a" * 40), "test")
async def main():
    spool = FileSpool(Path(sys.argv[1]))
    await spool.open()
    n = 0
    while True:
        batch = [replace(PUSH, id=f"k{n + i}") for i in range(20)]
        await asyncio.gather(*(spool.put(t) for t in batch))
        n += 20
        print(n, flush=True)
asyncio.run(main())
"""


def test_sigkill_mid_load_loses_no_acknowledged_trigger(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", WRITER, str(tmp_path)]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        acked = 0
        for line in proc.stdout:
            acked = int(line)
            if acked >= 400:
                break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    pending, _, _ = read_journal(tmp_path / JOURNAL)
    assert {f"k{i}" for i in range(acked)} <= set(pending)
    assert all(json.dumps(t.to_json()) for t in pending.values())


async def test_fingerprint_is_remembered_after_done_and_restart(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path)
    await spool.open()
    trigger = Trigger.webhook(
        "github:abc", provider="github", repository="", targets={}, fingerprint="f1", received=1.0
    )
    await spool.put(trigger)
    assert spool.fingerprint("github:abc") == "f1"
    await spool.done(trigger.id, "deployed")
    await spool.compact()
    await spool.close()
    again = FileSpool(tmp_path)
    await again.open()
    assert again.fingerprint("github:abc") == "f1"
    assert again.fingerprint("github:other") is None
    await again.close()


async def test_a_body_is_remembered_pending_done_after_restart_and_compaction(
    tmp_path: Path,
) -> None:
    spool = FileSpool(tmp_path)
    await spool.open()
    trigger = replace(push(tid="github:d-1"), fingerprint="f" * 64)
    await spool.put(trigger)
    assert spool.carried("f" * 64) == "github:d-1"
    assert spool.carried("e" * 64) is None
    assert spool.carried("") is None, "triggers without a body carry none"
    await spool.done(trigger.id, "deployed")
    assert spool.carried("f" * 64) == "github:d-1"
    await spool.close()
    again = FileSpool(tmp_path)
    await again.open()
    assert again.carried("f" * 64) == "github:d-1"
    await again.compact()
    assert again.carried("f" * 64) == "github:d-1", "within retention"
    await again.close()


async def test_puts_made_while_a_compaction_runs_are_all_kept(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path)
    await spool.open()
    first = [push() for _ in range(50)]
    await asyncio.gather(*(spool.put(t) for t in first))
    for trigger in first[:40]:
        await spool.done(trigger.id, "deployed")
    later = [push() for _ in range(50)]
    await asyncio.gather(spool.compact(), *(spool.put(t) for t in later), spool.compact())
    await spool.close()
    pending, seen, _ = read_journal(tmp_path / JOURNAL)
    assert list(pending) == [t.id for t in first[40:] + later]
    assert set(seen) == {t.id for t in first[:40]}


async def test_a_failed_fsync_refuses_its_triggers_and_the_journal_stays_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = FileSpool(tmp_path)
    await spool.open()
    kept = push()
    await spool.put(kept)

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", broken)
    lost = [push() for _ in range(5)]
    results = await asyncio.gather(*(spool.put(t) for t in lost), return_exceptions=True)
    assert all(isinstance(r, SpoolError) for r in results), results
    assert [t.id for t in spool.pending()] == [kept.id], "nothing half-taken"
    monkeypatch.undo()
    later = push()
    assert await spool.put(later)
    await spool.close()
    pending, _, _ = read_journal(tmp_path / JOURNAL)
    assert list(pending) == [kept.id, later.id]


async def test_pending_triggers_add_nothing_a_full_collection_walks(tmp_path: Path) -> None:
    """A daemon whose deploys stall holds thousands of pending triggers; if each were objects
    the collector follows, every full collection would walk them all (a long pause)."""
    spool = FileSpool(tmp_path)
    await spool.open()

    async def put(n: int) -> None:
        for _ in range(n // 100):
            await asyncio.gather(*(spool.put(push()) for _ in range(100)))

    await put(200)
    gc.collect()
    before = len(gc.get_objects())
    await put(2000)
    gc.collect()
    assert len(gc.get_objects()) - before < 200, "pending triggers are kept as bytes"
    assert len(spool.pending()) == 2200
    await spool.close()
