"""``Expect: 100-continue`` on the public API: the ``100 Continue`` comes only after the checks that need no body.

Defect: aiohttp's default expect handler wrote ``100 Continue`` as soon as the headers arrived, so a client
without a valid credential (or with a body over ``max_body_bytes``) was invited to send its whole body, which the
gateway then read and threw away. Real parts: the in-process gateway, a real aiohttp backend, raw sockets."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

from tests.support.harness import (
    GatewayHandle,
    app_backend,
    body_size_backend,
    gateway_config,
    running_gateway,
    settled,
)

BODY = json.dumps({"model": "sim", "messages": [{"role": "user", "content": "hello"}]}).encode()
_VOLATILE = {"date", "x-request-id", "x-ipgate-overhead-ms"}  # values that differ from one request to the next


class Raw:
    """One HTTP/1.1 connection driven byte by byte."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.got = b""

    @classmethod
    async def open(cls, gw: GatewayHandle) -> Raw:
        sock = socket.socket()
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", int(gw.url.rsplit(":", 1)[1])))
        return cls(sock)

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def _more(self, timeout_s: float = 5.0) -> bool:
        part = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(self.sock, 65536), timeout_s)
        self.got += part
        return bool(part)

    async def until(self, marker: bytes) -> bytes:
        """Everything received until ``marker`` is in it (or the peer closed)."""
        while marker not in self.got and await self._more():
            pass
        return self.got

    async def answer(self) -> tuple[bytes, dict[str, str], dict[str, Any]]:
        """The status line, headers (names lower-cased) and JSON body of a final answer."""
        await self.until(b"\r\n\r\n")
        head = self.got.partition(b"\r\n\r\n")[0]
        lines = head.split(b"\r\n")
        headers = {k.decode().lower(): v.decode().strip() for k, _, v in (ln.partition(b":") for ln in lines[1:])}
        size = int(headers["content-length"])
        while len(self.got) < len(head) + 4 + size and await self._more():
            pass
        return lines[0], headers, json.loads(self.got[len(head) + 4:len(head) + 4 + size])

    def close(self) -> None:
        self.sock.close()


def _head(auth: str | None, *, expect: str | None = "100-continue", length: int = len(BODY),
          path: str = "/v1/chat/completions") -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: gw", "Content-Type: application/json", f"Content-Length: {length}"]
    if auth is not None:
        lines.append(f"Authorization: {auth}")
    if expect is not None:
        lines.append(f"Expect: {expect}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _failures(gw: GatewayHandle, reason: str) -> float:
    v = gw.ctx.metrics.registry.get_sample_value("ipgate_auth_failures_total", {"reason": reason})
    return v or 0.0


async def _log_lines(log: Path, n: int) -> list[dict[str, Any]]:
    for _ in range(200):
        if log.exists() and len(lines := log.read_text().splitlines()) >= n:
            return [json.loads(x) for x in lines]
        await asyncio.sleep(0.02)
    raise AssertionError(f"{n} access log lines expected, got {log.read_text() if log.exists() else None!r}")


async def _refused_without_continue(gw: GatewayHandle, head: bytes) -> tuple[bytes, dict[str, str], dict[str, Any]]:
    """Send only the headers; the first bytes back must be the final answer, never a 100."""
    conn = await Raw.open(gw)
    try:
        await conn.send(head)
        first = await conn.until(b"\r\n")
        assert not first.startswith(b"HTTP/1.1 100"), first[:200]  # before the fix: HTTP/1.1 100 Continue
        return await conn.answer()
    finally:
        conn.close()


async def test_no_continue_for_a_client_without_a_valid_credential_and_the_same_401(tmp_path: Path) -> None:
    seen: list[int] = []
    log = tmp_path / "access.log"
    async with app_backend(body_size_backend(seen)) as url, \
            running_gateway(gateway_config(url, telemetry={"access_log_file": str(log)})) as gw:
        for auth, reason in ((None, "missing"), ("Bearer not-a-token", "malformed")):
            before = _failures(gw, reason)
            # the pipeline's 401 for the same request without Expect (its body sent with the headers)
            conn = await Raw.open(gw)
            await conn.send(_head(auth, expect=None) + BODY)
            status, headers, body = await conn.answer()
            conn.close()
            assert _failures(gw, reason) == before + 1
            e_status, e_headers, e_body = await _refused_without_continue(gw, _head(auth))
            assert (e_status, e_body) == (status, body) and status.startswith(b"HTTP/1.1 401")
            assert {k: v for k, v in e_headers.items() if k not in _VOLATILE} == \
                {k: v for k, v in headers.items() if k not in _VOLATILE}
            assert {"x-request-id", "x-ipgate-overhead-ms"} <= e_headers.keys()
            assert _failures(gw, reason) == before + 2  # counted once, as the pipeline counts it
        await settled(gw)
        lines = await _log_lines(log, 4)
    assert seen == []
    drop = ("ts", "request_id", "latency_ms", "overhead_ms")
    plain = [{k: v for k, v in ln.items() if k not in drop} for ln in lines]
    assert plain[0] == plain[1] and plain[2] == plain[3]  # the same access log line either way
    assert [ln["status"] for ln in lines] == [401] * 4


async def test_a_valid_credential_still_gets_continue_and_its_answer() -> None:
    seen: list[int] = []
    async with app_backend(body_size_backend(seen)) as url, running_gateway(gateway_config(url)) as gw:
        conn = await Raw.open(gw)
        try:
            await conn.send(_head(f"Bearer {gw.token('a')}"))
            assert (await conn.until(b"\r\n\r\n")) == b"HTTP/1.1 100 Continue\r\n\r\n"
            conn.got = b""
            await conn.send(BODY)
            status, _, body = await conn.answer()
        finally:
            conn.close()
    assert status.startswith(b"HTTP/1.1 200") and body["choices"][0]["message"]["content"] == "ok"
    assert seen == [len(BODY)]


async def test_an_oversized_declared_body_is_refused_instead_of_continue() -> None:
    async with running_gateway(gateway_config("http://127.0.0.1:9", server={"max_body_bytes": 1000})) as gw:
        status, _, body = await _refused_without_continue(gw, _head(f"Bearer {gw.token('a')}", length=5000))
        assert status.startswith(b"HTTP/1.1 413") and body["error"]["param"] == "body"
        assert body["error"]["message"] == "body: 5000 bytes exceed the limit of 1000 bytes"
        # without a credential the 401 comes first, as in the pipeline
        status, _, _ = await _refused_without_continue(gw, _head(None, length=5000))
        assert status.startswith(b"HTTP/1.1 401")


async def test_an_unknown_expectation_and_an_unknown_path_get_no_continue() -> None:
    async with running_gateway(gateway_config("http://127.0.0.1:9")) as gw:
        status, _, body = await _refused_without_continue(gw, _head(f"Bearer {gw.token('a')}", expect="fast"))
        assert status.startswith(b"HTTP/1.1 417") and body["error"]["param"] == "Expect"  # was aiohttp's text/plain
        status, _, body = await _refused_without_continue(gw, _head(None, path="/v1/nowhere"))
        assert status.startswith(b"HTTP/1.1 404") and body["error"]["code"] == "not_found"
