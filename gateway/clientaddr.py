"""The client's network address: the TCP peer, or, behind trusted proxies, the address they forwarded.

A security team investigating an extraction alert asks which addresses an account used; the access log and
alert evidence carry it. Behind a load balancer the TCP peer is the balancer, and the client's address is in
``X-Forwarded-For``, which anyone can also *send*: so the header is read only when the peer is one of
``server.trusted_proxies``, and from the right, skipping every trusted hop (each proxy appends the address it
received the request from), so a client-supplied prefix (``X-Forwarded-For: 1.2.3.4``) is never believed.
This is the algorithm of nginx's ``real_ip_recursive on`` and of Envoy's trusted-hops setting.

``Forwarded`` (RFC 7239) is walked the same way, element by element from the right, reading each element's
``for=`` node, when ``server.client_address_header`` says so. Exactly ONE header is read, the one the
operator's proxies write: which of the two a proxy appended to cannot be seen, and the other one is the
client's own text, whole. With any fixed precedence ("Forwarded wins when present") a client behind an
nginx that writes only X-Forwarded-For would send ``Forwarded: for=1.2.3.4`` and be believed (and the reverse
behind a proxy that writes only Forwarded); nginx's ``real_ip_header`` and Envoy likewise read one header.

Sans-IO: strings in, a string out; the pipeline passes ``request.remote`` and the header value.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable
from typing import Literal

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_CACHE_MAX = 4096  # distinct peers remembered as trusted or not (a balancer fleet is a handful)
Header = Literal["x-forwarded-for", "forwarded"]
HEADERS: dict[Header, str] = {"x-forwarded-for": "X-Forwarded-For", "forwarded": "Forwarded"}


def parse_networks(values: Iterable[str], field: str = "trusted_proxies") -> tuple[Network, ...]:
    """CIDRs (or single addresses) to networks; ``ValueError`` names the bad entry."""
    out: list[Network] = []
    for i, v in enumerate(values):
        try:
            out.append(ipaddress.ip_network(v.strip(), strict=False))
        except ValueError as e:
            raise ValueError(f"{field}[{i}]: {v!r} is not an IP address or CIDR ({e})") from None
    return tuple(out)


def _address(s: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    s = s.strip()
    if s.startswith("[") and "]" in s:  # "[2001:db8::1]:443" (RFC 7239 style, some proxies write it)
        s = s[1:s.index("]")]
    elif s.count(":") == 1:  # "1.2.3.4:5678"
        s = s.split(":", 1)[0]
    try:
        a = ipaddress.ip_address(s)
    except ValueError:
        return None
    if isinstance(a, ipaddress.IPv6Address):
        if a.ipv4_mapped is not None:
            return a.ipv4_mapped  # "::ffff:10.0.0.1" (a dual-stack socket) is 10.0.0.1
        if a.scope_id is not None:
            # "fe80::1%eth0": the zone names an interface of the host that wrote the hop, nothing about the
            # client, and ipaddress takes any text after the "%" ("fe80::1%<img src=x>", 8 KB of it): the address
            # logged and shown on the dashboard is always a plain one
            return ipaddress.IPv6Address(int(a))
    return a


# RFC 7239 §4: a pair is token "=" ( token / quoted-string ); §6: a node is an IPv4 address, a bracketed IPv6
# address, "unknown" or an obfuscated "_identifier", with an optional port (digits or an "_identifier")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# an unquoted value: a token, or a node some proxies write unquoted ([2001:db8::1]:443, 192.0.2.1:80) although
# the RFC wants it quoted; still no quote, space or backslash that a second value could hide behind
_BARE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z:\[\]-]+")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"', re.S)
_QUOTED_PAIR = re.compile(r"\\(.)", re.S)
_PORT = r"(?::(?:[0-9]{1,5}|_[0-9A-Za-z._-]+))?"
# no two quantifiers over the same characters: the header is client text of up to max_header_bytes, and a
# pattern that backtracks ("[" + 2 000 colons took 20 s) would be a denial of service
_V6_NODE = re.compile(r"\[([^\[\]]*)\]" + _PORT)
_V4_NODE = re.compile(r"([0-9.]+)" + _PORT)


def _unquote(v: str) -> str | None:
    """A pair's value (a token, or a quoted-string with its quoted-pairs undone); None when malformed."""
    if v.startswith('"'):
        m = _QUOTED.fullmatch(v)
        return None if m is None else _QUOTED_PAIR.sub(r"\1", m[1])
    return v if _BARE.fullmatch(v) else None


