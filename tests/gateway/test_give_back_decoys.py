"""Decoy requests: a client holds long requests that generate almost nothing. When each one ends, its unused
reservation used to be given back in full, although time had already repaid it while the request ran; the
give-back then shifted the reservations made since into the past and the client had a second token burst
admitted at once. The gateway now tells the store the reservation's own span, and only the part still ahead is
given back (docs/store.md)."""

from __future__ import annotations

import asyncio
import json

import aiohttp
from aiohttp import web

from tests.support.harness import GatewayHandle, app_backend, gateway_config, running_gateway

# 1 ms per token, a burst of 1 000 tokens: a 900-token reservation is repaid by time in about 0.9 s
LIMITS = {"requests_per_minute": 6000, "tokens_per_minute": 60_000, "burst_tokens": 1000}


def _backend() -> web.Application:
    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        if body["messages"][-1]["content"] == "slow":
            await asyncio.sleep(1.3)  # outlives its own reservation's refill time
        return web.json_response({
            "id": "c", "object": "chat.completion", "created": 0, "model": "sim",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def _post(s: aiohttp.ClientSession, gw: GatewayHandle, content: str) -> int:
    body = {"model": "sim", "max_tokens": 900, "messages": [{"role": "user", "content": content}]}
    async with s.post(gw.url + "/v1/chat/completions", data=json.dumps(body),
                      headers={"Authorization": f"Bearer {gw.token('decoy')}"}) as r:
        await r.read()
        return r.status


async def test_decoys_do_not_get_a_second_burst_at_once() -> None:
    async with app_backend(_backend()) as url, running_gateway(
            gateway_config(url, limits={"default": LIMITS, "suspicious": LIMITS})) as gw, \
            aiohttp.ClientSession() as s:
        first = asyncio.create_task(_post(s, gw, "slow"))  # reserves ~910 tokens, repaid by time at ~0.91 s
        await asyncio.sleep(1.0)
        second = asyncio.create_task(_post(s, gw, "slow"))  # the bucket is full again: admitted
        assert await first == 200  # ends at ~1.3 s having generated 1 token
        await asyncio.sleep(0.15)  # the settle runs after the answer
        # ~0.5 s of the second reservation is still ahead: another 910 tokens would be ~1.4 s > the burst.
        # Before the fix the first request's ~900 unused tokens came back and this one was admitted at once.
        assert await _post(s, gw, "fast") == 429
        assert await second == 200
