"""Config: main.conf then the environment, every key validated, a bad value named in one line."""

import ipaddress
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hyperdrive import config as configuration
from hyperdrive.config import KEYS, Config, Guard, Listen, build, load
from hyperdrive.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def conf(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "main.conf"
    path.write_text(text)
    return path


def test_an_empty_file_gives_the_contract_defaults(tmp_path: Path) -> None:
    config = load(conf(tmp_path, "# nothing set\n\n"), environ={})
    assert config.name == "hyperdrive"
    assert config.data == Path("/data/hyperdrive")
    assert config.var == Path("/var/hyperdrive")
    assert config.headquarters == ""
    assert config.ssh_listen == Listen("0.0.0.0", 2222)
    assert config.api_listen == Listen("0.0.0.0", 8421)
    assert config.http_port == 80
    assert config.domain == ""
    assert config.webhook_secret == ""
    assert config.admiral_keys == Path("/etc/hyperdrive/admirals.pub")
    assert config.hull == "debian"
    assert config.subnet == ipaddress.IPv4Network("10.213.0.0/24")
    assert config.keep_ships == 3
    assert config.bridge == "hyperdrivebr0"
    assert config.events_file == Path("/data/hyperdrive/events.jsonl")
    assert config.spool_dir == Path("/data/hyperdrive/spool")
    assert config.containers_dir == Path("/var/hyperdrive/containers")


def test_the_file_sets_values_and_the_environment_wins(tmp_path: Path) -> None:
    path = conf(
        tmp_path,
        "# squadron\n"
        "HYPERDRIVE_NAME=alpha\n"
        "HYPERDRIVE_HTTP_PORT=8080\n"
        "  HYPERDRIVE_KEEP_SHIPS = 5  \n"
        "export HYPERDRIVE_DOMAIN=apps.example.com\n",
    )
    environ = {"HYPERDRIVE_HTTP_PORT": "9090", "HYPERDRIVE_HULL": "busybox", "PATH": "/bin"}
    config = load(path, environ=environ)
    assert config.name == "alpha"
    assert config.http_port == 9090, "the environment overrides the file"
    assert config.hull == "busybox", "the environment alone sets a key too"
    assert config.keep_ships == 5
    assert config.domain == "apps.example.com"
    assert config.source == path
    assert config.bridge == "alphabr0"


def test_hyperdrive_config_in_the_environment_names_the_file(tmp_path: Path) -> None:
    path = conf(tmp_path, "HYPERDRIVE_NAME=beta\n")
    assert load(environ={"HYPERDRIVE_CONFIG": str(path)}).name == "beta"


def test_a_missing_config_file_given_on_purpose_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.conf"
    with pytest.raises(ConfigError, match=r"nope\.conf"):
        load(missing, environ={})
    with pytest.raises(ConfigError, match=r"nope\.conf"):
        load(environ={"HYPERDRIVE_CONFIG": str(missing)})


def test_a_config_path_that_is_a_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"cannot read config file {tmp_path}")):
        load(tmp_path, environ={})


def test_the_default_file_may_be_absent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(configuration, "DEFAULT_CONFIG", tmp_path / "absent.conf")
    assert load(environ={"HYPERDRIVE_NAME": "gamma"}).name == "gamma"


def test_matching_quotes_are_stripped(tmp_path: Path) -> None:
    path = conf(
        tmp_path,
        'HYPERDRIVE_WEBHOOK_SECRET="It\'s a secret"\n'
        "HYPERDRIVE_HEADQUARTERS='https://git.example.com/hq.git#main'\n"
        "HYPERDRIVE_REMOTE=\"unbalanced'\n",
    )
    config = load(path, environ={})
    assert config.webhook_secret == "It's a secret"
    assert config.headquarters == "https://git.example.com/hq.git#main"
    assert config.remote == "\"unbalanced'", "quotes that do not match are kept"