def _node(v: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a ``for=`` node names (its port, obfuscated or not, dropped); None when malformed, e.g. a
    bare IPv6 address: RFC 7239 brackets them, and in "2001:db8::1:80" no one can tell the port."""
    m = _V6_NODE.fullmatch(v)
    if m is not None:  # IPv6 text has two colons at least; "[1.2.3.4:80]" must not pass as an IPv4 with a port
        return _address(m[1]) if m[1].count(":") >= 2 else None
    m = _V4_NODE.fullmatch(v)
    return None if m is None else _address(m[1])


def element_for(element: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | Literal[False] | None:
    """One ``Forwarded`` element's ``for=`` address: an address, None when it names none (``unknown``,
    obfuscated, malformed, no ``for=``, ``for=`` twice), False for an empty element (RFC 9110 §5.6.1: ignored).
    Parameter names are case-insensitive; ``by``, ``proto``, ``host`` and extensions are checked for syntax
    only. Elements are split at every comma and pairs at every semicolon, quoted or not: no node, scheme or
    host holds either, and a quote a client left open cannot swallow the elements its proxies append."""
    element = element.strip(" \t")
    if not element:
        return False
    found: str | None = None
    for pair in element.split(";"):
        name, eq, raw = pair.strip(" \t").partition("=")
        value = _unquote(raw)
        if not eq or value is None or not _TOKEN.fullmatch(name):
            return None
        if name.lower() == "for":
            if found is not None:
                return None  # §4: a parameter MUST NOT occur more than once per element
            found = value
    if found is None or found.lower() == "unknown" or found.startswith("_"):
        return None
    return _node(found)


def replayable_forwarded_for(upstream: str, client: str | None) -> str:
    """The part of an upstream ``X-Forwarded-For`` the client did not write: from the client's own hop (as
    ``ClientAddress.resolve`` found it) rightwards — the hops trusted proxies and the gateway appended. What the
    fingerprint probes replay: a replayed client-written prefix let a backend that is also a client tag its own
    requests and recognise the probes carrying its tag. ``upstream``'s last hop is the TCP peer, always kept."""
    if "," not in upstream:  # a client that sent none (most): the peer alone
        return upstream
    hops = upstream.split(",")
    if client is not None:
        for i in range(len(hops) - 1, -1, -1):
            a = _address(hops[i])
            if a is not None and str(a) == client:
                return ",".join(hops[i:]).strip()
    return hops[-1].strip()


def forwarded_node(peer: str) -> str:
    """``peer`` as a ``for=`` value: IPv6 bracketed and quoted (RFC 7239 §6), IPv4 as a token."""
    return f'"[{peer}]"' if ":" in peer else peer


class ClientAddress:
    """Resolves a request's client address under one ``trusted_proxies`` setting."""

    __slots__ = ("_forwarded", "_nets", "_trusted", "enabled", "header")

    def __init__(self, trusted: Iterable[str] = (), header: Header = "x-forwarded-for") -> None:
        self._nets = parse_networks(trusted)
        self._trusted: dict[str, bool] = {}
        # whether any proxy is trusted (without one, the TCP peer is the answer and no header is read); a plain
        # attribute: the request path reads it on every request
        self.enabled = bool(self._nets)
        self.header = HEADERS[header]  # the request header read (all its lines, joined with ",")
        self._forwarded = header == "forwarded"

    def _is_trusted(self, s: str) -> bool:
        hit = self._trusted.get(s)
        if hit is None:
            a = _address(s)
            hit = a is not None and any(a in n for n in self._nets)
            if len(self._trusted) >= _CACHE_MAX:
                self._trusted.clear()  # forwarded hops are client-chosen strings: never an unbounded cache
            self._trusted[s] = hit
        return hit

    def resolve(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """The client's address: ``peer`` itself unless it is a trusted proxy; then the rightmost untrusted
        address of ``forwarded_for`` (the value of ``self.header``; its leftmost when every hop is trusted; the
        peer when it is missing). A malformed hop ends the walk at the last well-formed address: a proxy never
        writes one, so it came from the client, and nothing to its left can be believed. In ``Forwarded``,
        ``for=unknown``, an obfuscated node and an element without ``for=`` end it the same way: the hop that
        would have named the next address did not, so nothing further left is that proxy's word."""
        if peer is None or not self._nets or not self._is_trusted(peer):
            return peer
        if not forwarded_for:
            return peer
        client = peer
        forwarded = self._forwarded
        for hop in reversed(forwarded_for.split(",")):
            a = element_for(hop) if forwarded else _address(hop)
            if a is False:
                continue  # an empty Forwarded element (RFC 9110 §5.6.1: recipients ignore them)
            if a is None:
                return client
            client = str(a)
            if not self._is_trusted(client):
                return client
        return client
