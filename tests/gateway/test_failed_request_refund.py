"""A request the backend refused, or that reached no backend, gives its token reservation back (it generated
nothing); otherwise one refused request with a huge max_tokens locks the client's token bucket for days."""

from __future__ import annotations

import asyncio
import json

import aiohttp
from aiohttp import web

from tests.support.harness import GatewayHandle, app_backend, gateway_config, running_gateway

LIMITS = {"requests_per_minute": 6000, "tokens_per_minute": 12_000, "burst_tokens": 10_000}


def _refusing() -> web.Application:
    async def refuse(request: web.Request) -> web.Response:
        err = {"error": {"message": "max_tokens is too large", "type": "invalid_request_error"}}
        return web.json_response(err, status=400)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", refuse)
    return app


async def _post(gw: GatewayHandle, max_tokens: int) -> int:
    body = {"model": "sim", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as s, s.post(
            gw.url + "/v1/chat/completions", data=json.dumps(body),
            headers={"Authorization": f"Bearer {gw.token('alice')}"}) as r:
        await r.read()
        return r.status


async def _until_admitted(gw: GatewayHandle, max_tokens: int) -> int:
    status = 429
    for _ in range(40):  # the refund is settled in the background, after the answer
        status = await _post(gw, max_tokens)
        if status != 429:
            return status
        await asyncio.sleep(0.05)
    return status


async def test_a_refused_request_gives_its_reservation_back() -> None:
    async with app_backend(_refusing()) as url, running_gateway(
            gateway_config(url, limits={"default": LIMITS, "suspicious": LIMITS})) as gw:
        assert await _post(gw, 9_000) == 400
        # without the refund the bucket holds ~9 000 tokens for ~45 s: this one would be a 429
        assert await _until_admitted(gw, 9_000) == 400


async def test_a_request_that_reached_no_backend_gives_its_reservation_back() -> None:
    async with app_backend(_refusing()) as url:
        pass  # the port is closed again: every attempt fails before any backend answers
    async with running_gateway(gateway_config(url, limits={"default": LIMITS, "suspicious": LIMITS})) as gw:
        first = await _post(gw, 9_000)
        assert first in (502, 503, 504)
        assert await _until_admitted(gw, 9_000) == first


def test_the_prompt_part_of_a_reservation_leaves_out_every_completion_budget() -> None:
    """An aborted or refused request is charged its prompt: for /v1/completions that must leave out the budget
    of best_of and of every prompt of a batch too, not only max_tokens x n."""
    from gateway.account import Exchange, actual_tokens
    from gateway.admit import Admission
    from gateway.proxy.parse import parse_request
    from gateway.ratelimit import estimate_parts, estimate_tokens

    body = {"model": "sim", "prompt": ["x" * 400, "y" * 400], "max_tokens": 100, "n": 1, "best_of": 4}
    path = "/v1/completions"
    prompt, completion = estimate_parts(path, body)
    assert (prompt, completion) == (200, 800) and estimate_tokens(path, body) == 1000
    parsed = parse_request("completions", json.dumps(body).encode(), {"sim"})
    for status, backend, aborted, want in ((400, "b", False, 200), (502, None, False, 0), (200, "b", True, 200)):
        ex = Exchange("r", path, 0.0, parsed=parsed, backend=backend, status=status)
        ex.admission = Admission(None, 0, None, 1000)  # type: ignore[arg-type]  # only .reserved is read
        ex.facts.aborted = aborted
        assert actual_tokens(ex) == want, (status, backend, aborted)
