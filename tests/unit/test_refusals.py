"""Refused webhook deliveries: one event per source per interval, the rest one summary."""

from __future__ import annotations

from hyperdrive.hooks.refusals import RefusalTally, Summary, source_of


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_is_one_event_then_one_summary_at_the_next_refusal_after_it() -> None:
    clock = Clock()
    tally = RefusalTally(interval=60, clock=clock)
    assert tally.refuse("203.0.113.9", 401) == (True, [])
    answers = [tally.refuse("203.0.113.9", 401) for _ in range(3999)]
    assert answers == [(False, [])] * 3999
    clock.now += 60
    write, summaries = tally.refuse("203.0.113.9", 415)
    assert write
    assert summaries == [Summary("203.0.113.9", 3999, 60, 401)]
    assert summaries[0].message == "3999 more refusals from 203.0.113.9 in the last 60 s"
    assert (tally.refused, tally.unwritten) == (4001, 3999)


def test_each_source_has_its_own_interval_and_a_quiet_one_is_summarised_by_another() -> None:
    clock = Clock()
    tally = RefusalTally(interval=60, clock=clock)
    assert tally.refuse("a", 401)[0]
    assert tally.refuse("b", 401)[0], "another address is written at once"
    assert not tally.refuse("a", 400)[0]
    clock.now += 61
    write, summaries = tally.refuse("b", 401)
    assert write
    assert [s.message for s in summaries] == ["1 more refusal from a in the last 60 s"]


def test_tracked_sources_are_bounded() -> None:
    tally = RefusalTally(interval=60, max_sources=2, clock=Clock())
    tally.refuse("a", 401)
    tally.refuse("a", 401)
    tally.refuse("b", 401)
    write, summaries = tally.refuse("c", 401)
    assert write
    assert summaries == [Summary("a", 1, 60, 401)], "the oldest is summarised early"


def test_refusals_are_counted_by_address_and_ipv6_by_its_64() -> None:
    assert source_of("203.0.113.9") == "203.0.113.9"
    assert source_of("::ffff:203.0.113.9") == "203.0.113.9"
    assert source_of("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert source_of("2001:db8:1:2:bbbb::7") == "2001:db8:1:2::/64"
    assert source_of(None) == "unknown"
