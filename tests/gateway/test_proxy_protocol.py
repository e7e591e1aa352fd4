"""PROXY protocol on the public listener (gateway/proxyprotocol.py): the header parser (v1 and v2, table-driven)
and the real gateway behind a "load balancer" played by raw sockets that write the header byte for byte."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from gateway.config import ConfigError, parse_config
from gateway.proxyprotocol import V2_SIGNATURE, ProxyHeader, ProxyHeaderError, parse, peer_in
from tests.support.harness import GatewayHandle, app_backend, gateway_config, running_gateway


def v2(cmd: int, fam: int, body: bytes) -> bytes:
    return V2_SIGNATURE + bytes([0x20 | cmd, fam]) + struct.pack("!H", len(body)) + body


def v2_tcp4(src: str, sport: int, tlvs: bytes = b"") -> bytes:
    addr = ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address("10.0.0.1").packed
    return v2(1, 0x11, addr + struct.pack("!HH", sport, 8080) + tlvs)


V6 = ipaddress.IPv6Address("2001:db8::7").packed + ipaddress.IPv6Address("2001:db8::1").packed

PARSED: list[tuple[bytes, ProxyHeader | None]] = [
    (b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 8080\r\nGET", ProxyHeader(("203.0.113.7", 51234), 44)),
    (b"PROXY TCP6 2001:db8::7 2001:db8::1 1 443\r\n", ProxyHeader(("2001:db8::7", 1), 42)),
    (b"PROXY UNKNOWN\r\n", ProxyHeader(None, 15)),
    (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", ProxyHeader(None, 35)),
    (b"PROX", None),  # more bytes needed
    (b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 80", None),
    (b"\r\n\r\n\x00", None),
    (v2_tcp4("198.51.100.9", 40000)[:20], None),
    (v2_tcp4("198.51.100.9", 40000), ProxyHeader(("198.51.100.9", 40000), 28)),
    (v2_tcp4("198.51.100.9", 40000, tlvs=b"\x05\x00\x03abc") + b"POST", ProxyHeader(("198.51.100.9", 40000), 34)),
    (v2(1, 0x21, V6 + struct.pack("!HH", 5, 443)), ProxyHeader(("2001:db8::7", 5), 52)),
    (v2(0, 0x00, b""), ProxyHeader(None, 16)),  # LOCAL: the balancer's own health check
    (v2(1, 0x00, b""), ProxyHeader(None, 16)),  # UNSPEC
    (v2(1, 0x31, b"\x00" * 216), ProxyHeader(None, 232)),  # UNIX sockets: keep the TCP peer
    (v2(1, 0x12, b"\x00" * 12), ProxyHeader(None, 28)),  # UDP over IPv4: keep the TCP peer
    # a balancer on a dual-stack socket names IPv4 clients as IPv4-mapped IPv6 addresses: the IPv4 address, as a
    # dual-stack listener's own peers are written (before: "::ffff:102:304", one client with two addresses)
    (b"PROXY TCP6 ::ffff:203.0.113.7 ::1 1 2\r\n", ProxyHeader(("203.0.113.7", 1), 39)),
    (v2(1, 0x21, ipaddress.IPv6Address("::ffff:198.51.100.9").packed + V6[16:] + struct.pack("!HH", 5, 443)),
     ProxyHeader(("198.51.100.9", 5), 52)),
    (b"PROXY TCP6 fe80::1%eth0 fe80::2 1 2\r\n", ProxyHeader(("fe80::1", 1), 37)),  # the zone is not the client's
]

INVALID: list[tuple[bytes, str]] = [
    (b"GET / HTTP/1.1\r\n", "no PROXY protocol header"),
    (b"PROXY TCP4 203.0.113.7 10.0.0.1 51234\r\n", "expected PROXY TCP4|TCP6"),
    (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "expected PROXY TCP4|TCP6"),
    (b"PROXY TCP4 2001:db8::7 10.0.0.1 1 2\r\n", "not IPv4"),
    (b"PROXY TCP4 evil.example 10.0.0.1 1 2\r\n", "not an IP address"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "port"),
    (b"PROXY TCP4 " + b"1" * 120, "longer than 107"),
    (V2_SIGNATURE + b"\x11\x11\x00\x0c" + b"\x00" * 12, "version 1"),
    (V2_SIGNATURE + b"\x22\x11\x00\x0c" + b"\x00" * 12, "command 2"),
    (v2(1, 0x11, b"\x00" * 8), "IPv4 address block too short"),
    (v2(1, 0x21, b"\x00" * 30), "IPv6 address block too short"),
    (V2_SIGNATURE + b"\x21\x11\xff\xff", "longer than"),
    (b"\r\n\r\n\x00\r\nQUIZ\n\x21\x11\x00\x00", "no PROXY protocol header"),
    (v2(1, 0x51, b"\x00" * 12), "address family 5"),  # values the specification says to reject, not to skip
    (v2(1, 0x13, b"\x00" * 12), "transport 3"),
]


@pytest.mark.parametrize(("raw", "want"), PARSED)
def test_parse(raw: bytes, want: ProxyHeader | None) -> None:
    assert parse(raw) == want


@pytest.mark.parametrize(("raw", "why"), INVALID)
def test_parse_refuses(raw: bytes, why: str) -> None:
    with pytest.raises(ProxyHeaderError, match=why):
        parse(raw)


def test_peer_in() -> None:
    check = peer_in([ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32")])
    assert check("10.1.2.3") and check("::ffff:10.1.2.3") and check("2001:db8::5")
    assert not check("11.0.0.1") and not check("not-an-ip") and not check("2001:db9::1")


def test_config() -> None:
    base: dict[str, Any] = {"models": [{"name": "m", "backends": [{"name": "b", "url": "http://127.0.0.1:1"}]}]}
    with pytest.raises(ConfigError, match=r"proxy_protocol_from\[1\]: 'nope'"):
        parse_config({**base, "server": {"proxy_protocol_from": ["10.0.0.0/8", "nope"]}}, env={})
    with pytest.raises(ConfigError, match="proxy_protocol_from needs plain HTTP"):
        parse_config({**base, "server": {"proxy_protocol_from": ["10.0.0.0/8"], "tls_cert_file": "c.pem",
                                         "tls_key_file": "k.pem"}}, env={})


# --- through the real gateway ---------------------------------------------------------------------------------


def _backend(seen: list[str]) -> web.Application:
    async def chat(request: web.Request) -> web.Response:
        seen.append(request.headers.get("X-Forwarded-For", ""))
        return web.json_response({
            "id": "c", "object": "chat.completion", "created": 0, "model": "sim",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def _exchange(gw: GatewayHandle, prefix: bytes, *, send_request: bool = True, timeout: float = 5.0) -> bytes:
    """Connect as the balancer would, write ``prefix`` then an HTTP request, return all bytes answered."""
    port = int(gw.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps({"model": "sim", "messages": [{"role": "user", "content": "hi"}]}).encode()
    req = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {gw.token('alice')}\r\n"
           f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    writer.write(prefix + (req + body if send_request else b""))
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def _rejected(gw: GatewayHandle, reason: str) -> float:
    v = gw.ctx.metrics.registry.get_sample_value("ipgate_proxy_protocol_rejected_total", {"reason": reason})
    return v or 0.0


@pytest.fixture
async def balanced(request: pytest.FixtureRequest) -> AsyncIterator[tuple[GatewayHandle, list[str]]]:
    seen: list[str] = []
    balancers = getattr(request, "param", ["127.0.0.1"])
    async with app_backend(_backend(seen)) as url, running_gateway(
            gateway_config(url, server={"proxy_protocol_from": balancers})) as gw:
        yield gw, seen


async def test_the_client_named_by_the_balancer_is_the_client(balanced: tuple[GatewayHandle, list[str]]) -> None:
    gw, seen = balanced
    assert (await _exchange(gw, b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 8080\r\n")).startswith(b"HTTP/1.1 200")
    assert (await _exchange(gw, v2_tcp4("198.51.100.9", 40000, b"\x05\x00\x03abc"))).startswith(b"HTTP/1.1 200")
    assert (await _exchange(gw, v2(1, 0x21, V6 + struct.pack("!HH", 5, 443)))).startswith(b"HTTP/1.1 200")
    assert (await _exchange(gw, v2(0, 0, b""))).startswith(b"HTTP/1.1 200")  # LOCAL: the balancer itself
    # the X-Forwarded-For hop the gateway appends upstream is the client's address, not the balancer's
    assert seen == ["203.0.113.7", "198.51.100.9", "2001:db8::7", "127.0.0.1"]


async def test_a_listed_balancer_must_send_a_valid_header(
        balanced: tuple[GatewayHandle, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    gw, seen = balanced
    assert await _exchange(gw, b"") == b""  # a plain request from a balancer: closed, nothing served
    assert await _exchange(gw, b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n") == b""
    assert _rejected(gw, "invalid") == 2
    monkeypatch.setattr("gateway.proxyprotocol.HEADER_TIMEOUT_S", 0.2)
    assert await _exchange(gw, b"PROXY TCP4 1.2.3.4", send_request=False) == b""  # never finished
    assert _rejected(gw, "timeout") == 1
    assert seen == []


async def test_a_health_check_that_sends_nothing_is_not_a_rejection(
        balanced: tuple[GatewayHandle, list[str]]) -> None:
    """Defect: a balancer's TCP health check (connect, close without a byte: AWS NLB, HAProxy ``check``) was
    counted as ``missing``, so the counter grew every few seconds per balancer node on a healthy deployment and
    a rate alert on it could not tell a misconfigured balancer from its health checks. A connection that ended
    within a header still is ``missing``."""
    gw, seen = balanced
    port = int(gw.url.rsplit(":", 1)[1])
    for _ in range(3):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write_eof()  # FIN without a byte
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the gateway closes its side too
        writer.close()
    assert _rejected(gw, "missing") == 0  # before the fix: 3
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"PROXY TCP4 1.2.")
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    assert _rejected(gw, "missing") == 1
    assert sum(_rejected(gw, r) for r in ("invalid", "timeout")) == 0 and seen == []


@pytest.mark.parametrize("balanced", [["10.9.9.9"]], indirect=True)
async def test_a_header_from_anyone_else_is_never_read(balanced: tuple[GatewayHandle, list[str]]) -> None:
    gw, seen = balanced
    spoofed = await _exchange(gw, b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 8080\r\n")
    assert spoofed.split(b" ", 2)[1] == b"400"  # an HTTP syntax error, not an address
    assert (await _exchange(gw, b"")).startswith(b"HTTP/1.1 200")  # served directly, by its TCP peer
    assert seen == ["127.0.0.1"]


async def test_an_ipv4_client_named_in_ipv6_form_is_one_address(balanced: tuple[GatewayHandle, list[str]]) -> None:
    """Defect: a balancer on a dual-stack socket names an IPv4 client as ::ffff:a.b.c.d; the gateway kept it as
    ``::ffff:cb00:7107`` (Python's IPv6 text), so the same client had another address than when it connected
    directly, in the access log, the alert evidence (``ips``, ``address_peers``) and the hop sent upstream."""
    gw, seen = balanced
    mapped = ipaddress.IPv6Address("::ffff:203.0.113.7").packed + V6[16:] + struct.pack("!HH", 5, 443)
    assert (await _exchange(gw, v2(1, 0x21, mapped))).startswith(b"HTTP/1.1 200")
    assert (await _exchange(gw, b"PROXY TCP6 ::ffff:203.0.113.7 ::1 1 2\r\n")).startswith(b"HTTP/1.1 200")
    assert seen == ["203.0.113.7", "203.0.113.7"]
