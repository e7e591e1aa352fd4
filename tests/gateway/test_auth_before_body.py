"""A request's credential is checked before its body is read: an anonymous client must not make the gateway hold
its body. Real parts: the in-process gateway, a real aiohttp backend, raw sockets as the clients."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

from tests.support.harness import app_backend, body_size_backend, gateway_config, running_gateway


async def _open(url: str, head: bytes, body: bytes) -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", int(url.rsplit(":", 1)[1])))
    await loop.sock_sendall(sock, head + body)
    return sock


async def _answer(sock: socket.socket, timeout_s: float) -> bytes:
    loop = asyncio.get_running_loop()
    got = b""
    while b"}}" not in got:
        part = await asyncio.wait_for(loop.sock_recv(sock, 65536), timeout_s)
        if not part:
            break
        got += part
    return got


async def test_a_request_without_a_valid_credential_is_refused_before_its_body_is_read() -> None:
    """Defect: the body was read whole before the credential was checked, so a client with no credential (or a
    wrong one) that declared a 4 MiB body and sent all but its last byte made the gateway hold those bytes for up
    to the 60 s body deadline, then came back: a thousand such connections held 4 GB of the gateway's memory
    before a single credential was looked at (``bench/slow_clients.py``). Now the 401 comes as soon as the headers
    are in, and the body is never buffered."""
    seen: list[int] = []
    async with app_backend(body_size_backend(seen)) as url, running_gateway(gateway_config(url)) as gw:
        size = 4 * 1024 * 1024
        socks = []
        try:
            for auth in (b"", b"Authorization: Bearer not-a-token\r\n"):
                head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                        + auth + f"Content-Length: {size}\r\n\r\n".encode())
                socks.append(await _open(gw.url, head, b'{"model": "sim", "messages": [' + b" " * 200_000))
            t0 = time.monotonic()
            for sock in socks:  # before the fix: no answer until the 60 s body deadline (a 408)
                got = await _answer(sock, 5)
                assert got.startswith(b"HTTP/1.1 401"), got[:200]
                assert json.loads(got.partition(b"\r\n\r\n")[2])["error"]["code"] is not None
            assert time.monotonic() - t0 < 5
        finally:
            for sock in socks:
                sock.close()
        assert seen == []


async def test_a_client_with_a_credential_still_sends_its_body_slowly() -> None:
    """Control: with a valid credential a body that trickles in within the deadline is served whole."""
    seen: list[int] = []
    async with app_backend(body_size_backend(seen)) as url, running_gateway(gateway_config(url)) as gw:
        body = json.dumps({"model": "sim", "messages": [{"role": "user", "content": "x" * 5000}]}).encode()
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {gw.token('a')}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        sock = await _open(gw.url, head, body[:100])
        loop = asyncio.get_running_loop()
        try:
            for i in range(100, len(body), 1000):
                await asyncio.sleep(0.02)
                await loop.sock_sendall(sock, body[i:i + 1000])
            got = await _answer(sock, 5)
        finally:
            sock.close()
        assert got.startswith(b"HTTP/1.1 200"), got[:200]
        assert len(seen) == 1 and seen[0] > 5000


async def test_a_large_body_gets_time_for_its_size(monkeypatch: Any) -> None:
    """Defect: the body deadline was 60 s whatever the body's size, so a legitimate upload slower than
    max_body_bytes / 60 s always failed (the default 4 MiB at under 70 KB/s, a mobile uplink; an operator who
    raised max_body_bytes to 64 MiB for embedding batches failed every client under 1.1 MB/s). The deadline is now
    BODY_TIMEOUT_S plus one second per BODY_MIN_RATE bytes the request declares. (Scaled down here: 0.5 s plus a
    second per 20 kB; a 30 kB body sent at ~25 kB/s takes ~1.2 s.)"""
    from gateway import pipeline

    monkeypatch.setattr(pipeline, "BODY_TIMEOUT_S", 0.5)
    monkeypatch.setattr(pipeline, "BODY_MIN_RATE", 20_000, raising=False)
    seen: list[int] = []
    async with app_backend(body_size_backend(seen)) as url, running_gateway(gateway_config(url)) as gw:
        body = json.dumps({"model": "sim", "messages": [{"role": "user", "content": "x" * 30_000}]}).encode()
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {gw.token('a')}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        sock = await _open(gw.url, head, body[:1000])
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        try:
            for i in range(1000, len(body), 1000):
                await asyncio.sleep(0.04)
                await loop.sock_sendall(sock, body[i:i + 1000])
            got = await _answer(sock, 5)
        finally:
            sock.close()
        assert time.monotonic() - t0 > 0.5  # past the fixed deadline
        assert got.startswith(b"HTTP/1.1 200"), got[:200]  # before the fix: 408
        assert len(seen) == 1
