"""The healing watches' own logic: which kernel lines are faults, what a table lacks, and a
swap that finds the table gone restoring it before it points."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hyperdrive.errors import ProxyError
from hyperdrive.healing import exited, first, touches
from hyperdrive.lxc_async import STATE_LINE
from hyperdrive.proxy import NginxProxy
from hyperdrive.traffic import CHAINS, EGRESS, MAP, OFFERED, StablePorts, table_damage


def line(change: dict[str, Any]) -> bytes:
    return json.dumps(change).encode() + b"\n"


def test_deleting_part_of_our_table_is_a_fault_and_a_swap_is_not() -> None:
    ours = {"family": "ip", "table": "hdt1", "chain": "output", "handle": 3}
    assert touches(line({"delete": {"rule": ours}}), "hdt1")
    assert touches(line({"delete": {"table": {"family": "ip", "name": "hdt1"}}}), "hdt1")
    assert touches(
        line({"delete": {"map": {"family": "ip", "table": "hdt1", "name": MAP}}}), "hdt1"
    )
    assert not touches(line({"delete": {"element": {"family": "ip", "table": "hdt1"}}}), "hdt1")
    assert not touches(line({"add": {"rule": ours}}), "hdt1")
    assert not touches(line({"delete": {"table": {"family": "ip", "name": "other"}}}), "hdt1")
    assert not touches(line({"delete": {"table": {"family": "inet", "name": "hdt1"}}}), "hdt1")
    assert not touches(b"not json\n", "hdt1")
    assert not touches(b"[1, 2]\n", "hdt1")


def whole_listing(table: str) -> dict[str, Any]:
    items: list[dict[str, Any]] = [{"metainfo": {}}, {"table": {"family": "ip", "name": table}}]
    items += [{"map": {"name": MAP}}, {"map": {"name": EGRESS}}, {"set": {"name": OFFERED}}]
    items += [{"chain": {"name": c}} for c in CHAINS]
    items += [{"rule": {"chain": c, "expr": []}} for c in CHAINS]
    return {"nftables": items}


def test_table_damage_names_what_is_missing() -> None:
    listing = whole_listing("hdt1")
    assert table_damage(listing, "hdt1") == ""
    flushed = {"nftables": [i for i in listing["nftables"] if "rule" not in i]}
    said = table_damage(flushed, "hdt1")
    assert said.startswith("nft table ip hdt1 lost its output rules, prerouting rules")
    no_map = {"nftables": [i for i in listing["nftables"] if i.get("map", {}).get("name") != MAP]}
    assert table_damage(no_map, "hdt1") == f"nft table ip hdt1 lost its {MAP} set"


class GoneTable:
    """A Traffic whose table someone deleted, until it is ensured again."""

    table = "hdt1"

    def __init__(self) -> None:
        self.map: dict[int, tuple[str, int]] | None = None

    async def point(self, port: int, ip: str, ship_port: int) -> None:
        if self.map is None:
            raise ProxyError("cannot read nft map hdt1 app_backends: No such file or directory")
        self.map[port] = (ip, ship_port)

    async def point_all(self, targets: dict[int, tuple[str, int]]) -> None:
        assert self.map is not None
        self.map.update(targets)

    async def damage(self) -> str:
        return "" if self.map is not None else "nft table ip hdt1 is missing"

    async def ensure_table(self) -> None:
        self.map = self.map if self.map is not None else {}

    async def current(self) -> dict[int, tuple[str, int]]:
        return dict(self.map or {})


async def test_a_swap_that_finds_the_table_gone_restores_it_then_points(tmp_path: Path) -> None:
    traffic = GoneTable()
    ports = StablePorts(tmp_path / "ports.json")
    proxy = NginxProxy(None, traffic, ports, "10.0.0.1")  # type: ignore[arg-type]
    healed: list[str] = []

    async def on_lost(cause: str) -> None:
        healed.append(cause)
        await proxy.restore({"other": ("10.0.0.7", 3000), "web": ("10.0.0.5", 3000)})

    proxy.on_lost = on_lost
    await proxy.point("web", "10.0.0.9", 3000)
    assert healed == ["found at the swap of web"]
    assert traffic.map == {
        ports.port("other"): ("10.0.0.7", 3000),
        ports.port("web"): ("10.0.0.9", 3000),
    }


async def test_a_swap_with_the_table_whole_raises_what_nft_said(tmp_path: Path) -> None:
    traffic = GoneTable()
    await traffic.ensure_table()
    proxy = NginxProxy(None, traffic, StablePorts(tmp_path / "p.json"), "10.0.0.1")  # type: ignore[arg-type]

    async def fails(port: int, ip: str, ship_port: int) -> None:
        raise ProxyError("nft refused")

    traffic.point = fails  # type: ignore[method-assign]
    proxy.on_lost = lambda cause: asyncio.sleep(0)
    with pytest.raises(ProxyError, match="nft refused"):
        await proxy.point("web", "10.0.0.9", 3000)


async def test_exited_returns_when_any_process_ends() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
    await asyncio.wait_for(exited(child.pid), 10)
    child.wait(5)
    await asyncio.wait_for(exited(2**22 + 7), 1)  # no such process: at once
    assert os.getpid() > 0


def test_lxc_monitor_lines_name_the_container_and_its_state() -> None:
    said = STATE_LINE.fullmatch("'hdt1-web-abc1234' changed state to [STOPPED]")
    assert said is not None
    assert (said["name"], said["state"]) == ("hdt1-web-abc1234", "STOPPED")
    assert STATE_LINE.fullmatch("lxc-monitor: something else") is None


async def test_first_returns_with_the_first_and_says_what_went_wrong_in_it() -> None:
    never = asyncio.Event()
    await asyncio.wait_for(first(asyncio.sleep(0), never.wait()), 5)

    async def fails() -> None:
        raise OSError("pidfd_open: too many open files")

    with pytest.raises(OSError, match="too many open files"):
        await first(fails(), never.wait())
