"""The event log keeps every fact in order, fans it out live, and never waits for a reader."""

import asyncio
import json
import threading
import time
from collections.abc import Generator
from pathlib import Path

import pytest

from hyperdrive import eventlog
from hyperdrive.eventlog import Filter, JsonlEventLog, Subscription, parse_since, tail


@pytest.fixture
def make_log(tmp_path: Path):
    """Open logs on tmp_path/events.jsonl with the given limits; all closed after the test."""
    opened: list[JsonlEventLog] = []

    def make(**limits: int) -> JsonlEventLog:
        events = JsonlEventLog(tmp_path / "events.jsonl", **limits)
        events.open()
        opened.append(events)
        return events

    yield make
    for events in opened:
        events.close()


@pytest.fixture
def log(make_log) -> JsonlEventLog:
    return make_log()


async def next_event(sub: Subscription, timeout: float = 2) -> dict:
    return await asyncio.wait_for(anext(sub), timeout)


async def settle(rounds: int = 20) -> None:
    """Let every ready task run: enough loop turns for readers to drain what is queued."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def test_append_stamps_and_stores_one_line_each(log: JsonlEventLog) -> None:
    first = log.append({"event": "DeployQueued", "app": "web", "deploy": "d1", "sha": None})
    second = log.append({"event": "DeployFinished", "app": "web", "deploy": "d1", "ms": 12})
    assert (first["seq"], second["seq"]) == (1, 2)
    assert first["ts"].endswith("Z")
    assert "sha" not in first, "empty fields are not written"
    lines = log.path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [first, second]
    assert list(log.stored()) == [first, second]


def test_read_filters_by_app_and_deploy(log: JsonlEventLog) -> None:
    for app, deploy in [("web", "d1"), ("api", "d2"), ("web", "d3"), ("web", "d1")]:
        log.append({"event": "StageFinished", "app": app, "deploy": deploy})
    assert [e["deploy"] for e in log.stored(Filter(app="web"))] == ["d1", "d3", "d1"]
    assert [e["app"] for e in log.stored(Filter(deploy="d2"))] == ["api"]
    assert [e["seq"] for e in log.stored(Filter(app="web", deploy="d1"))] == [1, 4]
    assert list(log.stored(Filter(app="nope"))) == []


def test_reading_one_deploy_skips_other_lines_unparsed_and_misses_none(log: JsonlEventLog) -> None:
    log.append({"event": "DeployQueued", "deploy": "push-1", "message": "about push-10"})
    log.append({"event": "DeployQueued", "deploy": "push-10"})
    log.append({"event": "BuildOutput", "deploy": "push-1", "message": 'said "\\ \u00e9'})
    assert [e["seq"] for e in log.stored(Filter(deploy="push-1"))] == [1, 3]
    assert [e["seq"] for e in log.stored(Filter(deploy="push-10"))] == [2]
    assert list(log.stored(Filter(deploy='odd"id'))) == []  # no prefilter for such an id


@pytest.mark.parametrize(
    "since",
    ["10m", "2h", "2022-06-01T00:00:00Z", "2022-06-01T00:00:00+00:00", "1654041600", 1654041600.0],
)
def test_read_filters_by_since(log: JsonlEventLog, since: str | float) -> None:
    log.append({"event": "Ancient", "ts": "2020-01-01T00:00:00.000Z"})
    log.append({"event": "Recent"})
    found = [e["event"] for e in log.stored(Filter(since=parse_since(since)))]
    assert found == ["Recent"]


def test_since_spans_count_back_from_now() -> None:
    now = time.time()
    assert parse_since("10m") == pytest.approx(now - 600, abs=5)
    assert parse_since("90s") == pytest.approx(now - 90, abs=5)
    assert parse_since("1d") == pytest.approx(now - 86400, abs=5)
    assert parse_since(None) is None
    assert parse_since("") is None
    with pytest.raises(ValueError, match="yesterday"):
        parse_since("yesterday")


async def test_a_subscriber_gets_live_events_that_match(log: JsonlEventLog) -> None:
    with log.subscribe(Filter(app="web")) as sub:
        log.append({"event": "DeployQueued", "app": "api"})
        log.append({"event": "DeployQueued", "app": "web", "deploy": "d1"})
        event = await next_event(sub)
        assert (event["event"], event["deploy"]) == ("DeployQueued", "d1")
    assert log.subscribers == 0


async def test_a_closed_subscription_ends_its_iteration(log: JsonlEventLog) -> None:
    sub = log.subscribe()
    log.append({"event": "One"})
    reader = asyncio.create_task(_collect(sub))
    await settle()
    log.close()
    assert [e["event"] for e in await asyncio.wait_for(reader, 2)] == ["One"]


async def _collect(sub: Subscription) -> list[dict]:
    return [event async for event in sub]


async def test_a_slow_subscriber_blocks_neither_appends_nor_a_fast_one(make_log) -> None:
    log = make_log(queue=4)
    slow, fast = log.subscribe(), log.subscribe()
    seen: list[int] = []

    async def drain() -> None:
        async for event in fast:
            seen.append(event["seq"])

    reader = asyncio.create_task(drain())
    for n in range(1, 101):
        log.append({"event": "BuildOutput", "message": f"line {n}"})
        if n % 2 == 0:
            await settle(3)
    await settle()
    assert seen == list(range(1, 101)), "the fast reader saw every event, in order, no gap"
    assert log.appended == 100

    # the slow one kept only what fits and counts the rest; when it resumes it is told
    assert [(await next_event(slow))["seq"] for _ in range(4)] == [1, 2, 3, 4]
    log.append({"event": "BuildOutput", "message": "after"})
    marker = await next_event(slow)
    assert marker["event"] == "EventsMissed"
    assert marker["missed"] == 96
    assert (await next_event(slow))["seq"] == 101
    log.close()
    await asyncio.wait_for(reader, 2)


async def test_a_reader_that_caught_up_is_told_of_its_gap_at_once(make_log) -> None:
    log = make_log(queue=3)
    with log.subscribe() as slow:
        for _ in range(10):
            log.append({"event": "BuildOutput"})
        assert [(await next_event(slow))["seq"] for _ in range(3)] == [1, 2, 3]
        marker = await next_event(slow)
        assert (marker["event"], marker["missed"]) == ("EventsMissed", 7)
        log.append({"event": "DeployFinished"})
        assert (await next_event(slow))["seq"] == 11


def test_rotation_keeps_every_line_in_order(make_log) -> None:
    log = make_log(max_bytes=1000, keep=50)
    for n in range(200):
        log.append({"event": "BuildOutput", "app": "web", "message": f"line {n:04d} " + "x" * 40})
    log.close()
    files = log.files()
    assert len(files) > 5, "the tiny limit made it rotate several times"
    assert all(path.stat().st_size <= 1000 for path in files)
    seqs = [e["seq"] for path in files for e in map(json.loads, path.read_text().splitlines())]
    assert seqs == list(range(1, 201)), "no line lost, none repeated, strictly increasing"
    assert [e["seq"] for e in log.stored()] == seqs


def test_rotation_drops_only_files_beyond_keep(tmp_path: Path, make_log) -> None:
    log = make_log(max_bytes=1000, keep=3)
    for n in range(200):
        log.append({"event": "BuildOutput", "message": f"line {n:04d} " + "x" * 40})
    log.close()
    files = log.files()
    assert [p.name for p in files] == [
        "events.jsonl.3",
        "events.jsonl.2",
        "events.jsonl.1",
        "events.jsonl",
    ]
    assert not (tmp_path / "events.jsonl.4").exists()
    seqs = [e["seq"] for e in log.stored()]
    assert seqs == list(range(seqs[0], 201)), "what is kept is the newest, without a hole"
    assert sum(1 for p in files for _ in p.read_text().splitlines()) == len(seqs)


def test_a_torn_last_line_is_skipped_and_appends_start_a_new_line(make_log) -> None:
    log = make_log()
    path = log.path
    log.append({"event": "DeployQueued", "app": "web"})
    log.append({"event": "DeployStarted", "app": "web"})
    log.close()
    with open(path, "ab") as fh:
        fh.write(b'{"ts":"2026-01-01T00:00:00.000Z","seq":3,"event":"ShipBu')  # the crash

    again = make_log()
    assert [e["event"] for e in again.stored()] == ["DeployQueued", "DeployStarted"]
    record = again.append({"event": "DeployFailed", "app": "web"})
    again.close()
    assert record["seq"] == 3
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"", "the file ends with a whole line"
    assert json.loads(lines[-2])["event"] == "DeployFailed"
    assert [e["event"] for e in again.stored()] == ["DeployQueued", "DeployStarted", "DeployFailed"]


def test_seq_continues_after_reopen_and_after_rotation(make_log) -> None:
    log = make_log(max_bytes=300)
    path = log.path
    for _ in range(5):
        log.append({"event": "BuildOutput", "message": "y" * 100})
    log.close()
    assert path.with_name("events.jsonl.1").exists()

    again = make_log(max_bytes=300)
    assert again.append({"event": "DaemonStarted"})["seq"] == 6


async def test_secret_looking_fields_are_masked_everywhere(log: JsonlEventLog) -> None:
    with log.subscribe() as sub:
        record = log.append(
            {"event": "WebhookReceived", "token": "tok-123", "signature": "sha256=abc", "app": "w"}
        )
        live = await next_event(sub)
    assert record["token"] == live["token"] == "********"
    assert record["signature"] == live["signature"] == "********"
    assert record["app"] == "w"
    stored = log.path.read_text()
    assert "tok-123" not in stored
    assert "sha256=abc" not in stored


async def test_tail_follow_gives_history_then_live_without_duplicate_or_gap(
    log: JsonlEventLog,
) -> None:
    for _ in range(10):
        log.append({"event": "Before", "app": "web"})
    got: list[int] = []

    async def follow() -> None:
        async for event in tail(log, Filter(app="web"), history=None, follow=True):
            got.append(event["seq"])
            if len(got) == 3:  # append while history is still being handed out
                for _ in range(5):
                    log.append({"event": "During", "app": "web"})
            if event["seq"] == 20:
                return

    reader = asyncio.create_task(follow())
    await settle()
    for _ in range(5):
        log.append({"event": "After", "app": "web"})
    await asyncio.wait_for(reader, 2)
    assert got == list(range(1, 21))
    assert log.subscribers == 0, "leaving the loop closed the subscription"


async def test_tail_without_follow_gives_the_last_n(log: JsonlEventLog) -> None:
    for n in range(10):
        log.append({"event": "Step", "app": "web", "deploy": "d1", "message": str(n)})
    last = [e["message"] async for e in tail(log, Filter(app="web"), history=3)]
    assert last == ["7", "8", "9"]
    by_deploy = [e["message"] async for e in tail(log, Filter(deploy="d1"), history=2)]
    assert by_deploy == ["8", "9"]


def test_append_on_a_closed_log_is_a_loud_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="not open"):
        JsonlEventLog(tmp_path / "events.jsonl").append({"event": "X"})


def fill(log: JsonlEventLog, deploys: int, per_deploy: int = 5) -> None:
    """`deploys` deploys of `per_deploy` events each, interleaved in pairs like real ones."""
    for n in range(0, deploys, 2):
        for step in range(per_deploy):
            for deploy in (f"d{n}", f"d{n + 1}"):
                log.append({"event": "StageFinished", "app": "web", "deploy": deploy,
                            "stage": f"s{step}"})  # fmt: skip


async def read_all(log: JsonlEventLog, where: Filter, last: int | None = None) -> list[dict]:
    return [event async for event in log.read(where, last=last)]


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many stored lines were parsed, counted while the test runs."""
    count = [0]
    real = eventlog._parse_line

    def counting(raw: bytes) -> dict | None:
        count[0] += 1
        return real(raw)

    monkeypatch.setattr(eventlog, "_parse_line", counting)
    return count