BAD_VALUES = [
    ("HYPERDRIVE_HTTP_PORT", "0"),
    ("HYPERDRIVE_HTTP_PORT", "70000"),
    ("HYPERDRIVE_HTTP_PORT", "abc"),
    ("HYPERDRIVE_HTTP_PORT", "-1"),
    ("HYPERDRIVE_SSH_LISTEN", "0.0.0.0"),
    ("HYPERDRIVE_SSH_LISTEN", "0.0.0.0:"),
    ("HYPERDRIVE_SSH_LISTEN", ":2222"),
    ("HYPERDRIVE_API_LISTEN", "127.0.0.1:99999"),
    ("HYPERDRIVE_API_LISTEN", "bad host!:8421"),
    ("HYPERDRIVE_DATA", "relative/data"),
    ("HYPERDRIVE_VAR", "var"),
    ("HYPERDRIVE_ADMIRAL_KEYS", "admirals.pub"),
    ("HYPERDRIVE_SUBNET", "10.0.0.0/33"),
    ("HYPERDRIVE_SUBNET", "nonsense"),
    ("HYPERDRIVE_SUBNET", "10.0.0.0/29"),
    ("HYPERDRIVE_SUBNET", "10.0.0.0/30"),
    ("HYPERDRIVE_SUBNET", "10.0.0.1/24"),
    ("HYPERDRIVE_HULL", "ubuntu"),
    ("HYPERDRIVE_KEEP_SHIPS", "-1"),
    ("HYPERDRIVE_KEEP_SHIPS", "many"),
    ("HYPERDRIVE_PARALLEL_DEPLOYS", "0"),
    ("HYPERDRIVE_NAME", "Hyperdrive"),
    ("HYPERDRIVE_NAME", "1st"),
    ("HYPERDRIVE_NAME", "much-too-long-name"),
    ("HYPERDRIVE_DOMAIN", "not a domain"),
    ("HYPERDRIVE_ADMIRAL_USER", "Root User"),
    ("HYPERDRIVE_SHIP_EGRESS", "maybe"),
    ("HYPERDRIVE_SHIP_DNS", "9.9.9.9,dns.example"),
    ("HYPERDRIVE_EVENT_LOOP", "trio"),
]


@pytest.mark.parametrize(("key", "value"), BAD_VALUES)
def test_a_bad_value_names_the_key_and_the_value(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build({key: value})
    message = str(caught.value)
    assert key in message
    assert value in message
    assert "\n" not in message


@pytest.mark.parametrize(("key", "value"), BAD_VALUES[:3])
def test_a_bad_value_from_the_file_stops_load(tmp_path: Path, key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load(conf(tmp_path, f"{key}={value}\n"), environ={})


def test_a_bad_value_from_the_environment_stops_load(tmp_path: Path) -> None:
    path = conf(tmp_path, "HYPERDRIVE_HULL=busybox\n")
    with pytest.raises(ConfigError, match="HYPERDRIVE_HULL='ubuntu'"):
        load(path, environ={"HYPERDRIVE_HULL": "ubuntu"})


def test_good_edge_values_are_accepted() -> None:
    config = build(
        {
            "HYPERDRIVE_HTTP_PORT": "65535",
            "HYPERDRIVE_SSH_LISTEN": "[::1]:0",
            "HYPERDRIVE_API_LISTEN": "localhost:1",
            "HYPERDRIVE_SUBNET": "10.99.0.0/28",
            "HYPERDRIVE_KEEP_SHIPS": "0",
        }
    )
    assert config.http_port == 65535
    assert config.ssh_listen == Listen("::1", 0)
    assert str(config.ssh_listen) == "[::1]:0"
    assert config.api_listen == Listen("localhost", 1)
    assert config.subnet.prefixlen == 28
    assert config.keep_ships == 0


def test_the_event_loop_is_asyncio_unless_asked() -> None:
    assert Config().event_loop == "asyncio"
    assert build({"HYPERDRIVE_EVENT_LOOP": "uvloop"}).event_loop == "uvloop"
    assert build({}).redacted()["HYPERDRIVE_EVENT_LOOP"] == "asyncio"


def test_ship_egress_and_dns() -> None:
    assert Config().ship_egress
    assert Config().ship_dns == ()
    config = build({"HYPERDRIVE_SHIP_EGRESS": "OFF", "HYPERDRIVE_SHIP_DNS": "10.0.0.53, ::1"})
    assert not config.ship_egress
    assert config.ship_dns == ("10.0.0.53", "::1")
    shown = config.redacted()
    assert (shown["HYPERDRIVE_SHIP_EGRESS"], shown["HYPERDRIVE_SHIP_DNS"]) == (
        "off",
        "10.0.0.53,::1",
    )


def test_data_and_var_must_differ() -> None:
    with pytest.raises(ConfigError, match="HYPERDRIVE_DATA"):
        build({"HYPERDRIVE_DATA": "/srv/hd", "HYPERDRIVE_VAR": "/srv/hd"})


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("JUSTTEXT\n", 1),
        ("# fine\nHYPERDRIVE_NAME=ok\nlower=1\n", 3),
        ("HYPERDRIVE_NAME=ok\n\n=value\n", 3),
        ("HYPER DRIVE=1\n", 1),
    ],
)
def test_a_broken_line_names_file_and_line(tmp_path: Path, text: str, line: int) -> None:
    path = conf(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load(path, environ={})
    assert f"{path}:{line}:" in str(caught.value)


def test_unknown_keys_are_warned_about_by_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = conf(tmp_path, "HYPERDRIVE_NAME=ok\nHYPERDRIVE_COLOUR=blue\nFOO=1\n")
    with caplog.at_level(logging.WARNING, logger="hyperdrive.config"):
        config = load(path, environ={})
    assert config.name == "ok"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "HYPERDRIVE_COLOUR" in warnings[0]
    assert "FOO" in warnings[0]
    assert str(path) in warnings[0]


def test_known_keys_raise_no_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="hyperdrive.config"):
        load(conf(tmp_path, "HYPERDRIVE_NAME=ok\n"), environ={"UNRELATED": "1"})
    assert caplog.records == []


