"""The PROXY protocol (HAProxy's, versions 1 and 2) on the public listener.

Behind a layer-4 load balancer (AWS NLB, GCP's TCP/SSL proxy, HAProxy in TCP mode, Envoy) every connection comes
from the balancer's address, so the client address the gateway records — access log, alert evidence (``ips``,
``address_peers``), traces, the ``X-Forwarded-For`` hop sent upstream — was the balancer's, the same for every
client (and ``address_peers`` then linked every account to every other). Such balancers can prepend the client's
address to each connection in a PROXY protocol header instead (there is no HTTP layer to carry
``X-Forwarded-For``).

``server.proxy_protocol_from`` names the balancers (CIDRs or addresses). A connection from one of them **must**
start with a valid header within ``HEADER_TIMEOUT_S``; it is closed otherwise (a balancer configured without the
header would otherwise hand every client its own address). A connection from anywhere else is served as it
is, its TCP peer its address: a header from an address not listed is never read (a client could name any
address), and its ``PROXY`` line is an HTTP syntax error (400). ``LOCAL`` (v2) and ``UNKNOWN`` (v1) headers, the
balancer's own health checks, keep the TCP peer; a connection closed before its first byte (a TCP health check)
is closed without being counted as a rejection. The header is read before TLS: with ``tls_cert_file`` set on
the gateway the handshake would follow it, which this module does not do (refused at start-up; terminate TLS on
the balancer, or send no header).

``parse`` is sans-IO (bytes in, a header or "need more" out); ``ProxyProtocolSite`` is the aiohttp site that puts
a gate in front of aiohttp's own protocol and hands the connection over once the header is read, with a
transport whose ``peername`` is the client's (``request.remote`` reads it).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.clientaddr import Network

log = logging.getLogger(__name__)

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest v1 line, CRLF included (the specification's bound)
V2_MAX = 16 + 4096  # addresses plus TLVs; balancers send well under 1 KiB (AWS: a few TLVs)
HEADER_TIMEOUT_S = 5.0  # a balancer sends the header at once, with the connection

Address = tuple[str, int]


class ProxyHeaderError(ValueError):
    """Not a valid PROXY protocol header (the message says what is wrong)."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    source: Address | None  # the client's address and port; None: LOCAL/UNKNOWN (keep the TCP peer)
    length: int  # bytes of the header, to strip before the HTTP stream


def parse(buf: bytes) -> ProxyHeader | None:
    """The header at the start of ``buf``; None while more bytes are needed; ``ProxyHeaderError`` if invalid."""
    n = min(len(buf), len(V2_SIGNATURE))
    if buf[:n] == V2_SIGNATURE[:n]:
        return _parse_v2(buf) if len(buf) >= 16 else None
    n = min(len(buf), len(V1_PREFIX))
    if buf[:n] == V1_PREFIX[:n]:
        return _parse_v1(buf) if len(buf) > n else None
    raise ProxyHeaderError("no PROXY protocol header")


