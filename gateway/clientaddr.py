"""The client's network address: the TCP peer, or, behind trusted proxies, the address they forwarded.

A security team investigating an extraction alert asks which addresses an account used; the access log and
alert evidence carry it. Behind a load balancer the TCP peer is the balancer, and the client's address is in
``X-Forwarded-For``, which anyone can also *send*: so the header is read only when the peer is one of
``server.trusted_proxies``, and from the right, skipping every trusted hop (each proxy appends the address it
received the request from), so a client-supplied prefix (``X-Forwarded-For: 1.2.3.4``) is never believed.
This is the algorithm of nginx's ``real_ip_recursive on`` and of Envoy's trusted-hops setting.

Sans-IO: strings in, a string out; the pipeline passes ``request.remote`` and the header value.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_CACHE_MAX = 4096  # distinct peers remembered as trusted or not (a balancer fleet is a handful)


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """CIDRs (or single addresses) to networks; ``ValueError`` names the bad entry."""
    out: list[Network] = []
    for i, v in enumerate(values):
        try:
            out.append(ipaddress.ip_network(v.strip(), strict=False))
        except ValueError as e:
            raise ValueError(f"trusted_proxies[{i}]: {v!r} is not an IP address or CIDR ({e})") from None
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


class ClientAddress:
    """Resolves a request's client address under one ``trusted_proxies`` setting."""

    __slots__ = ("_nets", "_trusted", "enabled")

    def __init__(self, trusted: Iterable[str] = ()) -> None:
        self._nets = parse_networks(trusted)
        self._trusted: dict[str, bool] = {}
        # whether any proxy is trusted (without one, the TCP peer is the answer and no header is read); a plain
        # attribute: the request path reads it on every request
        self.enabled = bool(self._nets)

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
        address of ``forwarded_for`` (its leftmost when every hop is trusted; the peer when it is missing).
        A malformed hop ends the walk at the last well-formed address: a proxy never writes one, so it came
        from the client, and nothing to its left can be believed."""
        if peer is None or not self._nets or not self._is_trusted(peer):
            return peer
        if not forwarded_for:
            return peer
        client = peer
        for hop in reversed(forwarded_for.split(",")):
            a = _address(hop)
            if a is None:
                return client
            client = str(a)
            if not self._is_trusted(client):
                return client
        return client