async def test_following_one_deploy_seeks_to_it_instead_of_reading_the_history(
    make_log, parsed: list[int]
) -> None:
    log = make_log()
    fill(log, 4_000)  # 20,000 events
    log.append({"event": "DeployFinished", "app": "web", "deploy": "d3998"})
    await read_all(log, Filter(deploy="warm-up"))  # waits for the start-up scan of the index
    parsed[0] = 0
    got = await read_all(log, Filter(deploy="d3998"))
    assert [e.get("stage") for e in got] == ["s0", "s1", "s2", "s3", "s4", None]
    assert parsed[0] < 20, "only the lines from the deploy's first event on were read"
    parsed[0] = 0
    assert await read_all(log, Filter(deploy="never-queued")) == []
    assert parsed[0] == 0, "a deploy with nothing stored reads no file at all"


async def test_the_index_is_rebuilt_at_start_and_follows_rotation(
    make_log, parsed: list[int]
) -> None:
    log = make_log(max_bytes=20_000, keep=50)
    fill(log, 600)
    log.close()
    assert len(log.files()) > 10, "the deploys are spread over many rotated files"

    again = make_log(max_bytes=20_000, keep=50)  # the index comes from one scan, in a thread
    await read_all(again, Filter(deploy="warm-up"))
    for deploy in ("d0", "d301", "d599"):
        got = await read_all(again, Filter(deploy=deploy))
        assert [e["stage"] for e in got] == ["s0", "s1", "s2", "s3", "s4"], deploy
        assert {e["deploy"] for e in got} == {deploy}
    parsed[0] = 0
    assert len(await read_all(again, Filter(deploy="d599"))) == 5
    assert parsed[0] < 40
    fill(again, 200)  # rotates on: d0 … are new deploys again, found after the old ones
    assert [e["seq"] for e in await read_all(again, Filter(deploy="d0"))] == [
        e["seq"] for e in again.stored(Filter(deploy="d0"))
    ]
    assert len(await read_all(again, Filter(deploy="d0"), last=3)) == 3


