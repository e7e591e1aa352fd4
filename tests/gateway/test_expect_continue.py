"""``Expect: 100-continue`` on the public API: the ``100 Continue`` comes only after the checks that need no body.

Defect: aiohttp's default expect handler wrote ``100 Continue`` as soon as the headers arrived, so a client
without a valid credential (or with a body over ``max_body_bytes``) was invited to send its whole body, which the
gateway then read and threw away. Real parts: the in-process gateway, a real aiohttp backend, raw sockets."""

from __future__ import annotations

import asyncio
import json
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
from tests.support.raw_http import Raw, request_head

BODY = json.dumps({"model": "sim", "messages": [{"role": "user", "content": "hello"}]}).encode()
_VOLATILE = {"date", "x-request-id", "x-ipgate-overhead-ms"}  # values that differ from one request to the next


def _head(auth: str | None, *, expect: str | None = "100-continue", length: int = len(BODY),
          path: str = "/v1/chat/completions") -> bytes:
    return request_head(auth, length, expect=expect, path=path)


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
