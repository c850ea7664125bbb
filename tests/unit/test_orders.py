"""The orders parser: every directive, every mistake a user can make, and the seed's example."""

from ipaddress import IPv4Address

import pytest

from hyperdrive.config import KNOWN_HULLS, Guard
from hyperdrive.errors import ConfigError, OrdersRejected
from hyperdrive.headquarters.includes import merge_env, read_env_file, read_includes
from hyperdrive.headquarters.orders import (
    MAX_FILE_BYTES,
    Egress,
    Orders,
    parse_orders,
    parse_orders_bytes,
)
from hyperdrive.pipeline.hulls import BUILDERS
from hyperdrive.pipeline.model import ShipSpec

SEED = "autodeploy https://github.com/wballard/starphleet.sample.git\nexport PORT=3000\n"


def parse(text: str) -> Orders:
    return parse_orders(text, "api/orders", default_hull="debian")


def rejected(text: str) -> OrdersRejected:
    with pytest.raises(OrdersRejected) as caught:
        parse(text)
    return caught.value


def test_seed_example_parses_unchanged() -> None:
    orders = parse_orders(SEED, "sample/orders")
    assert orders.app == "sample"
    assert orders.autodeploy_url == "https://github.com/wballard/starphleet.sample.git"
    assert orders.branch is None
    assert orders.env == {"PORT": "3000"}
    assert orders.port == 3000
    assert orders.publish_port is None
    assert not orders.hosted_here


def test_empty_orders_is_an_app_hosted_here_with_defaults() -> None:
    orders = parse("# just a comment\n\n   \n")
    assert orders.hosted_here
    assert orders.env == {"PORT": "3000"}
    assert orders.hull == "debian"
    assert (orders.healthcheck_path, orders.healthcheck_seconds) == ("/", 60.0)
    assert orders.servernames == ()
    assert orders.memory_bytes is None
    assert orders.cpus is None


@pytest.mark.parametrize(
    ("line", "url", "branch"),
    [
        ("autodeploy https://example.com/x.git#dev", "https://example.com/x.git", "dev"),
        (
            "autodeploy https://example.com/x.git release/1.2",
            "https://example.com/x.git",
            "release/1.2",
        ),
        ("autodeploy git@github.com:me/x.git", "git@github.com:me/x.git", None),
        ("autodeploy ssh://git@host:22/x.git#main", "ssh://git@host:22/x.git", "main"),
        ("autodeploy file:///srv/git/x.git", "file:///srv/git/x.git", None),
        ("autodeploy /srv/git/x.git main", "/srv/git/x.git", "main"),
        ("autodeploy 'https://example.com/x.git'  # a comment", "https://example.com/x.git", None),
    ],
)
def test_autodeploy_forms(line: str, url: str, branch: str | None) -> None:
    orders = parse(line)
    assert (orders.autodeploy_url, orders.branch) == (url, branch)


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("autodeploy", "takes a git URL"),
        ("autodeploy a b c", "takes a git URL"),
        ("autodeploy https://x/y.git#", "without a branch"),
        ("autodeploy https://x/y.git#a b", "branch given twice"),
        ("autodeploy https://x/y.git#a..b", "invalid branch name"),
        ("autodeploy https://x/y.git 'bad branch'", "invalid branch name"),
        ("autodeploy ext::sh", "remote helper"),
        ("autodeploy --upload-pack=touch", "not a git URL"),
        ("autodeploy 'https://x/a b.git'", "not a git URL"),
        ("autodeploy relative/path.git", "not a git URL"),
        ("autodeploy https:///nohost.git", "has no host"),
    ],
)
def test_bad_autodeploy(line: str, says: str) -> None:
    err = rejected(line)
    assert (err.path, err.line) == ("api/orders", 1)
    assert says in err.message


def test_branch_names_the_deploy_branch_of_a_hosted_or_remote_repo() -> None:
    hosted = parse("branch main")
    assert (hosted.hosted_here, hosted.branch) == (True, "main")
    remote = parse("autodeploy https://x/y.git\nbranch release/1.2")
    assert (remote.autodeploy_url, remote.branch) == ("https://x/y.git", "release/1.2")
    assert parse("branch v1.0").branch == "v1.0"  # a tag deploys too


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        ("branch", 1, "one branch or tag name"),
        ("branch a b", 1, "one branch or tag name"),
        ("branch a..b", 1, "invalid branch name"),
        ("branch a\nbranch b", 2, "duplicate branch (first on line 1)"),
        ("autodeploy https://x/y.git#dev\nbranch main", 2, "also by autodeploy on line 1"),
        ("branch main\nautodeploy https://x/y.git dev", 2, "also by branch on line 1"),
    ],
)
def test_bad_branch(text: str, line: int, says: str) -> None:
    err = rejected(text)
    assert (err.line, says in err.message) == (line, True), err.message