async def test_a_big_history_read_leaves_the_loop_free(make_log) -> None:
    log = make_log()
    fill(log, 4_000)
    ticks = 0
    reading = True

    async def ticker() -> None:
        nonlocal ticks
        while reading:
            ticks += 1
            await asyncio.sleep(0)

    beat = asyncio.create_task(ticker())
    await settle()
    before = ticks
    got = await read_all(log, Filter(app="web"))
    last = await read_all(log, Filter(app="web"), last=10)
    reading = False
    await beat
    assert len(got) == 20_000
    assert [e["seq"] for e in last] == list(range(19_991, 20_001))
    # the reads ran in worker threads, a batch at a time: the loop kept turning meanwhile
    assert ticks - before > 10


def test_an_oversized_event_keeps_its_fixed_fields_and_says_what_was_cut(
    log: JsonlEventLog,
) -> None:
    reasons = "; ".join(f"refs/heads/b{n}: no app follows it" for n in range(20_000))
    stored = log.append(
        {
            "event": "WebhookIgnored",
            "app": "web",
            "deploy": "bitbucket:d-1",
            "message": reasons,
            "provider": "bitbucket",
            "refs": [f"refs/heads/b{n}" for n in range(20_000)],
        }
    )
    (line,) = log.path.read_bytes().splitlines()
    assert len(line) <= eventlog.MAX_LINE
    on_disk = json.loads(line)
    assert on_disk == stored
    assert (on_disk["event"], on_disk["app"], on_disk["deploy"]) == (
        "WebhookIgnored",
        "web",
        "bitbucket:d-1",
    )
    assert on_disk["provider"] == "bitbucket"
    assert on_disk["message"].startswith("refs/heads/b0: no app follows it; refs/heads/b1:")
    assert "[cut: this event was " in on_disk["message"]
    assert "the log keeps 64 KiB a line]" in on_disk["message"]
    assert on_disk["refs"][-1] == "… (19984 more items cut)"
    assert len(on_disk["refs"]) == 17


