"""The ships' id range: reading /etc/subuid, choosing a free range, who may pass a folder."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hyperdrive.idmap import SIZE, IdMap, for_ships, free_start, owned, ranges

IDS = IdMap(100000, 200000)


def test_subid_files_are_read_by_name_and_odd_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "subuid"
    path.write_text("alice:100000:65536\nroot:165536:65536\n# note\nbroken\nroot:1:2\n")
    assert ranges(path) == {"alice": [(100000, 65536)], "root": [(165536, 65536), (1, 2)]}
    assert owned(path) == 165536
    assert owned(tmp_path / "missing") is None


def test_a_range_too_small_is_not_roots() -> None:
    assert free_start([]) == 100000


@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 10**5)), max_size=8))
def test_a_free_range_overlaps_nothing_taken(taken: list[tuple[int, int]]) -> None:
    start = free_start(taken)
    assert start >= 100000
    for begin, count in taken:
        assert start + SIZE <= begin or begin + count <= start


def test_roots_existing_range_is_used_without_usermod(tmp_path: Path) -> None:
    for name in ("subuid", "subgid"):
        (tmp_path / name).write_text("root:300000:65536\n")
    assert for_ships(tmp_path / "subuid", tmp_path / "subgid") == IdMap(300000, 300000)


def test_lxc_sees_the_map_in_its_own_words() -> None:
    assert IDS.lxc_lines() == (
        "lxc.idmap = u 0 100000 65536",
        "lxc.idmap = g 0 200000 65536",
    )


def test_a_trees_ids_land_in_the_range_and_ids_already_there_stay() -> None:
    assert IDS.host(0, 0) == (100000, 200000)
    assert IDS.host(65534, 33) == (165534, 200033)
    assert IDS.host(100005, 200007) == (100005, 200007)
    assert IDS.inside(100000, 200000)
    assert not IDS.inside(0, 200000)


def stat_of(mode: int, uid: int = 0, gid: int = 0) -> os.stat_result:
    return os.stat_result((stat.S_IFDIR | mode, 0, 0, 2, uid, gid, 0, 0, 0, 0))


@pytest.mark.parametrize(
    ("mode", "uid", "gid", "passes"),
    [
        (0o700, 0, 0, False),
        (0o751, 0, 0, True),
        (0o750, 0, 200000, True),
        (0o700, 100000, 0, True),
        (0o605, 100000, 0, False),  # the owner's bits decide for the owner
    ],
)
def test_who_may_pass_a_folder(mode: int, uid: int, gid: int, passes: bool) -> None:
    assert IDS.can_pass(stat_of(mode, uid, gid)) is passes