def _parse_v1(buf: bytes) -> ProxyHeader | None:
    end = buf.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(buf) >= V1_MAX:
            raise ProxyHeaderError(f"v1 header longer than {V1_MAX} bytes")
        return None
    parts = buf[:end].split(b" ")
    if len(parts) >= 2 and parts[1] == b"UNKNOWN":
        return ProxyHeader(None, end + 2)
    if len(parts) != 6 or parts[1] not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError("v1 header: expected PROXY TCP4|TCP6 SRC DST SPORT DPORT")
    try:
        src = ipaddress.ip_address(parts[2].decode("ascii"))
        dst = ipaddress.ip_address(parts[3].decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProxyHeaderError("v1 header: an address is not an IP address") from None
    want = 4 if parts[1] == b"TCP4" else 6
    if src.version != want or dst.version != want:
        raise ProxyHeaderError(f"v1 header: addresses are not IPv{want}")
    sport = _port(parts[4])
    _port(parts[5])  # validated, not used: the gateway knows its own address
    return ProxyHeader((_client(src), sport), end + 2)


def _client(a: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The client's address as the rest of the gateway writes it (``clientaddr``): an IPv4-mapped IPv6 address
    (a balancer on a dual-stack socket sends IPv4 clients so, in v1 and v2) is its IPv4 address, and a zone
    (``fe80::1%eth0``, v1 text: an interface of the balancer's host) is dropped. Kept as written, one client had
    two addresses in the access log and alert evidence (``::ffff:102:304`` and ``1.2.3.4``), and the zone's text
    went upstream in ``X-Forwarded-For``."""
    if isinstance(a, ipaddress.IPv6Address):
        if a.ipv4_mapped is not None:
            return str(a.ipv4_mapped)
        if a.scope_id is not None:
            return str(ipaddress.IPv6Address(int(a)))
    return str(a)


def _port(raw: bytes) -> int:
    if not raw.isdigit() or len(raw) > 5 or (len(raw) > 1 and raw[:1] == b"0") or int(raw) > 65535:
        raise ProxyHeaderError("v1 header: a port is not a number in 0-65535")
    return int(raw)


def _parse_v2(buf: bytes) -> ProxyHeader | None:
    if buf[:12] != V2_SIGNATURE:
        raise ProxyHeaderError("no PROXY protocol header")
    ver_cmd, fam = buf[12], buf[13]
    if ver_cmd >> 4 != 2:
        raise ProxyHeaderError(f"v2 header: version {ver_cmd >> 4}")
    length = int.from_bytes(buf[14:16], "big")
    total = 16 + length
    if total > V2_MAX:
        raise ProxyHeaderError(f"v2 header longer than {V2_MAX} bytes")
    if len(buf) < total:
        return None
    cmd = ver_cmd & 0x0F
    if cmd == 0:  # LOCAL: the balancer's own connection (health checks)
        return ProxyHeader(None, total)
    if cmd != 1:
        raise ProxyHeaderError(f"v2 header: command {cmd}")
    family, proto = fam >> 4, fam & 0x0F
    body = buf[16:total]
    if proto == 1 and family == 1:  # TCP over IPv4
        if length < 12:
            raise ProxyHeaderError("v2 header: IPv4 address block too short")
        return ProxyHeader((_client(ipaddress.IPv4Address(body[:4])), int.from_bytes(body[8:10], "big")), total)
    if proto == 1 and family == 2:  # TCP over IPv6
        if length < 36:
            raise ProxyHeaderError("v2 header: IPv6 address block too short")
        return ProxyHeader((_client(ipaddress.IPv6Address(body[:16])), int.from_bytes(body[32:34], "big")), total)
    if family > 3 or proto > 2:  # the specification: other values "must be rejected as invalid by receivers"
        raise ProxyHeaderError(f"v2 header: address family {family}, transport {proto}")
    return ProxyHeader(None, total)  # UNSPEC, UNIX or datagram: the specification says to use the real peer


def peer_in(networks: Iterable[Network]) -> Callable[[str], bool]:
    """Whether a TCP peer's host is in ``networks`` (an IPv4-mapped IPv6 peer as its IPv4 address)."""
    nets = tuple(networks)

    def check(host: str) -> bool:
        try:
            a = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
            a = a.ipv4_mapped
        return any(a in n for n in nets)

    return check


class _ClientPeer:
    """The transport aiohttp is given once a header named the client: ``peername`` is the client's, everything
    else is the real transport's (the event loop keeps talking to the real one)."""

    __slots__ = ("_peer", "_transport")

    def __init__(self, transport: asyncio.Transport, peer: Address) -> None:
        self._transport = transport
        self._peer = peer

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peer
        return self._transport.get_extra_info(name, default)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Gate(asyncio.Protocol):
    """Reads the header of a connection from a trusted balancer, then hands the connection to aiohttp."""

    def __init__(self, inner: Callable[[], asyncio.Protocol], trusted: Callable[[str], bool],
                 rejected: Callable[[str], None]) -> None:
        self._inner = inner
        self._trusted = trusted
        self._rejected = rejected
        self._transport: asyncio.Transport | None = None
        self._buf = b""
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        if not (isinstance(peer, tuple) and self._trusted(str(peer[0]))):
            self._hand_over(transport, b"")  # not a listed balancer: served as it is, by its TCP peer
            return
        self._timer = asyncio.get_running_loop().call_later(HEADER_TIMEOUT_S, self._reject, "timeout")

    def data_received(self, data: bytes) -> None:
        self._buf += data
        try:
            header = parse(self._buf)
        except ProxyHeaderError as e:
            self._reject("invalid", str(e))
            return
        if header is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        assert self._transport is not None
        t: Any = self._transport if header.source is None else _ClientPeer(self._transport, header.source)
        self._hand_over(t, self._buf[header.length:])

    def eof_received(self) -> bool:
        if not self._buf:
            # Not a byte: a balancer's TCP health check (AWS NLB, HAProxy `check`, GCP connect and close at once,
            # every few seconds per balancer node). Not a rejection: counted as one, `missing` grew for ever on a
            # healthy deployment and buried a balancer that really sends no header (that one sends HTTP: invalid).
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            log.debug("PROXY protocol: connection from %s closed before a byte (a TCP health check)",
                      self._transport.get_extra_info("peername") if self._transport is not None else None)
            return False  # the transport closes
        self._reject("missing", "the connection ended before the end of a header")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _hand_over(self, transport: Any, rest: bytes) -> None:
        assert self._transport is not None
        inner = self._inner()
        self._transport.set_protocol(inner)
        inner.connection_made(transport)
        if rest:
            inner.data_received(rest)

    def _reject(self, reason: str, detail: str = "") -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None and not self._transport.is_closing():
            peer = self._transport.get_extra_info("peername")
            self._rejected(reason)
            log.debug("PROXY protocol: connection from %s closed (%s%s)", peer, reason, f": {detail}" if detail else "")
            self._transport.abort()


class ProxyProtocolSite(web.TCPSite):
    """``web.TCPSite`` whose connections from ``trusted`` addresses start with a PROXY protocol header."""

    __slots__ = ("_rejected", "_trusted")

    def __init__(self, runner: web.BaseRunner, host: str | None, port: int | None, *,
                 trusted: Callable[[str], bool], rejected: Callable[[str], None], **kw: Any) -> None:
        super().__init__(runner, host, port, **kw)
        self._trusted = trusted
        self._rejected = rejected

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner (what TCPSite.start does first)
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Gate(server, self._trusted, self._rejected), self._host, self._port,
            backlog=self._backlog, reuse_address=self._reuse_address, reuse_port=self._reuse_port)
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port
