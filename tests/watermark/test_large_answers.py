"""A long non-streaming answer is watermarked in slices, letting the event loop serve other requests in between
(``gateway.respond.complete_large``): pure-Python embedding of ~28 000 words held the loop for ≈ 130 ms. The
result must be exactly what embedding at once gives."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.proxy import body
from gateway.proxy.body import transform_body, transform_body_async
from gateway.respond import LARGE_BODY_BYTES
from tests.support.harness import app_backend, gateway_config, running_gateway, settled
from tests.support.lexical import ANSWER
from watermark.keys import KeyRing, parse_master_secret
from watermark.lexical import LexicalScheme
from watermark.verify import candidate_keys, verify

SECRET = "large-answer-test-secret-0123456789abcdef"
RING = KeyRing(parse_master_secret(SECRET), 1)
SCHEME = LexicalScheme(RING.master)
LONG = " ".join([ANSWER] * 40)  # ≈ 13 000 words, ≈ 75 KB


def _factory(client: str) -> Any:
    return lambda: SCHEME.embedder(RING.key(client))


async def test_sliced_embedding_equals_embedding_at_once() -> None:
    body = {"choices": [
        {"index": i, "finish_reason": "stop", "logprobs": {"content": []},
         "message": {"role": "assistant", "content": LONG[i * 7:], "reasoning": LONG[: 30_000 + i]}}
        for i in range(2)]}
    at_once, sliced = copy.deepcopy(body), copy.deepcopy(body)
    expected = transform_body("chat", at_once, _factory("alice"))
    got = await transform_body_async("chat", sliced, _factory("alice"), slice_chars=1000)
    assert got == expected and sliced == at_once
    assert sliced["choices"][0]["message"]["content"] != body["choices"][0]["message"]["content"]


def _long_backend() -> web.Application:
    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        text = LONG if body["messages"][0]["content"] == "long" else "It is short."
        return web.json_response({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                  "choices": [{"index": 0, "finish_reason": "stop",
                                               "message": {"role": "assistant", "content": text}}],
                                  "usage": {"prompt_tokens": 1, "completion_tokens": 17_000, "total_tokens": 17_001}})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def test_a_long_answer_does_not_hold_the_event_loop_and_verifies(tmp_path: Path) -> None:
    assert len(LONG.encode()) > LARGE_BODY_BYTES
    secret = tmp_path / "wm.secret"
    secret.write_text(SECRET)
    gaps: list[float] = []
    async with app_backend(_long_backend()) as url, running_gateway(
            gateway_config(url, watermark={"enabled": True, "secret_file": str(secret)},
                           limits={"default": {"requests_per_minute": 600, "tokens_per_minute": 10_000_000}})) as gw:
        async def ticker() -> None:  # the gateway runs on this loop: a long gap is a request holding it
            last = time.perf_counter()
            while True:
                await asyncio.sleep(0)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        async with aiohttp.ClientSession() as s:
            t0 = time.perf_counter()
            async with s.post(gw.url + "/v1/chat/completions",
                              json={"model": "sim", "messages": [{"role": "user", "content": "long"}]},
                              headers={"Authorization": f"Bearer {gw.token('carol')}"}) as r:
                assert r.status == 200
                text = json.loads(await r.read())["choices"][0]["message"]["content"]
            took = time.perf_counter() - t0
        tick.cancel()
    emb = SCHEME.embedder(RING.key("carol"))
    assert text == emb.feed(LONG) + emb.finish()
    v = verify(text, candidate_keys(RING, ["alice", "bob", "carol"]), [SCHEME], fpr=1e-6)
    assert v.watermarked and v.client == "carol"
    # embedding the whole answer at once would have held the loop for most of the request
    assert max(gaps) < took / 3, (max(gaps), took)


async def test_a_client_that_leaves_while_its_long_answer_is_watermarked_is_charged_for_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The backend generated the whole answer: leaving during the sliced watermarking must not turn it into a
    free request (an aborted answer is charged what was generated, as far as the gateway knows it)."""
    slicing = asyncio.Event()  # set once the gateway (on this loop) is between two slices of the answer
    run_steps = body.run_steps

    async def watched(steps: Any) -> Any:
        def signalling() -> Any:
            first = True
            while True:
                try:
                    yield next(steps)
                except StopIteration as done:
                    return done.value
                if first:
                    first = False
                    slicing.set()
        return await run_steps(signalling())

    monkeypatch.setattr(body, "run_steps", watched)
    secret = tmp_path / "wm.secret"
    secret.write_text(SECRET)
    limits = {"default": {"requests_per_minute": 600, "tokens_per_minute": 60_000, "burst_tokens": 100_000}}
    async with app_backend(_long_backend()) as url, running_gateway(
            gateway_config(url, watermark={"enabled": True, "secret_file": str(secret)}, limits=limits)) as gw:
        headers = {"Authorization": f"Bearer {gw.token('dave')}"}
        host, port = gw.url.removeprefix("http://").split(":")
        _, writer = await asyncio.open_connection(host, int(port))
        payload = json.dumps({"model": "sim", "messages": [{"role": "user", "content": "long"}]}).encode()
        writer.write(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Authorization: {headers['Authorization']}\r\nContent-Length: {len(payload)}\r\n\r\n"
                     .encode() + payload)
        await writer.drain()
        await asyncio.wait_for(slicing.wait(), 30)  # the backend has answered; the gateway is watermarking
        writer.transport.abort()  # the client goes away
        async with aiohttp.ClientSession() as s:
            await asyncio.sleep(0.05)
            await settled(gw)
            async with s.post(gw.url + "/v1/chat/completions", headers=headers, json={
                    "model": "sim", "max_tokens": 1, "messages": [{"role": "user", "content": "short"}]}) as r:
                assert r.status == 200
                remaining = int(r.headers["x-ratelimit-remaining-tokens"])
            aborted = gw.ctx.metrics.registry.get_sample_value("ipgate_requests_total", {
                "route": "/v1/chat/completions", "model": "sim", "backend": "b0", "status": "499"})
    assert aborted == 1.0  # the client did leave while its answer was being watermarked
    assert remaining < 90_000, remaining  # ≈ 100 000 - 17 001: charged; ≈ 99 000 had it been free
