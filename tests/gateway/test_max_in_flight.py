"""End to end: the per-client in-flight cap (``max_in_flight``) through real gateways, a real aiohttp backend that
holds streams open, the official ``openai`` client, and (for the shared cap) a real Redis.

A client with N streams open is refused the N+1th (429 ``too_many_concurrent_requests``) while another client is
served; its slots come back whichever way its requests end: the stream finishes, the client disconnects
mid-stream, the backend fails, the request is cancelled before the backend answered.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from gateway.store.memory import MemoryStore
from tests.support.harness import GatewayHandle, app_backend, eventually, gateway_config, running_gateway, settled

MSG = [{"role": "user", "content": "hello"}]
CAP = 2
LIMITS = {"default": {"requests_per_minute": 60_000, "tokens_per_minute": 10**9, "max_in_flight": CAP}}


class HeldBackend:
    """Streams one chunk, then holds the stream open until ``release`` is set. A message of "fail" answers
    500; "hang" never answers at all."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.open = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        text = body["messages"][-1]["content"]
        if text == "fail":
            return web.json_response({"error": {"message": "boom", "type": "server_error"}}, status=500)
        if text == "hang":
            await asyncio.sleep(3600)
        if text == "exact":  # usage equal to the gateway's reservation (6 prompt + max_tokens): nothing to reconcile
            n = body["max_tokens"]
            usage = {"prompt_tokens": 6, "completion_tokens": n, "total_tokens": 6 + n}
            return web.json_response({"id": "c2", "object": "chat.completion", "created": 1, "model": "sim",
                                      "usage": usage, "choices": [{"index": 0, "finish_reason": "stop",
                                                                   "message": {"role": "assistant", "content": "ok"}}]})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        self.open += 1
        try:
            await resp.write(_chunk("hi", None))
            await self.release.wait()
            await resp.write(_chunk(" there", "stop"))
            await resp.write(b"data: [DONE]\n\n")
        finally:
            self.open -= 1
        return resp


