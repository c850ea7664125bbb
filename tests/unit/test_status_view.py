"""`hd status` for people: at 80 columns (rich's width with no terminal) nothing is cut."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from hyperdrive.render import status_view

LONGEST_APP = "a" * 39


def status(apps: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": "hyperdrive",
        "version": "0.9.0",
        "pid": 4242,
        "ssh": "0.0.0.0:2222",
        "api": "0.0.0.0:8421",
        "http_port": 80,
        "headquarters": "hosted here",
        "headquarters_sha": "1a2b3c4d" * 5,
        "pending": 0,
        "inflight": 1,
        "apps": apps,
    }


def row(app: str, **fields: Any) -> dict[str, Any]:
    return {
        "app": app,
        "ship": f"hyperdrive-{app}-1a2b3c4-2",
        "sha": "1a2b3c4",
        "since": "2026-12-01 14:02 UTC",
        "url": f"http://127.0.0.1/{app}/",
        "last_deploy": "finished 1234 ms",
        "orders": "hosted here, branch main, PORT 3000, hull debian",
        **fields,
    }


def render(data: dict[str, Any], width: int) -> str:
    console = Console(file=io.StringIO(), width=width, record=True, color_system=None)
    for part in status_view(data):
        console.print(part)
    return console.export_text()


def test_every_ship_name_date_and_url_is_whole_at_80_columns() -> None:
    apps = [row("hyperdrive"), row(LONGEST_APP), row("web", ship=None, since=None, url=None)]
    text = render(status(apps), 80)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in text
    for app in apps[:2]:
        assert any(app["ship"] in line for line in lines), app["ship"]
        assert any(app["url"] in line for line in lines), app["url"]
    assert sum("2026-12-01 14:02 UTC" in line for line in lines) == 2
    assert "hosted here at 1a2b3c4" in text
    assert "finished 1234 ms" in text


def test_a_long_orders_line_wraps_instead_of_being_cut() -> None:
    rejected = (
        "file:///srv/git/site.git, PORT 3000, hull busybox; new orders REJECTED: "
        "site/orders:3: unknown directive 'launch'; known: autodeploy, branch, export"
    )
    text = render(status([row("site", orders=rejected)]), 80)
    assert "…" not in text
    assert " ".join(text.split()).count(rejected) == 1


def test_the_same_facts_at_any_width() -> None:
    data = status([row("site"), row(LONGEST_APP)])
    words = [set(render(data, width).split()) for width in (80, 120, 200)]
    assert all(w == words[0] for w in words)


def test_no_apps_says_how_to_start() -> None:
    text = render({**status([]), "headquarters_sha": None}, 80)
    assert "no apps yet: push one" in text
    assert "hosted here, nothing in force yet" in text


def test_a_hull_build_under_way_is_a_line_of_the_squadron() -> None:
    data = {
        **status([]),
        "hulls": {
            "debian": {"building": {"percent": 45, "step": "installing packages"}},
            "busybox": {"current": "hdt-hull-busybox-1"},
        },
    }
    lines = [line.rstrip() for line in render(data, 80).splitlines()]
    assert "  hulls         busybox hdt-hull-busybox-1, debian building 45% (installing" in lines


def test_a_built_hull_shows_the_runtime_versions_it_carries() -> None:
    data = {
        **status([]),
        "hulls": {
            "debian-13": {
                "current": "hdt-hull-debian-13-1",
                "runtimes": {"python": "3.13.5", "node": "20.19.2"},
            },
            "busybox": {"current": "hdt-hull-busybox-1", "runtimes": {}},
        },
    }
    text = " ".join(render(data, 200).split())
    assert "busybox hdt-hull-busybox-1, debian-13 hdt-hull-debian-13-1 (Python 3.13.5, Node" in text
