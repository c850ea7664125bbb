"""Property tests at the doors where outsiders' bytes come in: any input gets its answer or a
clean refusal (the project's own error), never a traceback, and the spool loses no record
that was whole when the reader met a torn or corrupt one."""

from __future__ import annotations

import hashlib
import hmac
import json
from argparse import Namespace
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyperdrive import admiral, config
from hyperdrive.errors import ConfigError, HyperdriveError, InvalidName
from hyperdrive.gitserver import AdmiralRequest, CommandRejected, GitRequest, parse_command
from hyperdrive.hooks.webhook import (
    PROVIDER,
    WebhookRefused,
    _parse_body,
    detect_provider,
    load_json,
)
from hyperdrive.spool import read_journal
from hyperdrive.triggers import RefUpdate, Trigger


def outcome(call: Callable[..., Any], *args: Any) -> Any:
    """What `call` returns, or the project's own error it raised (anything else propagates)."""
    try:
        return call(*args)
    except (HyperdriveError, admiral._Refused) as err:
        return err


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SECRET = b"It's a Secret to Everybody"

# ─── webhooks: every forge, signed or not, any body ──────────────────────────

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=25,
)
FIELDS = ["ref", "before", "after", "deleted", "repository", "project", "push", "changes"]
PAYLOAD = st.dictionaries(st.sampled_from(FIELDS), JSON) | st.dictionaries(st.text(), JSON)
HEADER_VALUES = st.text(max_size=80) | st.sampled_from(["sha256=", "sha1=", "push", ""])
HEADER_NAMES = st.sampled_from(
    [
        "X-GitHub-Event", "X-Gitea-Event", "X-Forgejo-Event", "X-Gitlab-Event", "X-Event-Key",
        "X-Hub-Signature-256", "X-Hub-Signature", "X-Gitea-Signature", "X-Gitlab-Token",
        "X-GitHub-Delivery", "X-Request-UUID", "webhook-id", "webhook-signature",
        "webhook-timestamp",
    ]
)  # fmt: skip


def parse_as(name: str, raw: bytes, headers: dict[str, str], form: bool = False) -> int:
    """What the receiver does with a body before it looks anything up: verify, then parse;
    the HTTP status it would answer (202 for a push it can use)."""
    provider = PROVIDER[name]
    try:
        provider.verify(headers, SECRET, raw, 0.0)
        provider.parse(_parse_body(raw, form and provider.forms))
    except WebhookRefused as err:
        return err.status
    return 202


@FUZZ
@given(st.sampled_from(sorted(PROVIDER)), st.binary(max_size=300), st.booleans())
def test_any_body_is_refused_cleanly_by_every_forge(name: str, raw: bytes, form: bool) -> None:
    signature = hmac.new(SECRET, raw, hashlib.sha256).hexdigest()
    headers = {
        "X-Hub-Signature-256": f"sha256={signature}",
        "X-Hub-Signature": f"sha256={signature}",
        "X-Gitea-Signature": signature,
        "X-Gitlab-Token": SECRET.decode(),
    }
    assert parse_as(name, raw, headers, form) in {400, 202}


@FUZZ
@given(st.sampled_from(sorted(PROVIDER)), PAYLOAD)
def test_any_signed_json_object_is_a_push_or_a_400(name: str, obj: dict[str, Any]) -> None:
    raw = json.dumps(obj).encode()
    signature = hmac.new(SECRET, raw, hashlib.sha256).hexdigest()
    headers = {
        "X-Hub-Signature-256": f"sha256={signature}",
        "X-Hub-Signature": f"sha256={signature}",
        "X-Gitea-Signature": signature,
        "X-Gitlab-Token": SECRET.decode(),
    }
    assert parse_as(name, raw, headers) in {400, 202}


@FUZZ
@given(
    st.sampled_from(sorted(PROVIDER)),
    st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=6),
    st.binary(max_size=100),
)
def test_hostile_headers_are_refused_not_crashed(
    name: str, headers: dict[str, str], raw: bytes
) -> None:
    assert parse_as(name, raw, headers) in {400, 401, 403, 202}
    assert detect_provider(headers) in {None, *PROVIDER}


@FUZZ
@given(st.text(alphabet='[]{}"0123456789,:ae \\', max_size=2000))
def test_load_json_answers_deep_or_broken_text_with_a_400(text: str) -> None:
    answer = outcome(load_json, text.encode())
    assert isinstance(answer, dict) or (isinstance(answer, WebhookRefused) and answer.status == 400)


# ─── the SSH command line ────────────────────────────────────────────────────

WORDS = st.sampled_from(
    [
        "git-receive-pack", "git-upload-pack", "git-upload-archive", "git", "receive-pack",
        "status", "logs", "deploy", "rollback", "enter", "-f", "-n", "--json", "--deploy",
        "all", "web", "'web'", "/web.git", "../etc", "~", "'", '"', "\\", "\x00", "\n", " ",
        "--", "-", "=", "#",
    ]
)  # fmt: skip
COMMANDS = st.lists(WORDS | st.text(max_size=12), max_size=8).map(" ".join) | st.text()