def test_export_with_quoting_and_hashes() -> None:
    orders = parse(
        """export GREETING="hello world # not a comment" TOKEN=a#b EMPTY=\nexport Q='it''s'"""
    )
    assert orders.env == {
        "PORT": "3000",
        "GREETING": "hello world # not a comment",
        "TOKEN": "a#b",
        "EMPTY": "",
        "Q": "its",
    }


def test_ports() -> None:
    orders = parse("export PORT=8080\nexport PUBLISH_PORT=9000")
    assert (orders.port, orders.publish_port) == (8080, 9000)
    assert orders.where("export PUBLISH_PORT") == "api/orders:2"


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        ("frobnicate now", 1, "unknown directive 'frobnicate'"),
        ("\n\nexprot A=1", 3, "did you mean export?"),
        ("build_timeout 30", 1, "unknown directive"),
        ("export A", 1, "has no '='"),
        ("export", 1, "export needs KEY=VALUE"),
        ("export 1A=x", 1, "not a valid variable name"),
        ("export PORT=0", 1, "bad PORT '0'"),
        ("export PORT=65536", 1, "bad PORT"),
        ("export PORT=abc", 1, "bad PORT"),
        ("export PORT=03000", 1, "bad PORT"),
        ("export PORT=", 1, "bad PORT"),
        ("export PUBLISH_PORT=-1", 1, "bad PUBLISH_PORT"),
        ("export A=1\nexport B=2 A=3", 2, "A exported twice (first on line 1)"),
        ("export PORT=3000\nexport PORT=3000", 2, "PORT exported twice"),
        ("export A='unclosed", 1, "bad quoting"),
    ],
)
def test_bad_exports_and_unknown_directives(text: str, line: int, says: str) -> None:
    err = rejected(text)
    assert err.line == line
    assert says in err.message
    assert str(err).startswith(f"api/orders:{line}: ")


@pytest.mark.parametrize(
    "directive",
    [
        "autodeploy https://x/y.git",
        "hull busybox",
        "healthcheck /",
        "memory 1G",
        "cpus 2",
        "egress off",
    ],
)
def test_duplicate_directives(directive: str) -> None:
    err = rejected(f"{directive}\n# between\n{directive}")
    assert err.line == 3
    assert "duplicate" in err.message
    assert "first on line 1" in err.message


def test_hull() -> None:
    assert parse("hull busybox").hull == "busybox"
    assert "invalid hull name" in rejected("hull Busy_Box").message
    assert "one name" in rejected("hull a b").message


@pytest.mark.parametrize("name", ["ubuntu", "../x", "debian-12"])
def test_a_hull_hyperdrive_cannot_build_is_refused_with_its_line(name: str) -> None:
    err = rejected(f"export A=1\nhull {name}\n")
    assert (err.path, err.line) == ("api/orders", 2)
    assert "hull" in err.message
    assert name in err.message


def test_every_hull_the_orders_accept_has_a_builder() -> None:
    """The parser's list and the pipeline's builders are one set: no hull passes the push and
    fails the deploy."""
    assert set(KNOWN_HULLS) == set(BUILDERS)
    for name in KNOWN_HULLS:
        assert parse(f"hull {name}").hull == name


def test_healthcheck() -> None:
    orders = parse("healthcheck /healthz 2.5")
    assert (orders.healthcheck_path, orders.healthcheck_seconds) == ("/healthz", 2.5)
    assert parse("healthcheck /ok").healthcheck_seconds == 60.0
    assert "must start with /" in rejected("healthcheck ok").message
    for seconds in ("0", "-1", "inf", "nan", "1e3", "soon"):
        assert "positive number" in rejected(f"healthcheck / {seconds}").message


def test_servername() -> None:
    orders = parse("servername Example.COM www.example.com\nservername api.example.com example.com")
    assert orders.servernames == ("example.com", "www.example.com", "api.example.com")
    assert orders.where("servername api.example.com") == "api/orders:2"
    assert "at least one" in rejected("servername").message
    for bad in ("a_b.com", "-x.com", "x..com", "a" * 64 + ".com", "*.example.com"):
        assert "not a valid DNS name" in rejected(f"servername {bad}").message


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ("256M", 256 * 1024**2),
        ("1G", 1024**3),
        ("1.5g", 1536 * 1024**2),
        ("512MiB", 512 * 1024**2),
        ("64mb", 64 * 1024**2),
        ("8388608", 8388608),
    ],
)
def test_memory(size: str, expected: int) -> None:
    assert parse(f"memory {size}").memory_bytes == expected