def _chunk(text: str, finish: str | None) -> bytes:
    return b"data: " + json.dumps({
        "id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "sim",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}).encode() + b"\n\n"


async def open_stream(client: openai.AsyncOpenAI, text: str = "hello") -> Any:
    """A stream with its first chunk read (the request is admitted and running)."""
    stream = await client.chat.completions.create(model="sim", messages=[{"role": "user", "content": text}],
                                                  stream=True)
    first = await stream.__anext__()
    assert first.choices[0].delta.content == "hi"
    return stream


async def refused(client: openai.AsyncOpenAI) -> openai.RateLimitError:
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model="sim", messages=MSG, stream=True)
    return info.value


def rejections(gw: GatewayHandle) -> float:
    return gw.ctx.metrics.rate_limit_decisions_total.labels("concurrency", "reject")._value.get()


def in_flight(gw: GatewayHandle, client: str) -> int:
    store = gw.ctx.store
    assert isinstance(store, MemoryStore)
    return store.in_flight(client)


@pytest.fixture
async def held() -> AsyncIterator[tuple[HeldBackend, str]]:
    backend = HeldBackend()
    async with app_backend(backend.app()) as url:
        yield backend, url
    backend.release.set()


async def test_a_client_at_its_cap_is_refused_while_others_are_served(held: tuple[HeldBackend, str]) -> None:
    backend, url = held
    async with running_gateway(gateway_config(url, limits=LIMITS)) as gw:
        a, b = gw.openai_client("alice"), gw.openai_client("bob")
        streams = [await open_stream(a) for _ in range(CAP)]
        err = await refused(a)
        assert err.status_code == 429 and err.code == "too_many_concurrent_requests"
        assert f"limit is {CAP}" in err.message
        assert err.response.headers["Retry-After"] == "1"
        assert rejections(gw) == 1
        bob = await open_stream(b)  # another client: served
        assert in_flight(gw, "alice") == CAP and in_flight(gw, "bob") == 1 and len(gw.ctx.leases) == CAP + 1

        # one of alice's streams ends by a client disconnect mid-stream, the other by finishing
        await streams[0].close()
        await eventually(lambda: in_flight(gw, "alice") == CAP - 1, what="the disconnected stream's slot back")
        again = await open_stream(a)  # admitted at once
        backend.release.set()
        for s in (streams[1], again, bob):
            assert [c async for c in s][-1].choices[0].finish_reason == "stop"
        await settled(gw)
        assert in_flight(gw, "alice") == 0 and in_flight(gw, "bob") == 0 and len(gw.ctx.leases) == 0
        backend.release.clear()
        assert len([await open_stream(a) for _ in range(CAP)]) == CAP, "alice has all her slots back"
        await a.close()
        await b.close()
        async with aiohttp.ClientSession() as http, http.get(
                gw.admin_url + "/admin/clients/alice", headers={"Authorization": f"Bearer {gw.admin_token}"}) as r:
            view = await r.json()
        assert view["limits"]["max_in_flight"] == CAP and view["limits_by_class"]["suspicious"]["max_in_flight"] == 4


async def test_the_slot_comes_back_after_an_upstream_error_or_a_cancellation(held: tuple[HeldBackend, str]) -> None:
    _, url = held
    async with running_gateway(gateway_config(url, limits=LIMITS)) as gw:
        a = gw.openai_client("alice")
        for _ in range(CAP + 1):  # more failures than slots: each gave its slot back
            with pytest.raises(openai.InternalServerError):
                await a.chat.completions.create(model="sim", messages=[{"role": "user", "content": "fail"}])
        await settled(gw)
        assert in_flight(gw, "alice") == 0

        for _ in range(CAP + 1):  # usage exactly as reserved: no tokens to reconcile, the slot still comes back
            await a.chat.completions.create(model="sim", messages=[{"role": "user", "content": "exact"}], max_tokens=10)
        await settled(gw)
        assert in_flight(gw, "alice") == 0

        # requests the backend never answers, abandoned by the client before any byte came back
        async with aiohttp.ClientSession() as http:
            for _ in range(CAP + 1):
                with pytest.raises(asyncio.TimeoutError):
                    async with http.post(gw.url + "/v1/chat/completions", timeout=aiohttp.ClientTimeout(total=0.3),
                                         headers={"Authorization": f"Bearer {gw.token('alice')}"},
                                         json={"model": "sim", "messages": [{"role": "user", "content": "hang"}]}):
                        pass
        await eventually(lambda: not gw.ctx.inflight, what="the cancelled handlers to finish")
        await settled(gw)
        assert in_flight(gw, "alice") == 0 and len(gw.ctx.leases) == 0
        assert len([await open_stream(a) for _ in range(CAP)]) == CAP
        await a.close()


async def test_two_gateways_on_one_redis_share_the_cap(held: tuple[HeldBackend, str], redis_url: str) -> None:
    backend, url = held
    cfg = gateway_config(url, limits=LIMITS, store={"kind": "redis", "url": redis_url, "timeout_ms": 2000,
                                                    "failure_mode": "closed"})
    async with running_gateway(cfg) as g1, running_gateway(cfg) as g2:
        a1, a2, b2 = g1.openai_client("shared"), g2.openai_client("shared"), g2.openai_client("other")
        streams = [await open_stream(a1), await open_stream(a2)]
        assert (await refused(a1)).code == "too_many_concurrent_requests"
        assert (await refused(a2)).code == "too_many_concurrent_requests"
        other = await open_stream(b2)
        await streams[0].close()  # a disconnect on the first gateway frees a slot the second one sees
        await settled(g1)

        async def admitted_on_g2() -> bool:
            try:
                streams.append(await open_stream(a2))
                return True
            except openai.RateLimitError:
                return False

        for _ in range(100):  # the first gateway's release runs in its background accounting
            if await admitted_on_g2():
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the slot released on one gateway was not seen by the other")
        backend.release.set()
        for s in (*streams[1:], other):
            async for _ in s:
                pass
        for c in (a1, a2, b2):
            await c.close()


async def test_a_request_refused_after_taking_its_slot_gives_it_back(held: tuple[HeldBackend, str]) -> None:
    """The block tier caps requests in flight too (its `suspicious` limits), and a blocked request is refused
    only after the store took its slot: each refusal must give it back, or the third would be a 429."""
    _, url = held
    limits = {**LIMITS, "suspicious": {"requests_per_minute": 60_000, "tokens_per_minute": 10**9, "max_in_flight": 2}}
    async with running_gateway(gateway_config(url, limits=limits)) as gw:
        await gw.ctx.store.set_override("blocked", None, gw.ctx.policy.index("block"), ttl_s=60)
        a = gw.openai_client("blocked")
        for _ in range(6):
            with pytest.raises(openai.PermissionDeniedError) as info:
                await a.chat.completions.create(model="sim", messages=MSG)
            assert info.value.code == "policy_block"
            await settled(gw)
        assert in_flight(gw, "blocked") == 0 and rejections(gw) == 0
        await a.close()


async def test_a_stream_outliving_its_lease_still_counts(held: tuple[HeldBackend, str]) -> None:
    """The replica renews the leases of its running requests (every third of store.in_flight_lease_s): streams
    that last longer than a lease keep their client at its cap."""
    backend, url = held
    async with running_gateway(gateway_config(url, limits=LIMITS, store={"in_flight_lease_s": 3})) as gw:
        a = gw.openai_client("alice")
        streams = [await open_stream(a) for _ in range(CAP)]
        await asyncio.sleep(4.0)  # past the 3 s lease: only the renewals (every 1 s) keep them
        assert in_flight(gw, "alice") == CAP
        assert (await refused(a)).code == "too_many_concurrent_requests"
        backend.release.set()
        for s in streams:
            async for _ in s:
                pass
        await a.close()


async def test_a_blocked_client_sending_at_once_is_told_it_is_blocked(held: tuple[HeldBackend, str]) -> None:
    """A client at a block tier is refused whatever it sends; its requests at once must each be answered 403
    policy_block. Taking a slot for each first, the ones past the block tier's cap were answered 429
    too_many_concurrent_requests ("wait for one to finish, then retry"): a retry the SDKs make on their own,
    and counted as concurrency refusals instead of policy blocks."""
    _, url = held
    limits = {**LIMITS, "suspicious": {"requests_per_minute": 60_000, "tokens_per_minute": 10**9, "max_in_flight": 2}}
    async with running_gateway(gateway_config(url, limits=limits)) as gw:
        await gw.ctx.store.set_override("blocked", None, gw.ctx.policy.index("block"), ttl_s=60)
        a = gw.openai_client("blocked")

        async def one() -> str:
            try:
                await a.chat.completions.create(model="sim", messages=MSG)
            except openai.APIStatusError as e:
                return f"{e.status_code} {e.code}"
            return "200"

        got = await asyncio.gather(*(one() for _ in range(12)))
        await settled(gw)
        assert got == ["403 policy_block"] * 12, got
        assert in_flight(gw, "blocked") == 0 and rejections(gw) == 0
        await a.close()


async def test_a_request_cancelled_while_redis_decides_gives_its_slot_back(held: tuple[HeldBackend, str],
                                                                            redis_process: Any) -> None:
    """The client goes away while the hot path waits for Redis (paused here): the script runs once Redis is
    back and takes the slot for a request that is gone; the release sent on cancellation (after it, on the same
    connection) gives it back."""
    _, url = held
    cfg = gateway_config(url, limits=LIMITS, store={"kind": "redis", "url": redis_process.url, "timeout_ms": 5000,
                                                    "failure_mode": "closed"})
    async with running_gateway(cfg) as gw:
        a = gw.openai_client("gone")
        await a.chat.completions.create(model="sim", messages=[{"role": "user", "content": "exact"}], max_tokens=10)
        await settled(gw)  # connected, scripts loaded
        redis_process.pause()
        try:
            async with aiohttp.ClientSession() as http:
                for _ in range(CAP + 1):
                    with pytest.raises(asyncio.TimeoutError):
                        async with http.post(gw.url + "/v1/chat/completions",
                                             timeout=aiohttp.ClientTimeout(total=0.3),
                                             headers={"Authorization": f"Bearer {gw.token('gone')}"}, json={
                                                 "model": "sim", "messages": [{"role": "user", "content": "x"}]}):
                            pass
            await eventually(lambda: not gw.ctx.inflight, what="the cancelled handlers to finish")
        finally:
            redis_process.resume()
        await settled(gw)
        raw = aioredis.from_url(redis_process.url)
        try:
            key = gw.ctx.store.inner.client_keys("gone")[3]  # type: ignore[attr-defined]
            for _ in range(100):
                if await raw.zcard(key) == 0:
                    break
                await asyncio.sleep(0.02)
            assert await raw.zcard(key) == 0, "a cancelled request's slot stayed taken"
        finally:
            await raw.aclose()
        assert len(gw.ctx.leases) == 0
        assert len([await open_stream(a) for _ in range(CAP)]) == CAP
        await a.close()
