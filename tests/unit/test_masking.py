"""Secrets out of sight: the masker, the `secret` orders line, the squadron's mask, and the
two places it is applied (the event log, setup.log) — with fakes, in milliseconds."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hyperdrive.errors import OrdersRejected
from hyperdrive.eventlog import JsonlEventLog
from hyperdrive.headquarters import Headquarters, Orders, parse_orders
from hyperdrive.masking import MASK, MIN_LENGTH, LogMask, Masker, looks_secret, secret_values
from hyperdrive.pipeline.build import SetupLog
from hyperdrive.pipeline.fleet import Fleet
from hyperdrive.pipeline.model import Ship
from hyperdrive.pipeline.start import TAIL_BYTES
from tests.unit.deploy_world import PYTHON, World

# secrets and their surroundings: no '*', so the mask itself can never spell a secret
TEXT = st.text(st.characters(blacklist_characters="*", blacklist_categories=("Cs",)))
SECRET = st.text(
    st.characters(blacklist_characters="*", blacklist_categories=("Cs",)),
    min_size=MIN_LENGTH,
    max_size=20,
)


def parse(text: str) -> Orders:
    return parse_orders(text, "api/orders", default_hull="busybox")


@given(before=TEXT, secret=SECRET, after=TEXT)
def test_a_secret_never_shows_whatever_surrounds_it(before: str, secret: str, after: str) -> None:
    shown = Masker.of([secret])(before + secret + after)
    assert secret not in shown
    assert MASK in shown


@given(secrets=st.lists(SECRET, min_size=1, max_size=4), pieces=st.lists(TEXT, max_size=6))
def test_no_secret_of_many_shows_however_they_overlap(
    secrets: list[str], pieces: list[str]
) -> None:
    # secrets glued to each other and to their own halves: overlaps and substrings of others
    halves = [s[: len(s) // 2] + t[len(t) // 2 :] for s in secrets for t in secrets]
    glued = secrets + halves + secrets
    text = "".join(p + s for p, s in zip(pieces + [""] * len(glued), glued, strict=False))
    shown = Masker.of(secrets)(text)
    for secret in secrets:
        assert secret not in shown


def test_overlapping_secrets_are_masked_as_one_span_with_nothing_between() -> None:
    masker = Masker.of(["abcdefgh", "efghijkl"])
    assert masker("<abcdefghijkl>") == f"<{MASK}>"
    assert masker("abcdefgh efghijkl") == f"{MASK} {MASK}"


def test_a_secret_inside_a_longer_one_is_masked_whole() -> None:
    masker = Masker.of(["hunter2hunter2", "hunter2h"])
    assert masker("pw=hunter2hunter2;") == f"pw={MASK};"
    assert masker("pw=hunter2hx") == f"pw={MASK}x"


def test_text_without_secrets_is_the_same_text() -> None:
    assert Masker.of(["s3cret-value"])("nothing here") == "nothing here"
    assert Masker()("anything") == "anything"
    assert not Masker.of(["short"])


def test_a_value_below_the_minimum_is_not_masked() -> None:
    masker = Masker.of(["1", "true", "x" * (MIN_LENGTH - 1), "y" * MIN_LENGTH])
    assert masker("1 true xxxxx yyyyyy") == f"1 true xxxxx {MASK}"


def test_url_encoded_and_json_escaped_forms_are_masked_too() -> None:
    masker = Masker.of(['p@ss w/rd"&'])
    for shown in ("p%40ss%20w%2Frd%22%26", "p%40ss+w%2Frd%22%26", 'p@ss w/rd\\"&'):
        assert masker(f"postgres://u:{shown}@db/x") == f"postgres://u:{MASK}@db/x"


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("DB_PASSWORD", True),
        ("db_pass", True),
        ("PASSWD", True),
        ("API_TOKEN", True),
        ("SECRET_KEY_BASE", True),
        ("stripe_key", True),
        ("GPG_PRIVATE", True),
        ("AWS_CREDENTIALS", True),
        ("PORT", False),
        ("DATABASE_URL", False),
        ("GREETING", False),
    ],
)
def test_which_names_look_secret(name: str, secret: bool) -> None:
    assert looks_secret(name) is secret


def test_an_apps_secrets_are_its_includes_its_secret_looking_and_its_named_values() -> None:
    env = {"API_TOKEN": "tok-123456", "DB_WORD": "opensesame", "GREETING": "hello world"}
    includes = {"STRIPE": "sk_live_abcdef", "LEVEL": "info"}
    assert secret_values(env, includes, ["DB_WORD"]) == {
        "tok-123456",
        "opensesame",
        "sk_live_abcdef",
    }


# ─── the `secret` orders line ───────────────────────────────────────────────


def test_secret_names_exported_keys_on_one_or_more_lines() -> None:
    orders = parse("export A=aaaaaaaa B=bbbbbbbb C=cccccccc\nsecret A B\nsecret C\n")
    assert orders.secrets == ("A", "B", "C")
    assert orders.where("secret B") == "api/orders:2"


def test_a_secret_line_may_come_before_its_export() -> None:
    assert parse("secret DB\nexport DB=xyzzy-plugh\n").secrets == ("DB",)


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        ("secret\n", 1, "secret needs at least one variable name"),
        ("export A=1\nsecret 9A\n", 2, "secret '9A': not a valid variable name"),
        ("export A=1\nsecret A\nsecret A\n", 3, "A named secret twice (first on line 2)"),
        ("export A=1\n\nsecret A B\n", 3, "secret B: these orders export no B"),
    ],
)
def test_a_bad_secret_line_is_rejected_naming_file_and_line(
    text: str, line: int, says: str
) -> None:
    with pytest.raises(OrdersRejected) as caught:
        parse(text)
    assert caught.value.line == line
    assert says in str(caught.value)
    assert str(caught.value).startswith(f"api/orders:{line}: ")


def test_a_new_secret_line_alone_is_no_change_that_redeploys() -> None:
    assert parse("export A=aaaaaaaa\n") == parse("export A=aaaaaaaa\nsecret A\n")


# ─── the squadron's mask ────────────────────────────────────────────────────


def test_the_fleets_mask_follows_the_orders_and_includes_in_force() -> None:
    fleet = Fleet("busybox")
    assert fleet.mask("opensesame sk_live_abcdef") == "opensesame sk_live_abcdef"
    fleet.hq = Headquarters(apps={"api": parse("export DB=opensesame\nsecret DB\n")})
    assert fleet.mask("opensesame sk_live_abcdef") == f"{MASK} sk_live_abcdef"
    fleet.includes = {"STRIPE": "sk_live_abcdef"}
    assert fleet.mask("opensesame sk_live_abcdef") == f"{MASK} {MASK}"
    fleet.hq = Headquarters(apps={"api": parse("export DB=opensesame\n")})
    assert fleet.mask("opensesame sk_live_abcdef") == f"opensesame {MASK}"
    assert fleet.secrets("api") == {"sk_live_abcdef"}


@pytest.fixture
def masked_log(tmp_path: Path) -> Iterator[JsonlEventLog]:
    log = JsonlEventLog(tmp_path / "events.jsonl", mask=Masker.of(["opensesame"]))
    log.open()
    yield log
    log.close()


def test_the_event_log_masks_every_field_but_the_ids_it_makes(masked_log: JsonlEventLog) -> None:
    with masked_log.subscribe() as live:
        masked_log.append(
            {
                "event": "DeployFailed",
                "app": "opensesame",  # an id: kept, so filters still find the app's events
                "message": "build printed opensesame",
                "lines": ["x opensesame", {"deep": "opensesame!"}],
            }
        )
        (queued,) = list(live._queue)
    stored = (masked_log.path).read_text()
    assert stored.count("opensesame") == 1
    assert '"app":"opensesame"' in stored
    for event in (queued, json.loads(stored)):
        assert event["message"] == f"build printed {MASK}"
        assert event["lines"] == [f"x {MASK}", {"deep": f"{MASK}!"}]


def test_setup_log_masks_each_line_before_it_is_written_emitted_or_cut(tmp_path: Path) -> None:
    emitted: list[str] = []
    log = SetupLog(tmp_path / "setup.log", emitted.append, Masker.of(["opensesame"]))
    log.line("token: opensesame")
    log.line("x" * 294 + "opensesame")  # the tail keeps 300 characters: cut after masking
    log.close()
    written = (tmp_path / "setup.log").read_text()
    assert "opensesame" not in written
    assert "opense" not in "".join(log.tail)
    assert emitted[0] == f"token: {MASK}"
    assert written.splitlines()[0] == f"token: {MASK}"


async def test_a_build_printing_its_secrets_shows_only_the_mask(tmp_path: Path) -> None:
    world = World(tmp_path)
    try:
        hd = world.daemon()
        hd.daemon.core.fleet.includes = {"STRIPE": "sk_live_abcdef"}
        hd.daemon.core.fleet.hq = Headquarters(
            apps={"web": parse_orders("export API_TOKEN=tok-123456\n", "web/orders")}
        )
        world.runtime.build_output = ["sk_live_abcdef", "token=tok-123456"]
        world.runtime.build_code = 1
        deploy = await hd.deploy("web", PYTHON)
        events = json.dumps(hd.events(deploy))
        setup_logs = [p.read_text() for p in (tmp_path / "data" / "lxc").glob("*/setup.log")]
    finally:
        world.close()
    assert "sk_live_abcdef" not in events
    assert "tok-123456" not in events
    assert f"token={MASK}" in hd.outcome(deploy)["message"]
    assert setup_logs
    assert all("tok-123456" not in text for text in setup_logs)


def crash(message: str) -> None:
    raise RuntimeError(message)


def test_the_daemons_own_log_is_masked_tracebacks_included() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(LogMask(Masker.of(["opensesame"])))
    logger = logging.getLogger("hyperdrive.test.masking")
    logger.addHandler(handler)
    try:
        logger.warning("build said %s", "opensesame")
        try:
            crash("crashed on opensesame")
        except RuntimeError:
            logger.exception("deploy %s crashed", "d-1")
    finally:
        logger.removeHandler(handler)
    text = out.getvalue()
    assert "opensesame" not in text
    assert f"build said {MASK}" in text
    assert f"RuntimeError: crashed on {MASK}" in text


async def test_a_failure_message_never_quotes_an_app_log_line_cut_at_its_start(
    tmp_path: Path,
) -> None:
    world = World(tmp_path)
    try:
        starter = world.daemon().daemon.core.deployer.starter
        ship = Ship("hd-web-abc1234", "abc1234" * 5, "10.0.0.2", 3000)
        logs = starter.config.ship_dir(ship.name) / "run" / "logs"
        logs.mkdir(parents=True)
        # the 64 KiB read back starts inside the secret: its second half alone is no match
        (logs / "web.log").write_text("opensesame" + "x" * (TAIL_BYTES - 16) + "\nlast words\n")
        tail = await starter.app_log_tail(ship)
        (logs / "web.log").write_text("first words\nlast words\n")
        whole = await starter.app_log_tail(ship)
    finally:
        world.close()
    assert tail == "; app output: last words"
    assert whole == "; app output: first words | last words"


async def test_history_hides_a_value_that_became_a_secret_after_it_was_written(
    tmp_path: Path,
) -> None:
    before = JsonlEventLog(tmp_path / "events.jsonl")
    before.open()
    before.append({"event": "BuildOutput", "app": "web", "message": 'db word "opensesame"'})
    before.append({"event": "BuildOutput", "app": "web", "message": "nothing to hide"})
    before.close()
    after = JsonlEventLog(tmp_path / "events.jsonl", mask=Masker.of(['"opensesame"']))
    after.open()
    try:
        read = [e["message"] async for e in after.read()]
        stored = [e["message"] for e in after.stored()]
    finally:
        after.close()
    assert read == stored == [f"db word {MASK}", "nothing to hide"]
