"""The ships' DNS in wire format, with dnspython: parse a query, answer an app's name, relay
the rest. `hyperdrive.shipdns` loads it at the first query, so a daemon whose ships ask
nothing never holds dnspython (~2 MB)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

log = logging.getLogger(__name__)

UPSTREAM_TIMEOUT_S = 2.0
LOCAL_TTL = 5


def parse(wire: bytes) -> dns.message.Message | None:
    """The query in `wire`; None for what is not a DNS message at all."""
    try:
        return dns.message.from_wire(wire)
    except dns.exception.DNSException:
        return None


def malformed(query: dns.message.Message) -> bytes | None:
    """FORMERR for a response or a message that does not ask exactly one question."""
    if query.flags & dns.flags.QR or len(query.question) != 1:
        return reply(query, dns.rcode.FORMERR)
    return None


def local(query: dns.message.Message, names: Iterable[str], address: str) -> bytes | None:
    """An app's name: `address` for A, an empty answer for other types; None for other names."""
    question = query.question[0]
    name = question.name.to_text(omit_final_dot=True).lower()
    if name not in {n.lower() for n in names}:
        return None
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA | dns.flags.RA
    if question.rdtype == dns.rdatatype.A:
        rrset = dns.rrset.from_text(question.name, LOCAL_TTL, "IN", "A", address)
        response.answer.append(rrset)
    return response.to_wire()


async def relay(query: dns.message.Message, upstreams: Sequence[str], tcp: bool) -> bytes:
    """Ask each upstream in turn; SERVFAIL when none answers in time."""
    for upstream in upstreams:
        try:
            if tcp:
                got = await dns.asyncquery.tcp(query, upstream, timeout=UPSTREAM_TIMEOUT_S)
            else:
                got = await dns.asyncquery.udp(
                    query, upstream, timeout=UPSTREAM_TIMEOUT_S, ignore_trailing=True
                )
        except (dns.exception.DNSException, OSError) as err:
            log.debug("upstream %s: %s", upstream, err)
            continue
        return got.to_wire()
    return reply(query, dns.rcode.SERVFAIL)


def query_a(host: str) -> dns.message.Message:
    """A query for `host`'s IPv4 addresses."""
    return dns.message.make_query(host, dns.rdatatype.A)


def a_records(wire: bytes) -> list[str]:
    """The IPv4 addresses in the answer section of a reply."""
    answer = dns.message.from_wire(wire).answer
    return sorted({r.to_text() for rrset in answer for r in rrset if r.rdtype == 1})


def reply(query: dns.message.Message, rcode: dns.rcode.Rcode) -> bytes:
    """An empty response to `query` with `rcode`."""
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    return response.to_wire()
