"""`hd fleet status`: the shape of the view and its text (no NATS)."""

from __future__ import annotations

from hyperdrive.fleet.view import STALE_AFTER_S, app_state, render, view


def test_an_apps_health_comes_from_its_live_ship_and_last_deploy() -> None:
    live = {"app": "site", "ship": "site-3", "sha": "abc1234", "last_deploy": "finished 812 ms"}
    assert app_state(live)["health"] == "healthy"
    kept = {**live, "last_deploy": "failed 90 ms"}  # the old ship serves on
    assert app_state(kept) | {"at": 0} == {
        "sha": "abc1234",
        "ship": "site-3",
        "health": "failed",
        "last_deploy": "failed 90 ms",
        "at": 0,
    }
    assert app_state({"app": "new", "ship": None, "last_deploy": None})["health"] == "none"


def test_the_view_lists_squadrons_and_apps_by_name() -> None:
    now = 1_000_000.0
    squadrons = {
        "bravo": {"version": "0.9", "seen": now - 5},
        "alpha": {"version": "0.9", "seen": now - STALE_AFTER_S - 1},
    }
    site = {"sha": "abc1234", "ship": "site-1", "health": "healthy"}
    shown = view(squadrons, [("bravo", "site", site), ("alpha", "site", site)], now)
    assert [s["name"] for s in shown["squadrons"]] == ["alpha", "bravo"]
    assert [s["state"] for s in shown["squadrons"]] == ["gone", "up"]
    assert shown["squadrons"][1]["last_seen"] == "1970-01-12T13:46:35Z"
    cell = {**site, "rollout": None}
    assert shown["apps"] == [
        {"app": "site", "rollout": None, "squadrons": {"alpha": cell, "bravo": cell}}
    ]
    text = render(shown)
    assert "alpha" in text.splitlines()[1]
    assert text.splitlines()[-1].split() == [
        "site",
        "abc1234",
        "site-1",
        "healthy",
        "abc1234",
        "site-1",
        "healthy",
    ]