def test_an_event_within_the_cap_is_stored_as_it_is(log: JsonlEventLog) -> None:
    message = "é" * 10_000  # escaped on disk, still within 64 KiB
    assert log.append({"event": "BuildOutput", "message": message})["message"] == message


async def test_a_reader_cancelled_while_a_thread_reads_its_batch_closes_the_files_after_it() -> (
    None
):
    """The dashboard's history stops mid-read: the files close once the thread is done with
    them, not under it (that was `ValueError: generator already executing`)."""
    inside, go_on = threading.Event(), threading.Event()
    closed: list[bool] = []

    def stored() -> Generator[eventlog.Event]:
        try:
            inside.set()
            go_on.wait(10)
            yield {"seq": 1, "event": "DeployQueued"}
        finally:
            closed.append(True)

    batches = eventlog._Batches(stored())
    reading = asyncio.ensure_future(asyncio.to_thread(batches.take, 10))
    assert await asyncio.to_thread(inside.wait, 10)
    batches.close()  # the reader is cancelled now; the thread is inside the generator
    assert closed == []
    go_on.set()
    assert [e["seq"] for e in await reading] == [1]
    for _ in range(200):  # bounded: the closing thread runs once the batch is out
        if closed:
            break
        await asyncio.sleep(0.01)
    assert closed == [True]
