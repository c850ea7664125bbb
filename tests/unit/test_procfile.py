"""The Procfile as Heroku and piku read it, and cron's next due minute."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hyperdrive.procfile import ProcfileError, cron_job, parse

TYPES = st.from_regex(r"[a-z][a-z0-9_-]{0,10}", fullmatch=True).filter(
    lambda t: t != "release" and not t.startswith("cron")
)
COMMANDS = st.from_regex(r"[a-z./$][a-zA-Z0-9 ./$=:-]{0,30}", fullmatch=True).map(str.strip)


def test_every_kind_of_line_means_what_it_means_on_heroku_and_piku() -> None:
    procfile = parse(
        "# an app\n"
        "worker: python3 worker.py\n"
        "web: gunicorn app:app --bind 0.0.0.0:$PORT\n"
        "\n"
        "release: python3 manage.py migrate\n"
        "cron: */5 * * * * ./tick --now\n"
        "cron_nightly: 0 3 * * mon-fri ./nightly\n"
    )
    assert list(procfile.processes) == ["web", "worker"]  # web first, then as written
    assert procfile.web == "gunicorn app:app --bind 0.0.0.0:$PORT"
    assert procfile.workers == {"worker": "python3 worker.py"}
    assert procfile.release == "python3 manage.py migrate"
    assert [(j.name, j.spec, j.command, j.line) for j in procfile.cron] == [
        ("cron", "*/5 * * * *", "./tick --now", 6),
        ("cron_nightly", "0 3 * * mon-fri", "./nightly", 7),
    ]


@pytest.mark.parametrize(
    ("text", "line", "said"),
    [
        ("web ./serve", 1, "has no `type:`"),
        ("web: a\nworker:   \n", 2, "`worker:` has no command"),
        ("a b: x", 1, "is not a process type"),
        ("web: a\nworker: b\nweb: c", 3, "`web:` is there twice"),
        ("cron: * * * * ./x", 1, "needs five fields and a command"),
        ("cron: * * 32 * * ./x", 1, "cannot read the day of month field '32'"),
        ("cron: * * * foo * ./x", 1, "cannot read the month field 'foo'"),
        ("cron: */0 * * * * ./x", 1, "cannot read the minute field '*/0'"),
        ("cron: 5-1 * * * * ./x", 1, "cannot read the minute field '5-1'"),
    ],
)
def test_a_bad_line_is_refused_with_its_number(text: str, line: int, said: str) -> None:
    with pytest.raises(ProcfileError, match=re.escape(said)) as caught:
        parse(text)
    assert caught.value.line == line
    assert str(caught.value).startswith(f"Procfile line {line}: ")


@given(st.dictionaries(TYPES, COMMANDS.filter(bool), min_size=1, max_size=6))
def test_written_processes_read_back_as_they_were(processes: dict[str, str]) -> None:
    text = "".join(f"{kind}: {command}\n" for kind, command in processes.items())
    assert dict(parse(text).processes) == processes


@given(st.text(max_size=200))
def test_any_text_is_read_or_refused_with_a_line_number(text: str) -> None:
    line = 0
    try:
        procfile = parse(text)
    except ProcfileError as err:
        line = err.line
    if line:
        assert 1 <= line <= max(1, len(text.splitlines()))
    else:
        assert all(command for command in procfile.processes.values())


AT = datetime(2026, 12, 1, 20, 17, 42)  # a Tuesday


@pytest.mark.parametrize(
    ("spec", "due"),
    [
        ("* * * * *", datetime(2026, 12, 1, 20, 18)),
        ("*/15 * * * *", datetime(2026, 12, 1, 20, 30)),
        ("0 3 * * *", datetime(2026, 12, 2, 3, 0)),
        ("0 0 1 1 *", datetime(2027, 1, 1, 0, 0)),
        ("30 9 * * sun", datetime(2026, 12, 6, 9, 30)),
        ("30 9 * * 7", datetime(2026, 12, 6, 9, 30)),
        ("0 12 15 * fri", datetime(2026, 12, 4, 12, 0)),  # either day field matches
        ("0 0 29 2 *", datetime(2028, 2, 29, 0, 0)),
        ("17 20 1 12 *", datetime(2027, 12, 1, 20, 17)),  # this minute has begun: next year
    ],
)
def test_the_next_due_minute(spec: str, due: datetime) -> None:
    assert cron_job("cron", f"{spec} ./x").schedule.next_after(AT) == due


def test_a_date_that_never_comes_is_never_due() -> None:
    assert cron_job("cron", "0 0 31 2 * ./x").schedule.next_after(AT) is None


@given(
    st.sets(st.integers(0, 59), min_size=1, max_size=5),
    st.sets(st.integers(0, 23), min_size=1, max_size=4),
    st.datetimes(datetime(2020, 1, 1), datetime(2035, 1, 1)),
)
def test_the_next_time_is_due_and_none_is_skipped(
    minutes: set[int], hours: set[int], moment: datetime
) -> None:
    spec = f"{','.join(map(str, sorted(minutes)))} {','.join(map(str, sorted(hours)))} * * *"
    schedule = cron_job("cron", f"{spec} ./x").schedule
    due = schedule.next_after(moment)
    assert due is not None
    assert due > moment
    assert (due.minute, due.hour, due.second) in {(m, h, 0) for m in minutes for h in hours}
    assert due - moment <= timedelta(days=1, minutes=1)
    probe = moment.replace(second=0, microsecond=0) + timedelta(minutes=1)
    while probe < due:  # no due minute between the moment and the one found
        assert not (probe.minute in minutes and probe.hour in hours)
        probe += timedelta(minutes=1)
