"""The ships' DNS forwarder's answers, without binding port 53: app names locally, the rest
relayed (SERVFAIL when no upstream answers), garbage ignored."""

from __future__ import annotations

from pathlib import Path

import dns.flags
import dns.message
import dns.rcode

from hyperdrive.shipdns import ShipDns, app_names, host_resolvers


def ask(name: str, kind: str = "A") -> bytes:
    return dns.message.make_query(name, kind).to_wire()


async def test_app_names_answer_with_the_bridge_address() -> None:
    ships = ShipDns("10.213.0.1", lambda: {"web.example.com"})
    reply = dns.message.from_wire(await ships.answer(ask("WEB.example.com.")) or b"")
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA
    assert [r.to_text() for rrset in reply.answer for r in rrset] == ["10.213.0.1"]
    empty = dns.message.from_wire(await ships.answer(ask("web.example.com", "AAAA")) or b"")
    assert (empty.rcode(), empty.answer) == (dns.rcode.NOERROR, [])
    assert await ships.addresses("web.example.com") == ["10.213.0.1"]


async def test_no_upstream_answering_is_servfail_and_garbage_gets_nothing() -> None:
    ships = ShipDns("10.213.0.1", set, ["127.0.0.9"])  # nothing listens there
    reply = dns.message.from_wire(await ships.answer(ask("example.invalid")) or b"")
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert await ships.answer(b"\x00\x01garbage") is None
    assert await ships.addresses("example.invalid") == []


def test_names_and_resolvers(tmp_path: Path) -> None:
    assert app_names([("web", ["A.example"]), ("api", [])], "ships.example") == {
        "a.example",
        "web.ships.example",
        "api.ships.example",
    }
    assert app_names([("web", ["a.example"])], "") == {"a.example"}
    conf = tmp_path / "resolv.conf"
    conf.write_text("# comment\nnameserver 127.0.0.53\noptions edns0\nnameserver 9.9.9.9\n")
    assert host_resolvers(conf) == ["127.0.0.53", "9.9.9.9"]
    assert host_resolvers(tmp_path / "absent") == []
