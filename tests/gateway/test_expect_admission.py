"""``Expect: 100-continue`` from an authenticated client whose admission is sure to refuse it: the 403/429 (or the
failure mode's 503) comes instead of the ``100 Continue``, and the body is never sent.

Defect: ``expect_continue`` checked the headers, the credential and the declared size before the ``100``, but a
denied or blocked client, one at its in-flight cap and one whose request bucket was empty were all invited to
upload their whole body (up to ``max_body_bytes``) and refused only after it was read. Now one read-only store
round trip (``store.peek``) decides before the ``100``; it takes nothing: the admission after the body takes the
request, the tokens and the slot once. Real parts: the in-process gateway on the memory store and on a real
redis-server, real aiohttp backends, raw sockets."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any

import pytest
from aiohttp import web

from gateway.store.base import AdmitRequest
from tests.conftest import free_port
from tests.support.harness import GatewayHandle, app_backend, body_size_backend, gateway_config, running_gateway
from tests.support.raw_http import Raw, request_head

BODY = json.dumps({"model": "sim", "messages": [{"role": "user", "content": "hello"}]}).encode()
_VOLATILE = {"date", "x-request-id", "x-ipgate-overhead-ms"}
_KINDS = ("requests", "tokens", "concurrency", "policy")


@pytest.fixture(params=["memory", "redis"])
def store_cfg(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "memory":
        return {"kind": "memory"}
    return {"kind": "redis", "url": request.getfixturevalue("redis_url"), "timeout_ms": 2000}


def _decisions(gw: GatewayHandle) -> dict[tuple[str, str], float]:
    reg = gw.ctx.metrics.registry
    return {(k, d): reg.get_sample_value("ipgate_rate_limit_decisions_total", {"kind": k, "decision": d}) or 0.0
            for k in _KINDS for d in ("allow", "reject", "block")}


def _delta(after: Mapping[tuple[str, str], float], before: Mapping[tuple[str, str], float]) -> dict[Any, float]:
    return {k: v - before[k] for k, v in after.items() if v != before[k]}


def _peek_failures(gw: GatewayHandle) -> float:
    return gw.ctx.metrics.registry.get_sample_value("ipgate_store_failures_total", {"op": "peek"}) or 0.0


async def _plain(gw: GatewayHandle, client: str) -> tuple[bytes, dict[str, str], dict[str, Any]]:
    """The same request without ``Expect``, its body sent with the headers."""
    conn = await Raw.open(gw)
    try:
        await conn.send(request_head(f"Bearer {gw.token(client)}", len(BODY), expect=None) + BODY)
        return await conn.answer()
    finally:
        conn.close()


async def _refused_without_continue(gw: GatewayHandle, client: str) -> tuple[bytes, dict[str, str], dict[str, Any]]:
    """Only the headers are sent: the first bytes back must be the final answer, never a 100."""
    conn = await Raw.open(gw)
    try:
        await conn.send(request_head(f"Bearer {gw.token(client)}", len(BODY)))
        first = await conn.until(b"\r\n")
        assert not first.startswith(b"HTTP/1.1 100"), first[:200]  # before: HTTP/1.1 100 Continue
        return await conn.answer()
    finally:
        conn.close()


async def _served_after_continue(gw: GatewayHandle, client: str) -> tuple[bytes, dict[str, str], dict[str, Any]]:
    conn = await Raw.open(gw)
    try:
        await conn.send(request_head(f"Bearer {gw.token(client)}", len(BODY)))
        assert (await conn.until(b"\r\n\r\n")) == b"HTTP/1.1 100 Continue\r\n\r\n"
        conn.got = b""
        await conn.send(BODY)
        return await conn.answer()
    finally:
        conn.close()


async def _same_refusal(gw: GatewayHandle, client: str, status: int, code: str) -> dict[str, str]:
    """The Expect request's refusal and the plain request's: the same status, body, header names (and values,
    but for the clock's), counted in the same rate-limit decisions."""
    before = _decisions(gw)
    e_status, e_headers, e_body = await _refused_without_continue(gw, client)
    expect_counted = _delta(_decisions(gw), before)
    before = _decisions(gw)
    p_status, p_headers, p_body = await _plain(gw, client)
    assert _delta(_decisions(gw), before) == expect_counted and expect_counted
    assert e_status == p_status and e_status.startswith(f"HTTP/1.1 {status}".encode()), e_status
    assert e_body["error"]["code"] == code
    if status == 403:
        assert e_body == p_body
    assert e_headers.keys() == p_headers.keys()
    clocked = {"retry-after", "retry-after-ms", "ratelimit-reset", "x-ratelimit-reset-requests",
               "x-ratelimit-reset-tokens"} | _VOLATILE
    assert {k: v for k, v in e_headers.items() if k not in clocked} == \
        {k: v for k, v in p_headers.items() if k not in clocked}
    return e_headers


async def test_a_denied_or_blocked_client_gets_its_403_instead_of_continue(store_cfg: dict[str, Any]) -> None:
    seen: list[int] = []
    async with app_backend(body_size_backend(seen)) as url, \
            running_gateway(gateway_config(url, store=store_cfg)) as gw:
        await gw.ctx.store.set_override("denied", "deny", None, ttl_s=60)
        await gw.ctx.store.set_override("blocked", None, gw.ctx.policy.index("block"), ttl_s=60)
        await _same_refusal(gw, "denied", 403, "client_denied")
        await _same_refusal(gw, "blocked", 403, "policy_block")
        # listing the models is no admission, with Expect or without
        conn = await Raw.open(gw)
        try:
            await conn.send(f"GET /v1/models HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {gw.token('denied')}\r\n"
                            "Expect: 100-continue\r\n\r\n".encode())
            assert (await conn.until(b"\r\n\r\n")).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
            conn.got = conn.got.partition(b"\r\n\r\n")[2]
            status, _, listed = await conn.answer()
        finally:
            conn.close()
        assert status.startswith(b"HTTP/1.1 200") and listed["data"][0]["id"] == "sim"
        status, _, _ = await _served_after_continue(gw, "fine")
        assert status.startswith(b"HTTP/1.1 200")
    assert seen == [len(BODY)], "only the client the store admits sent a body"


async def test_an_empty_request_bucket_gets_its_429_instead_of_continue(store_cfg: dict[str, Any]) -> None:
    seen: list[int] = []
    limits = {"default": {"requests_per_minute": 6, "burst_requests": 2, "tokens_per_minute": 10**9}}
    async with app_backend(body_size_backend(seen)) as url, \
            running_gateway(gateway_config(url, store=store_cfg, limits=limits)) as gw:
        status, headers, _ = await _served_after_continue(gw, "a")
        # the look before the 100 took nothing: the one request is charged once, by the admission after the body
        assert status.startswith(b"HTTP/1.1 200") and headers["x-ratelimit-remaining-requests"] == "1"
        assert (await _plain(gw, "a"))[0].startswith(b"HTTP/1.1 200")
        headers = await _same_refusal(gw, "a", 429, "rate_limit_exceeded")
        assert 5 <= int(headers["retry-after"]) <= 10 and headers["ratelimit-remaining"] == "0"
    assert seen == [len(BODY)] * 2


class _Held:
    """A chat backend that holds each request until ``release`` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.waiting = 0

    def app(self) -> web.Application:
        async def chat(request: web.Request) -> web.Response:
            await request.read()
            self.waiting += 1
            await self.release.wait()
            return web.json_response({"id": "c", "object": "chat.completion", "created": 0, "model": "sim",
                                      "choices": [{"index": 0, "finish_reason": "stop",
                                                   "message": {"role": "assistant", "content": "ok"}}],
                                      "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})

        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        return app


async def _one_held(gw: GatewayHandle, held: _Held) -> asyncio.Task[tuple[bytes, dict[str, str], dict[str, Any]]]:
    """Client a's plain request, started and held by the backend (its in-flight slot taken)."""
    running = asyncio.create_task(_plain(gw, "a"))
    for _ in range(500):
        if held.waiting:
            break
        await asyncio.sleep(0.01)
    assert held.waiting == 1
    return running


async def test_a_full_in_flight_cap_gets_its_429_and_the_look_takes_no_slot(store_cfg: dict[str, Any]) -> None:
    held = _Held()
    limits = {"default": {"requests_per_minute": 60_000, "tokens_per_minute": 10**9, "max_in_flight": 1}}
    async with app_backend(held.app()) as url, \
            running_gateway(gateway_config(url, store=store_cfg, limits=limits)) as gw:
        running = await _one_held(gw, held)
        headers = await _same_refusal(gw, "a", 429, "too_many_concurrent_requests")
        assert headers["retry-after"] == "1"
        held.release.set()
        assert (await running)[0].startswith(b"HTTP/1.1 200")
        look = AdmitRequest("a", 1, gw.ctx.policy.limits_by_tier, 0.0)
        for _ in range(500):  # the slot goes back in the background accounting
            if (await gw.ctx.store.peek(look)).in_flight == 0:
                break
            await asyncio.sleep(0.01)
        status, _, _ = await _served_after_continue(gw, "a")
        assert status.startswith(b"HTTP/1.1 200"), "the looks before took no slot"
        assert held.waiting == 2


async def test_failure_mode_closed_answers_503_instead_of_continue() -> None:
    dead = {"kind": "redis", "url": f"redis://127.0.0.1:{free_port()}/0", "timeout_ms": 50,
            "failure_mode": "closed"}
    seen: list[int] = []
    async with app_backend(body_size_backend(seen)) as url, \
            running_gateway(gateway_config(url, store=dead)) as gw:
        for _ in range(2):
            status, headers, body = await _refused_without_continue(gw, "a")
            assert status.startswith(b"HTTP/1.1 503") and body["error"]["code"] == "rate_limit_state_unavailable"
            assert "retry-after" in headers
        assert _peek_failures(gw) == 2  # every look the store did not answer is counted
    assert seen == []


async def test_a_store_outage_keeps_a_known_deny_before_continue(redis_process: Any,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Failure mode ``open``: the denied client stays denied before the ``100`` too (never silently admitted);
    the outage is logged once and every look it answered is counted."""
    store = {"kind": "redis", "url": redis_process.url, "timeout_ms": 100, "failure_mode": "open",
             "health_interval_s": 30}
    seen: list[int] = []
    async with app_backend(body_size_backend(seen)) as url, \
            running_gateway(gateway_config(url, store=store)) as gw:
        await gw.ctx.store.set_override("denied", "deny", None, ttl_s=60)
        assert (await _refused_without_continue(gw, "denied"))[0].startswith(b"HTTP/1.1 403")
        redis_process.kill()
        with caplog.at_level(logging.WARNING, logger="gateway.store.resilient"):
            for _ in range(3):
                status, _, body = await _refused_without_continue(gw, "denied")
                assert status.startswith(b"HTTP/1.1 403") and body["error"]["code"] == "client_denied"
            status, _, _ = await _served_after_continue(gw, "other")  # open: admitted, as the hot path admits
            assert status.startswith(b"HTTP/1.1 200")
        assert _peek_failures(gw) == 4
        outage = [r for r in caplog.records if "state store unavailable" in r.getMessage()]
        assert len(outage) == 1 and "peek failed" in outage[0].getMessage()
    assert seen == [len(BODY)]


async def test_with_detection_on_a_blocking_tier_refuses_before_continue_only_when_no_tier_above_runs() -> None:
    """Detection may raise a request's tier above the stored one: the look refuses a blocking tier only when every
    tier above blocks too (the default policy's last tier); otherwise the admission after the body decides."""
    seen: list[int] = []
    policy = {"flag_tier": "normal", "tiers": [{"name": "normal"}, {"name": "hold", "block": True},
                                               {"name": "last", "block": True}, {"name": "odd"}]}
    async with app_backend(body_size_backend(seen)) as url:
        async with running_gateway(gateway_config(url, detection={"enabled": True})) as gw:
            assert gw.ctx.detection is not None
            await gw.ctx.store.set_override("blocked", None, gw.ctx.policy.index("block"), ttl_s=60)
            await _same_refusal(gw, "blocked", 403, "policy_block")
        async with running_gateway(gateway_config(url, detection={"enabled": True}, policy=policy)) as gw:
            await gw.ctx.store.set_override("held", None, gw.ctx.policy.index("hold"), ttl_s=60)
            status, _, body = await _served_after_continue(gw, "held")  # "odd" above it does not block
            assert status.startswith(b"HTTP/1.1 403") and body["error"]["code"] == "policy_block"
    assert seen == []


@pytest.mark.parametrize("what", ["request bucket", "in-flight cap"])
async def test_failure_mode_local_looks_at_the_in_process_limits_before_continue(what: str) -> None:
    """Failure mode ``local`` with the store down: the look answers from the in-process store (each limit divided
    by ``local_replicas``) as the admission after the body would, and takes nothing there either."""
    dead = {"kind": "redis", "url": f"redis://127.0.0.1:{free_port()}/0", "timeout_ms": 50,
            "failure_mode": "local", "local_replicas": 2}
    held = _Held()
    if what == "request bucket":  # halved: 1 request in the burst per replica
        held.release.set()
        limits = {"default": {"requests_per_minute": 6, "burst_requests": 2, "tokens_per_minute": 10**9}}
    else:  # halved: 1 in flight per replica
        limits = {"default": {"requests_per_minute": 60_000, "tokens_per_minute": 10**9, "max_in_flight": 2}}
    async with app_backend(held.app()) as url, \
            running_gateway(gateway_config(url, store=dead, limits=limits)) as gw:
        if what == "request bucket":
            status, _, _ = await _served_after_continue(gw, "a")  # the look took nothing: charged once
            assert status.startswith(b"HTTP/1.1 200")
            await _same_refusal(gw, "a", 429, "rate_limit_exceeded")
        else:
            running = await _one_held(gw, held)
            await _same_refusal(gw, "a", 429, "too_many_concurrent_requests")
            held.release.set()
            assert (await running)[0].startswith(b"HTTP/1.1 200")
        assert _peek_failures(gw) >= 1  # the looks the store did not answer are counted
