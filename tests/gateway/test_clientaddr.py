"""The client's address behind trusted proxies (gateway/clientaddr.py): the TCP peer unless it is trusted,
then the rightmost untrusted X-Forwarded-For hop; a client's own header is never believed."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.clientaddr import ClientAddress, parse_networks

LB = ["10.0.0.0/8", "fd00::/8"]


@pytest.mark.parametrize(
    ("trusted", "peer", "xff", "expected"),
    [
        # no trusted proxies: the header is never read
        ([], "203.0.113.7", "1.2.3.4", "203.0.113.7"),
        ([], None, "1.2.3.4", None),
        # an untrusted peer sending its own header: ignored (the spoof)
        (LB, "203.0.113.7", "1.2.3.4", "203.0.113.7"),
        # behind one balancer
        (LB, "10.1.2.3", "198.51.100.9", "198.51.100.9"),
        (LB, "10.1.2.3", None, "10.1.2.3"),
        (LB, "10.1.2.3", "", "10.1.2.3"),
        # a client-supplied prefix before what the balancer appended: the rightmost untrusted hop wins
        (LB, "10.1.2.3", "1.2.3.4, 198.51.100.9", "198.51.100.9"),
        # two trusted hops (CDN -> balancer), both skipped
        (LB, "10.1.2.3", "198.51.100.9, 10.9.9.9", "198.51.100.9"),
        # every hop trusted: the leftmost (an internal client)
        (LB, "10.1.2.3", "10.7.7.7, 10.9.9.9", "10.7.7.7"),
        # a malformed hop: the walk stops at the last well-formed address to its right
        (LB, "10.1.2.3", "198.51.100.9, garbage, 10.9.9.9", "10.9.9.9"),
        (LB, "10.1.2.3", "unknown", "10.1.2.3"),
        # ports, brackets, IPv6, IPv4-mapped peers of dual-stack sockets
        (LB, "10.1.2.3", "198.51.100.9:4711", "198.51.100.9"),
        (LB, "10.1.2.3", "[2001:db8::5]:443", "2001:db8::5"),
        (LB, "fd00::1", "2001:db8::5", "2001:db8::5"),
        (LB, "::ffff:10.1.2.3", "198.51.100.9", "198.51.100.9"),
        (LB, "10.1.2.3", "::ffff:198.51.100.9", "198.51.100.9"),
        # single addresses as trusted entries
        (["127.0.0.1"], "127.0.0.1", "198.51.100.9", "198.51.100.9"),
        (["127.0.0.1"], "127.0.0.2", "198.51.100.9", "127.0.0.2"),
    ],
)
def test_resolve(trusted: list[str], peer: str | None, xff: str | None, expected: str | None) -> None:
    assert ClientAddress(trusted).resolve(peer, xff) == expected


def test_bad_entries_are_named() -> None:
    with pytest.raises(ValueError, match=r"trusted_proxies\[1\]: '10.0.0.0/33'"):
        parse_networks(["10.0.0.0/8", "10.0.0.0/33"])
    with pytest.raises(ValueError, match=r"trusted_proxies\[0\]: 'lb.internal'"):
        parse_networks(["lb.internal"])


def test_the_trust_cache_is_bounded() -> None:
    ca = ClientAddress(LB)
    for i in range(10_000):  # client-chosen hop strings
        ca.resolve("10.0.0.1", f"10.{i % 250}.{i // 250}.1, x{i}")
    assert len(ca._trusted) <= 4096


_HOP = st.one_of(st.text(max_size=40), st.ip_addresses().map(str),
                 st.builds(lambda a, z: f"{a}%{z}", st.ip_addresses(v=6).map(str), st.text(max_size=20)))


@given(peer=st.one_of(st.none(), st.sampled_from(["10.0.0.1", "::1", "::ffff:10.0.0.1"]), st.text(max_size=60)),
       xff=st.one_of(st.none(), st.lists(_HOP, max_size=6).map(", ".join), st.text(max_size=300)))
@settings(max_examples=400, deadline=None)
def test_resolve_never_raises_and_returns_an_address_or_the_peer(peer: str | None, xff: str | None) -> None:
    """Whatever the header holds (client-written), the answer is the peer or a plain, normalised address."""
    got = ClientAddress(["0.0.0.0/0", "::/0"] if peer else []).resolve(peer, xff)
    if got is not None and got != peer:
        assert str(ipaddress.ip_address(got)) == got and "%" not in got