def test_bad_memory() -> None:
    assert "did you mean 256M?" in rejected("memory 256").message
    assert "such as 256M" in rejected("memory lots").message
    assert "such as 256M" in rejected("memory 1 G").message
    assert "more than any machine" in rejected("memory 99999T").message


def test_cpus() -> None:
    assert parse("cpus 2").cpus == 2.0
    assert parse("cpus 0.5").cpus == 0.5
    assert "positive number" in rejected("cpus 0").message
    assert "one number" in rejected("cpus").message


@pytest.mark.parametrize("text", ["cpus 0.001", "cpus 0.009", "cpus 1025", "cpus 99999999"])
def test_cpus_a_ship_could_not_take_are_refused_at_their_line(text: str) -> None:
    refused = rejected(f"hull debian\n{text}")
    assert str(refused).startswith("api/orders:2: ")
    assert "out of range: 0.01 to 1024" in refused.message


@pytest.mark.parametrize("text", ["memory 1M", "memory 3.9M", "memory 4000K", "memory 0.001G"])
def test_memory_below_what_a_ship_needs_is_refused_at_its_line(text: str) -> None:
    refused = rejected(f"hull debian\n{text}")
    assert str(refused).startswith("api/orders:2: ")
    assert "below the 4M a ship needs" in refused.message


def test_the_limits_orders_allow_are_the_limits_a_ship_takes() -> None:
    """The extremes orders accept build a ShipSpec: no push passes HQ and fails every deploy."""
    for text in ("cpus 0.01\nmemory 4M", "cpus 1024\nmemory 4M"):
        orders = parse(text)
        address, gateway = IPv4Address("10.0.3.2"), IPv4Address("10.0.3.1")
        limits = {"memory_bytes": orders.memory_bytes, "cpus": orders.cpus}
        spec = ShipSpec(address, gateway, 24, "hdbr0", "web-1", **limits)  # type: ignore[arg-type]
        assert (spec.cpus, spec.memory_bytes) == (orders.cpus, orders.memory_bytes)


def test_egress() -> None:
    assert parse("").egress == Egress()
    assert parse("").egress.open
    off = parse("egress off").egress
    assert off.off
    assert not off.open
    allowed = parse("egress allow 10.0.0.5:5432 API.example.com:443 10.0.0.5:5432").egress
    assert allowed.allow == (("10.0.0.5", 5432), ("api.example.com", 443))
    assert not allowed.open
    assert not allowed.off
    assert parse("# a comment\negress off").where("egress") == "api/orders:2"


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("egress", "takes `off` or `allow host:port…`"),
        ("egress on", "takes `off` or `allow host:port…`"),
        ("egress allow", "takes `off` or `allow host:port…`"),
        ("egress off now", "takes `off` or `allow host:port…`"),
        ("egress allow 10.0.0.5", "write host:port"),
        ("egress allow 10.0.0.5:0", "write host:port"),
        ("egress allow 10.0.0.5:65536", "write host:port"),
        ("egress allow :80", "no IPv4 address or DNS name"),
        ("egress allow bad_name:80", "no IPv4 address or DNS name"),
        ("egress allow 10.0.0.300:80", "not a valid IPv4 address"),
        ("egress allow [::1]:80", "no IPv4 address or DNS name"),
        ("egress allow " + " ".join(f"h{n}.example:1" for n in range(65)), "at most 64"),
    ],
)
def test_bad_egress(line: str, says: str) -> None:
    err = rejected(f"export A=1\n{line}")
    assert err.line == 2
    assert says in err.message
    assert str(err).startswith("api/orders:2: ")


def test_orders_are_never_executed(tmp_path) -> None:
    marker = tmp_path / "pwned"
    orders = parse(f'export X="$(touch {marker})" Y="`touch {marker}`"')
    assert orders.env["X"] == f"$(touch {marker})"
    assert orders.env["Y"] == f"`touch {marker}`"
    assert not marker.exists()


def test_binary_orders_are_rejected() -> None:
    with pytest.raises(OrdersRejected) as caught:
        parse_orders_bytes(b"export A=1\n\x00\x01\x02", "api/orders")
    assert caught.value.line == 2
    assert "binary" in caught.value.message
    with pytest.raises(OrdersRejected) as caught:
        parse_orders_bytes(b"export A=1\nexport B=\xff\xfe", "api/orders")
    assert (caught.value.line, "not UTF-8" in caught.value.message) == (2, True)


