"""`hd doctor`'s admirals check: nobody able to log in is a failure with a fix line."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import asyncssh

from hyperdrive.cli import _remember_headquarters
from hyperdrive.config import Config
from hyperdrive.doctor import check_admirals, check_modes, check_privileged_ships, check_ship_ids
from hyperdrive.modes import tighten


def _pub() -> str:
    return asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()


def test_no_admiral_key_anywhere_fails_with_a_fix(tmp_path: Path) -> None:
    config = Config(data=tmp_path / "data", var=tmp_path / "var", admiral_keys=tmp_path / "a.pub")
    (tmp_path / "a.pub").write_text("# add your key here\nnot a key\n")
    check = check_admirals(config, daemon_up=False)
    assert not check.ok
    assert check.fix == (
        f"no admiral can log in: add a public key to {tmp_path / 'a.pub'} (it applies at once)"
    )


def test_bootstrap_and_hq_keys_on_disk_count_once_each(tmp_path: Path) -> None:
    config = Config(data=tmp_path / "data", var=tmp_path / "var", admiral_keys=tmp_path / "a.pub")
    shared, other = _pub(), _pub()
    (tmp_path / "a.pub").write_text(shared)
    keys = tmp_path / "var" / "public_keys"
    keys.mkdir(parents=True)
    (keys / "alice.pub").write_text(shared + other)
    check = check_admirals(config, daemon_up=False)
    assert check.ok
    assert check.detail == "2 admiral key(s) on disk"


def _modes_config(tmp_path: Path) -> Config:
    conf = tmp_path / "main.conf"
    conf.write_text("HYPERDRIVE_WEBHOOK_SECRET=s3cret\n")
    config = Config(data=tmp_path / "data", var=tmp_path / "var", source=conf)
    for folder in (config.data, config.var, config.spool_dir, config.records_dir):
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o750)
    os.chmod(conf, 0o600)
    return config


def test_a_world_readable_main_conf_is_named_with_its_chmod(tmp_path: Path) -> None:
    config = _modes_config(tmp_path)
    os.chmod(tmp_path / "main.conf", 0o644)
    check = check_modes(config)
    assert not check.ok
    assert check.detail == f"too open: {tmp_path / 'main.conf'} is 0644 (at most 0600)"
    assert check.fix == f"chmod 0600 {tmp_path / 'main.conf'}"


def test_open_data_and_folders_are_reported_and_tighten_closes_them(tmp_path: Path) -> None:
    config = _modes_config(tmp_path)
    config.events_file.write_text("{}\n")
    os.chmod(config.events_file, 0o644)
    os.chmod(config.spool_dir, 0o755)
    check = check_modes(config)
    assert not check.ok
    assert f"{config.events_file} is 0644 (at most 0640)" in check.detail
    assert f"chmod 0640 {config.events_file}" in check.fix
    assert f"chmod 0750 {config.spool_dir}" in check.fix
    tighten(config)
    assert check_modes(config).ok
    assert stat.S_IMODE(config.events_file.stat().st_mode) == 0o640


def test_tight_modes_pass(tmp_path: Path) -> None:
    config = _modes_config(tmp_path)
    os.chmod(config.data, 0o751)
    os.chmod(config.var, 0o700)
    assert check_modes(config).ok


def test_hd_headquarters_set_keeps_main_conf_private(tmp_path: Path) -> None:
    config = _modes_config(tmp_path)
    os.chmod(tmp_path / "main.conf", 0o644)
    _remember_headquarters(config, "https://deploy:TOKEN@forge.example/hq.git")
    assert stat.S_IMODE((tmp_path / "main.conf").stat().st_mode) == 0o600
    text = (tmp_path / "main.conf").read_text()
    assert "HYPERDRIVE_WEBHOOK_SECRET=s3cret\n" in text
    assert text.endswith("HYPERDRIVE_HEADQUARTERS=https://deploy:TOKEN@forge.example/hq.git\n")


def test_ship_ids_say_which_range_ships_run_as_or_how_to_reserve_one(tmp_path: Path) -> None:
    # folders not made yet: nothing above them blocks (pytest's own temp folders are 0700)
    config = Config(data=Path("/nonexistent/data"), var=Path("/nonexistent/var"))
    subuid, subgid = tmp_path / "subuid", tmp_path / "subgid"
    check = check_ship_ids(config, subuid, subgid)
    assert not check.ok
    assert check.fix.startswith("usermod --add-subuids 100000-165535 --add-subgids 100000-165535")
    for path in (subuid, subgid):
        path.write_text("root:100000:65536\n")
    check = check_ship_ids(config, subuid, subgid)
    assert check.ok, check
    assert check.detail == "ships run as uids 100000-165535 on this host"


def test_ships_made_privileged_by_an_older_version_are_named(tmp_path: Path) -> None:
    config = Config(data=tmp_path / "data", var=tmp_path / "var")
    for name, text in (
        ("hd-hull-busybox-1", "lxc.rootfs.path = dir:/x\n"),  # a hull: rebuilt at first use
        ("hd-web-1", "lxc.rootfs.path = overlay:/a:/b\n"),
        ("hd-web-2", "lxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 65536\n"),
    ):
        (config.containers_dir / name).mkdir(parents=True)
        (config.containers_dir / name / "config").write_text(text)
    check = check_privileged_ships(config)
    assert not check.ok
    assert check.detail == "privileged (made by an older version): hd-web-1"
    (config.containers_dir / "hd-web-1" / "config").unlink()
    assert check_privileged_ships(config).ok
