"""Property tests: the orders parser answers any input with Orders or OrdersRejected only."""

import shlex

from hypothesis import given, settings
from hypothesis import strategies as st

from hyperdrive.errors import OrdersRejected
from hyperdrive.headquarters.orders import DIRECTIVES, Orders, parse_orders, parse_orders_bytes

FUZZ = settings(max_examples=300, deadline=None)

# Words that reach deep into each directive: quotes, comments, ports, sizes, URLs, branches.
pieces = st.sampled_from(
    [
        *DIRECTIVES,
        "PORT=",
        "PUBLISH_PORT=",
        "=",
        "#",
        "'",
        '"',
        "\\",
        " ",
        "\t",
        "\r",
        "0",
        "3000",
        "65536",
        "1.5",
        "G",
        "M",
        "iB",
        "/",
        "https://",
        "git@h:",
        "ext::",
        "..",
        "-",
        "a",
        "A_1",
        "é",
        "\u2028",
        "\x00",
        "nan",
        "inf",
        "1e3",
        "*",
        ".",
        "off",
        "allow",
        "10.0.0.5:",
        ":443",
    ]
)
word = st.lists(st.one_of(pieces, st.text(max_size=4)), max_size=5).map("".join)
line = st.lists(word, max_size=5).map(" ".join)
orders_text = st.lists(line, max_size=8).map("\n".join)


def outcome(parse) -> Orders | OrdersRejected:
    try:
        return parse()
    except OrdersRejected as err:
        return err


@FUZZ
@given(st.one_of(orders_text, st.text(max_size=300)))
def test_any_text_gives_orders_or_a_rejection(text: str) -> None:
    result = outcome(lambda: parse_orders(text, "api/orders", default_hull="debian"))
    if isinstance(result, OrdersRejected):
        assert result.path == "api/orders"
        assert 0 <= result.line <= text.count("\n") + 1
        assert "\n" not in str(result)
    else:
        assert 1 <= result.port <= 65535
        assert result.app == "api"


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes_give_orders_or_a_rejection(data: bytes) -> None:
    outcome(lambda: parse_orders_bytes(data, "api/orders"))


@FUZZ
@given(
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True).filter(
        lambda key: key not in ("PORT", "PUBLISH_PORT")
    ),
    st.text(st.characters(blacklist_characters="\x00\n"), max_size=30),
)
def test_export_round_trips_any_quoted_value(key: str, value: str) -> None:
    orders = parse_orders(f"export {key}={shlex.quote(value)}  # note", "api/orders")
    assert orders.env[key] == value