def test_redacted_masks_the_webhook_secret() -> None:
    shown = build({"HYPERDRIVE_WEBHOOK_SECRET": "hunter2"}).redacted()
    assert shown["HYPERDRIVE_WEBHOOK_SECRET"] == "********"
    assert "hunter2" not in repr(shown)
    assert shown["HYPERDRIVE_NAME"] == "hyperdrive"
    assert set(shown) == set(configuration.KEYS)
    assert Config().redacted()["HYPERDRIVE_WEBHOOK_SECRET"] == "", "empty stays visibly empty"


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(AttributeError):
        config.name = "other"  # type: ignore[misc]


def run_hd(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hyperdrive", *args],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYPERDRIVE_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def test_hd_with_a_missing_config_exits_3_with_one_line() -> None:
    result = run_hd("--config", "/nope", "status", env=clean_env())
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "/nope" in lines[0]
    assert "Traceback" not in result.stderr


def test_hd_with_a_bad_value_exits_3_naming_the_key(tmp_path: Path) -> None:
    path = conf(tmp_path, "HYPERDRIVE_HTTP_PORT=70000\n")
    result = run_hd("--config", str(path), "status", env=clean_env())
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "HYPERDRIVE_HTTP_PORT" in lines[0]
    assert "70000" in lines[0]


def test_the_hooks_read_back_the_config_they_are_given() -> None:
    from hyperdrive.gitserver import hook_env  # noqa: PLC0415 - what git's hooks get

    config = build({"HYPERDRIVE_SHIP_EGRESS": "off", "HYPERDRIVE_SHIP_DNS": "10.0.0.53,10.0.0.54"})
    env = hook_env(config)
    again = build({k: v for k, v in env.items() if k in KEYS})
    assert again.ship_egress is False
    assert again.ship_dns == config.ship_dns
    assert again.subnet == config.subnet


def test_the_squadrons_guard_and_drain() -> None:
    assert build({}).guard == Guard(60, 20, 20)
    assert build({}).drain_seconds == 30
    assert build({"HYPERDRIVE_GUARD": "30 5 10"}).guard == Guard(30, 5, 10)
    assert not build({"HYPERDRIVE_GUARD": "off"}).guard.on
    assert build({"HYPERDRIVE_GUARD": "off"}).redacted()["HYPERDRIVE_GUARD"] == "off"
    for bad, says in (("60", "guard takes"), ("60 101", "max-5xx-percent"), ("x y", "seconds")):
        with pytest.raises(ConfigError, match=f"HYPERDRIVE_GUARD='{bad}': .*{says}"):
            build({"HYPERDRIVE_GUARD": bad})
