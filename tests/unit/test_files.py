"""The one atomic write: old content or new, never half; no temp file left; durable."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from hyperdrive import files
from hyperdrive.files import OutsideTree, read_capped, read_inside, write_atomically


def umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_writes_bytes_or_text_over_the_old_content(tmp_path: Path) -> None:
    target = tmp_path / "records" / "ports.json"  # the folder is made on the way
    write_atomically(target, b"old\n")
    write_atomically(target, "new ✓ \udcff\n")  # surrogate-escaped bytes round-trip
    assert target.read_bytes() == "new ✓ ".encode() + b"\xff\n"
    assert os.listdir(target.parent) == ["ports.json"]


def test_a_failing_write_keeps_the_old_content_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "app.json"
    write_atomically(target, "old")

    def broken_disk(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_disk)
    with pytest.raises(OSError, match="Input/output error"):
        write_atomically(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["app.json"]


def test_a_failing_rename_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    (target / "inside").mkdir(parents=True)  # a folder where the file should go
    with pytest.raises(IsADirectoryError):
        write_atomically(target, "new")
    assert os.listdir(tmp_path) == ["taken"]
    assert os.listdir(target) == ["inside"]


def test_the_file_then_its_folder_are_synced_before_it_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[tuple[bool, str]] = []
    real = os.fsync

    def spy(fd: int) -> None:
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        synced.append((is_dir, (tmp_path / "f").read_text() if is_dir else ""))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    (tmp_path / "f").write_text("old")
    write_atomically(tmp_path / "f", "new")
    assert synced == [(False, ""), (True, "new")]  # the data, then the rename, made durable


def test_mode_is_open_s_default_or_exact_and_owner_is_given(tmp_path: Path) -> None:
    write_atomically(tmp_path / "plain", "x")
    assert stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o666 & ~umask()
    before = os.umask(0o077)
    try:
        write_atomically(tmp_path / "shared", "x", mode=0o644, owner=(os.getuid(), os.getgid()))
    finally:
        os.umask(before)
    info = (tmp_path / "shared").stat()
    assert stat.S_IMODE(info.st_mode) == 0o644  # exact, whatever the umask
    assert (info.st_uid, info.st_gid) == (os.getuid(), os.getgid())


def test_a_symlink_in_the_way_is_replaced_never_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "target").symlink_to(victim)
    write_atomically(tmp_path / "target", "new", mode=0o600)
    assert not (tmp_path / "target").is_symlink()
    assert (tmp_path / "target").read_text() == "new"
    assert victim.read_text() == "keep"


def test_read_capped_refuses_links_and_stops_after_the_limit(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * 100)
    (tmp_path / "link").symlink_to(tmp_path / "big")
    assert read_capped(tmp_path / "big", 10) == b"x" * 11  # one byte more shows "too big"
    assert read_capped(tmp_path / "link", 10) is None
    assert read_capped(tmp_path / "missing", 10) is None
    assert read_capped(tmp_path, 10) is None


def tree(tmp_path: Path) -> tuple[Path, Path]:
    """An app tree and, beside it, a host file the app must never get the daemon to read."""
    (tmp_path / "app" / "deploy").mkdir(parents=True)
    host = tmp_path / "host-secret"
    host.write_text("root:HOSTHASH\n")
    return tmp_path / "app", host


def test_read_inside_reads_a_normal_file_and_none_for_a_missing_one(tmp_path: Path) -> None:
    app, _ = tree(tmp_path)
    (app / "Procfile").write_text("web: x\n")
    assert read_inside(app, "Procfile", 100) == b"web: x\n"
    assert read_inside(app, "nothing", 100) is None
    assert read_inside(app, "deploy", 100) is None  # a folder is not a file


def test_read_inside_refuses_a_link_out_of_the_tree(tmp_path: Path) -> None:
    app, host = tree(tmp_path)
    (app / "Procfile").symlink_to(host)
    (app / "deploy" / "up").symlink_to("../..")
    with pytest.raises(OutsideTree, match="Procfile is a symbolic link"):
        read_inside(app, "Procfile", 100)
    with pytest.raises(OutsideTree):
        read_inside(app, "deploy/up/host-secret", 100)


def test_read_inside_follows_a_link_that_stays_inside(tmp_path: Path) -> None:
    app, _ = tree(tmp_path)
    (app / "deploy" / "Procfile").write_text("web: inside\n")
    (app / "Procfile").symlink_to("deploy/Procfile")
    assert read_inside(app, "Procfile", 100) == b"web: inside\n"


def test_read_inside_is_bounded_at_the_head_or_the_tail(tmp_path: Path) -> None:
    app, _ = tree(tmp_path)
    (app / "app.log").write_bytes(b"a" * 1000 + b"END")
    assert read_inside(app, "app.log", 10) == b"a" * 11  # limit + 1 shows "too big"
    assert read_inside(app, "app.log", 10, tail=True) == b"a" * 8 + b"END"


def test_read_inside_does_not_follow_a_link_swapped_in_after_resolving(tmp_path: Path) -> None:
    app, host = tree(tmp_path)
    (app / "deploy" / "Procfile").symlink_to(host)
    # What a swap between the check and the open leaves: opening beneath the tree never follows.
    with pytest.raises(OSError, match="symbolic links"):
        os.close(files._open_beneath(str(app), "deploy/Procfile"))
