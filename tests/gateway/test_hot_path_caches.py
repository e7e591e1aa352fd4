"""The hot-path shortcuts of the second throughput round keep behaviour: eager accounting
(``AppContext.start``), the per-label metric children bound in ``finish``, and the per-backend upstream URLs
(rebuilt when a reload brings a new backend config)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import generate_latest

from gateway.admin.routing import reload_from_config
from gateway.config import GatewayConfig
from gateway.context import AppContext
from gateway.store.base import AdmitRequest
from tests.support.harness import (
    GatewayHandle,
    app_backend,
    eventually,
    gateway_config,
    running_gateway,
    settled,
    sim_backend,
)

BODY = {"model": "sim", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}


def _bare_ctx() -> AppContext:
    # start()/spawn() use only the background set; the other fields are never touched here
    ctx = AppContext.__new__(AppContext)
    ctx.background = set()
    return ctx


async def test_start_finishes_work_that_never_waits_without_a_task() -> None:
    ctx, done = _bare_ctx(), []

    async def work() -> None:
        done.append(1)

    ctx.start(work())
    assert done == [1]  # ran synchronously, before start() returned
    assert not ctx.background


async def test_start_hands_work_that_waits_to_a_background_task() -> None:
    ctx = _bare_ctx()
    steps: list[object] = []
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def work() -> None:
        steps.append("before")
        steps.append(await fut)  # the future's result reaches the coroutine
        await asyncio.sleep(0)  # a bare yield after that one
        steps.append("after")

    ctx.start(work())
    assert steps == ["before"]
    assert len(ctx.background) == 1
    fut.set_result(7)
    await asyncio.gather(*ctx.background)
    assert steps == ["before", 7, "after"]
    await asyncio.sleep(0)  # the done callback runs
    assert not ctx.background


async def test_start_passes_exceptions_and_cancellation_to_the_coroutine() -> None:
    ctx, seen = _bare_ctx(), []
    loop = asyncio.get_running_loop()
    failing: asyncio.Future[None] = loop.create_future()
    forever: asyncio.Future[None] = loop.create_future()

    async def work() -> None:
        try:
            await failing
        except ValueError as e:
            seen.append(str(e))
        try:
            await forever
        finally:
            seen.append("cleaned up")

    ctx.start(work())
    failing.set_exception(ValueError("boom"))
    await asyncio.sleep(0.01)
    assert seen == ["boom"]
    (task,) = ctx.background
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == ["boom", "cleaned up"]


async def test_start_logs_a_failure_instead_of_raising(caplog: pytest.LogCaptureFixture) -> None:
    ctx = _bare_ctx()

    async def work() -> None:
        raise RuntimeError("accounting bug")

    with caplog.at_level(logging.ERROR, logger="gateway.context"):
        ctx.start(work())
    assert "background work failed" in caplog.text and "accounting bug" in caplog.text


def _sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def _post(gw: GatewayHandle, client: str, body: dict[str, Any]) -> int:
    async with aiohttp.ClientSession() as s, s.post(gw.url + "/v1/chat/completions", data=json.dumps(body),
                                                    headers={"Authorization": f"Bearer {gw.token(client)}"}) as r:
        await r.read()
        return r.status


async def test_bound_metric_children_count_each_label_set_apart() -> None:
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url)) as gw:
        assert await _post(gw, "alice", BODY) == 200
        assert await _post(gw, "bob", BODY) == 200
        assert await _post(gw, "alice", {**BODY, "max_tokens": -1}) == 400  # no backend: backend "-"
        assert await _post(gw, "carol", {**BODY, "model": "nope"}) == 404
        await settled(gw)
        text = generate_latest(gw.ctx.metrics.registry).decode()
        route = "/v1/chat/completions"
        assert _sample(text, "ipgate_requests_total", route=route, model="sim", backend="b0", status="200") == 2
        assert _sample(text, "ipgate_requests_total", route=route, model="-", backend="-", status="400") == 1
        assert _sample(text, "ipgate_requests_total", route=route, model="-", backend="-", status="404") == 1
        assert _sample(text, "ipgate_request_duration_seconds_count", route=route, model="sim") == 2
        assert _sample(text, "ipgate_request_duration_seconds_count", route=route, model="-") == 2
        assert _sample(text, "ipgate_tokens_total", model="sim", type="output") > 0


def _fixed_usage_backend(name: str, hits: dict[str, int]) -> web.Application:
    async def chat(request: web.Request) -> web.Response:
        hits[name] = hits.get(name, 0) + 1
        return web.json_response({"id": "x", "object": "chat.completion", "model": "sim", "choices": [],
                                  "usage": {"prompt_tokens": 1, "completion_tokens": 1}})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def test_eager_settle_reconciles_each_client_before_the_next_request() -> None:
    """With the memory store the token reconciliation runs inside ``finish``: by the time the answer is
    out, the client's bucket holds the real usage (2 tokens, not the 900+ reserved), and only that client's."""
    limits = {"default": {"requests_per_minute": 6000, "tokens_per_minute": 6000, "burst_tokens": 1000}}
    big = {**BODY, "max_tokens": 900}
    async with app_backend(_fixed_usage_backend("b", {})) as url, \
            running_gateway(gateway_config(url, limits=limits)) as gw:
        assert await _post(gw, "alice", big) == 200
        assert not gw.ctx.background  # nothing was left to do in the background
        # without the reconciliation the second reservation (2 x ~904 > burst 1000) would be a 429
        assert await _post(gw, "alice", big) == 200
        assert await _post(gw, "alice", big) == 200
        bob = await gw.ctx.store.hot_path(AdmitRequest("bob", 0, gw.ctx.policy.limits_by_tier, 0))
        assert bob.tokens.remaining == 1000  # alice's accounting never touched bob's bucket
        assert await _post(gw, "bob", big) == 200


async def test_upstream_url_follows_a_reloaded_backend() -> None:
    hits: dict[str, int] = {}
    async with app_backend(_fixed_usage_backend("one", hits)) as one, \
            app_backend(_fixed_usage_backend("two", hits)) as two, running_gateway(gateway_config(one)) as gw:
        assert await _post(gw, "alice", BODY) == 200
        new = GatewayConfig.model_validate(gateway_config(two))
        reload_from_config(gw.ctx, new)  # same backend name b0, new URL
        assert await _post(gw, "alice", BODY) == 200
        await eventually(lambda: hits == {"one": 1, "two": 1}, what="one request on each URL")
