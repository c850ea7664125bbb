"""Rendering the nginx config: pure functions, no nginx needed."""

from pathlib import Path

import pytest

from hyperdrive.errors import InvalidName, ProxyError
from hyperdrive.nginx_reload import AppRoute, app_part, changed_apps, check_conflicts, render

PREFIX = Path("/var/hd/nginx")


def files_for(*routes: AppRoute, **kwargs: object) -> dict[str, str]:
    options: dict[str, object] = {"prefix": PREFIX, "http_port": 8080, **kwargs}
    return render(list(routes), **options)  # type: ignore[arg-type]


def test_layout_is_one_file_per_part_with_each_apps_section() -> None:
    """A generation is a few files however many apps: the seed's parts, every app in each."""
    files = files_for(AppRoute("a", "10.0.0.1", 20000), AppRoute("b", "10.0.0.1", 20001))
    assert sorted(files) == ["hosts.conf", "nginx.conf", "proxies.conf", "upstream.conf"]
    main = files["nginx.conf"]
    assert f"pid {PREFIX}/run/nginx.pid;" in main
    assert "listen 8080 default_server;" in main
    assert "include proxies.conf;" in main
    a, b = app_part(files, "upstream", "a"), app_part(files, "upstream", "b")
    assert a is not None
    assert "server 10.0.0.1:20000;" in a
    assert "20001" not in a
    assert b is not None
    assert "server 10.0.0.1:20001;" in b
    assert "20000" not in b
    assert app_part(files, "upstream", "c") is None


def test_many_apps_render_the_same_sections_as_each_alone() -> None:
    routes = [AppRoute(f"app{n}", "10.0.0.1", 20000 + n) for n in range(50)]
    together = files_for(*routes)
    for route in (routes[0], routes[17], routes[-1]):
        alone = files_for(route)
        for part in ("upstream", "proxies", "hosts"):
            assert app_part(together, part, route.app) == app_part(alone, part, route.app)


def test_upstream_keeps_connections_short_and_alive() -> None:
    upstream = files_for(AppRoute("a", "10.0.0.1", 20000))["upstream.conf"]
    assert "server 10.0.0.1:20000;" in upstream
    for line in ("keepalive 32;", "keepalive_time 1s;", "keepalive_timeout 1s;"):
        assert line in upstream


def test_path_route_strips_the_prefix_and_says_so() -> None:
    proxy = files_for(AppRoute("a", "10.0.0.1", 20000))["proxies.conf"]
    assert "location /a/ {" in proxy
    assert "proxy_pass http://app_a/;" in proxy
    assert "proxy_set_header X-Forwarded-Prefix /a;" in proxy
    assert "proxy_http_version 1.1;" in proxy
    assert "proxy_set_header Connection $hd_connection;" in proxy


def test_host_and_publish_routes_keep_the_path() -> None:
    route = AppRoute("a", "10.0.0.1", 20000, servernames=("www.a.test",), publish_port=9001)
    hosts = files_for(route, domain="example.org")["hosts.conf"]
    assert "server_name www.a.test a.example.org;" in hosts
    assert "listen 9001;" in hosts
    assert "proxy_pass http://app_a;" in hosts
    assert "X-Forwarded-Prefix" not in hosts


def test_app_without_hosts_has_no_server_block() -> None:
    assert "server {" not in files_for(AppRoute("a", "10.0.0.1", 20000))["hosts.conf"]


def test_override_is_copied_into_the_generation_and_included_everywhere() -> None:
    route = AppRoute("a", "10.0.0.1", 20000, servernames=("a.test",), publish_port=9001)
    files = files_for(route, overrides={"a": "client_max_body_size 50m;\n"})
    assert files["overrides/a.conf"] == "client_max_body_size 50m;\n"
    assert files["proxies.conf"].count("include overrides/a.conf;") == 1
    assert files["hosts.conf"].count("include overrides/a.conf;") == 2


@pytest.mark.parametrize(
    "bad",
    [
        {"app": "../etc"},
        {"address": "10.0.0.1; include /etc/shadow"},
        {"port": 0},
        {"servernames": ("a.test; return 200",)},
        {"servernames": ("A B",)},
        {"publish_port": 70000},
        {"check_path": "no-slash"},
        {"check_path": "/a b"},
    ],
)
def test_hostile_values_never_reach_the_config(bad: dict[str, object]) -> None:
    fields: dict[str, object] = {"app": "a", "address": "10.0.0.1", "port": 20000, **bad}
    with pytest.raises(InvalidName):
        AppRoute(**fields)  # type: ignore[arg-type]


def test_wildcard_servername_is_allowed() -> None:
    assert AppRoute("a", "10.0.0.1", 1, servernames=("*.a.test",)).servernames == ("*.a.test",)


def test_conflicts_are_named() -> None:
    a = AppRoute("a", "10.0.0.1", 20000, publish_port=9000)
    with pytest.raises(ProxyError, match="b: PUBLISH_PORT 9000 is already taken by a"):
        check_conflicts([a, AppRoute("b", "10.0.0.1", 20001, publish_port=9000)], 80, "")
    with pytest.raises(ProxyError, match="is already taken by the HTTP port"):
        check_conflicts([AppRoute("b", "10.0.0.1", 20001, publish_port=80)], 80, "")
    with pytest.raises(ProxyError, match="listed twice"):
        check_conflicts([a, a], 80, "")
    check_conflicts([a, AppRoute("b", "10.0.0.1", 20001)], 80, "example.org")


def test_only_apps_whose_files_changed_are_verified() -> None:
    a, b = AppRoute("a", "10.0.0.1", 20000), AppRoute("b", "10.0.0.1", 20001)
    live = files_for(a, b)
    moved_b = AppRoute("b", "10.0.0.1", 20001, servernames=("b.test",))
    assert changed_apps([a, moved_b], files_for(a, moved_b), live) == [moved_b]
    assert changed_apps([a, b], files_for(a, b, overrides={"a": "x;"}), live) == [a]
    assert changed_apps([a, b], live, None) == [a, b]


def test_a_part_file_edited_by_hand_marks_its_apps_changed() -> None:
    a, b = AppRoute("a", "10.0.0.1", 20000), AppRoute("b", "10.0.0.1", 20001)
    new = files_for(a, b)
    assert changed_apps([a, b], new, {**new, "proxies.conf": "location { broken\n"}) == [a, b]
    assert changed_apps([a, b], new, new) == []