def test_huge_orders_are_rejected_without_reading_on() -> None:
    data = b"# padding\n" * (MAX_FILE_BYTES // 10 + 1)
    with pytest.raises(OrdersRejected) as caught:
        parse_orders_bytes(data, "api/orders")
    assert caught.value.line == 0
    assert "too big" in caught.value.message
    with pytest.raises(OrdersRejected):
        parse_orders(data.decode(), "api/orders")


def test_crlf_and_app_name_from_folder() -> None:
    orders = parse_orders("export A=1\r\nhull busybox\r\n", "my-app/orders")
    assert (orders.app, orders.env["A"], orders.hull) == ("my-app", "1", "busybox")
    with pytest.raises(OrdersRejected) as caught:
        parse_orders("", "Bad_App/orders")
    assert "invalid app name" in caught.value.message


def test_equal_orders_ignore_line_positions() -> None:
    assert parse("hull busybox\nexport A=1") == parse("\n\nexport A=1\nhull busybox")
    assert parse("export A=1") != parse("export A=2")


def test_env_file_forms() -> None:
    text = "# secrets\nDB_URL=postgres://u:p@h/db\nexport TOKEN='a b'\nQ=\"x\"\n\nRAW= spaced \n"
    assert read_env_file(text, "/data/includes/a.env") == {
        "DB_URL": "postgres://u:p@h/db",
        "TOKEN": "a b",
        "Q": "x",
        "RAW": "spaced",
    }


@pytest.mark.parametrize("line", ["NOEQUALS", "1BAD=x", "A B=c"])
def test_env_file_errors_name_file_and_line(line: str) -> None:
    with pytest.raises(ConfigError, match=r"^/data/includes/a\.env:2: expected KEY=VALUE$"):
        read_env_file(f"OK=1\n{line}\n", "/data/includes/a.env")


def test_includes_folder_and_merge(tmp_path) -> None:
    assert read_includes(tmp_path / "missing") == {}
    (tmp_path / "a.env").write_text("A=1\nB=1\n")
    (tmp_path / "b.env").write_text("B=2\n")
    (tmp_path / "ignored.txt").write_text("C=3\n")
    includes = read_includes(tmp_path)
    assert includes == {"A": "1", "B": "2"}
    assert merge_env(includes, {"B": "orders", "PORT": "3000"}) == {
        "A": "1",
        "B": "orders",
        "PORT": "3000",
    }


def test_guard_and_drain() -> None:
    orders = parse("guard 30 5% 50\ndrain 120\n")
    assert orders.guard == Guard(seconds=30, max_percent=5, min_requests=50)
    assert orders.drain_seconds == 120
    assert parse("guard 60 20\n").guard == Guard(60, 20, 20)
    assert parse("guard off\n").guard == Guard(seconds=0)
    assert not parse("guard off\n").guard.on  # type: ignore[union-attr]
    assert parse("drain 0\n").drain_seconds == 0
    blank = parse("")
    assert (blank.guard, blank.drain_seconds) == (None, None), "the squadron's defaults apply"


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        ("guard\n", 1, "guard takes <seconds> <max-5xx-percent> [min-requests]"),
        ("guard 60\n", 1, "guard takes <seconds>"),
        ("guard 60 20 20 20\n", 1, "guard takes <seconds>"),
        ("guard on\n", 1, "guard takes <seconds>"),
        ("# x\nguard 0 20\n", 2, "write `guard off`"),
        ("guard -5 20\n", 1, "guard seconds '-5' must be a number from 0 to 3600"),
        ("guard 1e9 20\n", 1, "guard seconds '1e9' must be a number"),
        ("guard nan 20\n", 1, "guard seconds 'nan'"),
        ("guard 99999 20\n", 1, "from 0 to 3600"),
        ("guard 60 abc\n", 1, "guard max-5xx-percent 'abc' must be a number from 0 to 100"),
        ("guard 60 100\n", 1, "100 can never be passed"),
        ("guard 60 150%\n", 1, "guard max-5xx-percent '150'"),
        ("guard 60 20 0\n", 1, "guard min-requests '0' must be a whole number from 1"),
        ("guard 60 20 2.5\n", 1, "guard min-requests '2.5'"),
        ("guard 60 20 ٣\n", 1, "guard min-requests '٣'"),
        ("guard 60 20\nguard off\n", 2, "duplicate guard (first on line 1)"),
        ("drain\n", 1, "drain takes one number of seconds"),
        ("drain 5 s\n", 1, "drain takes one number of seconds"),
        ("drain forever\n", 1, "drain seconds 'forever' must be a number of seconds"),
        ("drain -1\n", 1, "drain seconds '-1'"),
        ("drain 86400\n", 1, "drain seconds '86400' is more than 3600"),
        ("drain 5\ndrain 6\n", 2, "duplicate drain (first on line 1)"),
    ],
)
def test_bad_guard_and_drain_name_file_and_line(text: str, line: int, says: str) -> None:
    err = rejected(text)
    assert (err.path, err.line) == ("api/orders", line)
    assert says in str(err), str(err)
    assert str(err).startswith(f"api/orders:{line}: "), str(err)
