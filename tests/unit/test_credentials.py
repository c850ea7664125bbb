"""URLs are shown without userinfo: a token in an autodeploy URL never reaches text people see."""

from __future__ import annotations

import pytest

from hyperdrive.credentials import shown_url, strip_userinfo, strip_userinfo_in
from hyperdrive.errors import CommandFailed, InvalidName
from hyperdrive.eventlog import redact
from hyperdrive.gitremote import normalize_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://deploy:TOKEN@host/x.git", "http://host/x.git"),
        ("https://TOKEN@github.com/o/r.git", "https://github.com/o/r.git"),
        ("https://x-access-token:TOKEN@github.com:8443/o/r", "https://github.com:8443/o/r"),
        ("HTTPS://u:p%40ss@Host/r", "HTTPS://Host/r"),
        ("ssh://git:TOKEN@host/r", "ssh://host/r"),
        ("ssh://git@host/r", "ssh://git@host/r"),
        ("git@github.com:o/r.git", "git@github.com:o/r.git"),
        ("https://github.com/o/r#main", "https://github.com/o/r#main"),
        ("/srv/git/app.git", "/srv/git/app.git"),
    ],
)
def test_shown_url_drops_credentials(url: str, shown: str) -> None:
    assert shown_url(url) == shown


def test_git_stderr_is_redacted_anywhere_in_text() -> None:
    said = "fatal: unable to access 'http://deploy:TOKEN@127.0.0.1:9/x.git/': refused"
    assert strip_userinfo(said) == "fatal: unable to access 'http://127.0.0.1:9/x.git/': refused"


def test_command_failed_message_carries_no_token() -> None:
    err = CommandFailed(
        ["git", "fetch", "--", "https://u:TOKEN@h/r"], 128, "fatal: https://u:TOKEN@h/r: 403"
    )
    assert "TOKEN" not in str(err)
    assert "https://h/r: 403" in str(err)


def test_event_log_redact_strips_userinfo_from_every_value() -> None:
    event = redact(
        {
            "event": "StageFinished",
            "message": "fetched main of http://deploy:TOKEN@host/x.git",
            "urls": ["https://TOKEN@h/r"],
            "nested": {"why": "ssh://a:TOKEN@h/r"},
            "count": 3,
        }
    )
    assert "TOKEN" not in repr(event)
    assert event["message"] == "fetched main of http://host/x.git"
    assert event["count"] == 3


def test_values_without_urls_are_left_alone() -> None:
    value = {"a": ("x@y", 1), "b": "mail me at a@b.c"}
    assert strip_userinfo_in(value) == value


def test_a_bad_url_error_does_not_echo_its_token() -> None:
    with pytest.raises(InvalidName) as caught:
        normalize_url("http://deploy:TOKEN@/x")
    assert "TOKEN" not in str(caught.value)