@FUZZ
@given(COMMANDS)
def test_any_ssh_command_is_a_request_or_a_refusal(command: str) -> None:
    request = outcome(parse_command, command)
    if isinstance(request, CommandRejected | InvalidName):
        assert str(request)
        return
    assert isinstance(request, GitRequest | AdmiralRequest)
    if isinstance(request, AdmiralRequest):
        assert request.argv, "an admiral request always names a verb"
        verb = outcome(admiral._parser().parse_args, request.argv)
        assert isinstance(verb, Namespace) or (isinstance(verb, admiral._Refused) and str(verb))


# ─── main.conf ───────────────────────────────────────────────────────────────

KEY_NAMES = st.sampled_from(sorted(config.KEYS)) | st.text(max_size=10)
VALUES = st.sampled_from(
    [
        "0", "-1", "65536", "2222", "0.0.0.0:2222", "[::1]:22", "10.213.0.0/24", "10.0.0.0/31",
        "/data", "relative", "on", "off", "1.5", "nan", "inf", "1e400", "64M", "1 GiB",
        "nats://a:b@h:4222", "'quoted'", '"', "#", "=", "", " ", "\x00",
    ]
) | st.text(max_size=20)  # fmt: skip
LINES = st.tuples(st.sampled_from(["", "export ", " ", "#"]), KEY_NAMES, VALUES).map(
    lambda t: f"{t[0]}{t[1]}={t[2]}"
)


@FUZZ
@given(st.lists(LINES | st.text(max_size=30), max_size=8).map("\n".join))
def test_any_main_conf_is_a_config_or_a_message_naming_the_line_or_key(text: str) -> None:
    values = outcome(config.parse_conf, text, "main.conf")
    if isinstance(values, ConfigError):
        assert "main.conf:" in str(values)
        return
    built = outcome(config.build, values)
    if isinstance(built, ConfigError):
        assert [key for key in config.KEYS if key in str(built)], f"no key named: {built}"
        return
    assert isinstance(built, config.Config)


@FUZZ
@given(st.sampled_from(sorted(config.KEYS)), VALUES)
def test_every_key_refuses_a_bad_value_by_name(key: str, value: str) -> None:
    built = outcome(config.build, {key: value})
    assert isinstance(built, config.Config) or key in str(built)


# ─── the spool journal ───────────────────────────────────────────────────────


def trigger(n: int) -> Trigger:
    sha = hashlib.sha1(str(n).encode()).hexdigest()
    made = Trigger.push(f"app{n % 3}", RefUpdate("refs/heads/master", "0" * 40, sha), "fuzz")
    return replace(made, id=f"push-fuzz-{n}", received=1.0)  # the same bytes every time


def put(t: Trigger) -> bytes:
    return json.dumps({"op": "put", "trigger": t.to_json()}, separators=(",", ":")).encode()


def done(t: Trigger) -> bytes:
    return json.dumps({"op": "done", "id": t.id, "ts": 1.0, "fp": ""}).encode()


def replay(data: bytes) -> tuple[list[str], bytes]:
    """read_journal over `data`: the ids it finds pending, and what the file holds afterwards."""
    with TemporaryDirectory() as folder:
        path = Path(folder) / "journal.jsonl"
        path.write_bytes(data)
        pending, _, _ = read_journal(path)
        return list(pending), path.read_bytes()


@FUZZ
@given(st.binary(max_size=500))
def test_any_bytes_replay_cleanly_and_leave_a_clean_end(data: bytes) -> None:
    _, after = replay(data)
    assert after == data[: data.rfind(b"\n") + 1], "only a torn last record is cut"


@FUZZ
@given(st.integers(1, 6), st.data())
def test_a_torn_last_record_loses_only_itself(count: int, data: st.DataObject) -> None:
    triggers = [trigger(n) for n in range(count)]
    lines = [put(t) + b"\n" for t in triggers]
    whole = b"".join(lines)
    cut = data.draw(st.integers(len(whole) - len(lines[-1]), len(whole) - 1), label="cut")
    pending, after = replay(whole[:cut])
    assert pending == [t.id for t in triggers[:-1]]
    assert after == b"".join(lines[:-1])


@FUZZ
@given(st.integers(2, 6), st.data())
def test_a_corrupt_record_costs_only_itself(count: int, data: st.DataObject) -> None:
    triggers = [trigger(n) for n in range(count)]
    lines = [put(t) for t in triggers]
    bad = data.draw(st.integers(0, count - 1), label="bad record")
    garbage = data.draw(st.binary(min_size=1, max_size=40).filter(lambda b: b"\n" not in b))
    at = data.draw(st.integers(0, len(lines[bad])), label="where")
    lines[bad] = lines[bad][:at] + garbage + lines[bad][at:]
    lines.append(done(triggers[0]))
    pending, _ = replay(b"\n".join(lines) + b"\n")
    survivors = [t.id for i, t in enumerate(triggers) if i not in (0, bad)]
    assert [p for p in pending if p in survivors] == survivors, "the others all survive"
    assert len(pending) <= len(survivors) + 1, "the corrupt record is at most itself"
