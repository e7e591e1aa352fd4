"""Upstream timeouts and which failed tries go to another backend (gateway/proxy/forward.py, gateway/route.py).

A non-streamed generation sends nothing until it is finished, so ``first_byte_timeout_s`` bounds the whole
answer: its default is the openai SDKs' own 600 s, and once it fires after the request was sent the try is
NOT repeated elsewhere (the generation may still be running; the same request would take as long again).
Failures before anything reached a backend, and a stream stalled before its first chunk, still are.
Real aiohttp servers as the backends, short timeouts, the official openai client where a client is needed.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from openai.types.chat import ChatCompletionMessageParam

from gateway.config import BackendConfig
from gateway.routing.router import Outcome
from tests.support.harness import GatewayHandle, app_backend, gateway_config, running_gateway, sim_backend
from tests.support.stall import OwnClock

COMPLETION = {"id": "c", "object": "chat.completion", "model": "sim", "created": 0, "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "Hello there."}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}
MSG: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Write a long essay."}]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _app(handler: Handler) -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    return app


def slow(calls: list[str], name: str, delay_s: float) -> Handler:
    """A non-streamed engine: nothing at all until its generation (``delay_s``) is finished."""
    async def chat(request: web.Request) -> web.Response:
        calls.append(name)
        await request.read()
        await asyncio.sleep(delay_s)
        return web.json_response(COMPLETION)
    return chat


def headers_then_stall(calls: list[str], name: str, content_type: str) -> Handler:
    """Response headers at once, then nothing (a body that never comes, or a stream without a first chunk)."""
    async def chat(request: web.Request) -> web.StreamResponse:
        calls.append(name)
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": content_type})
        await resp.prepare(request)
        await asyncio.sleep(30)  # cancelled when the gateway hangs up (handler_cancellation)
        return resp
    return chat


@asynccontextmanager
async def backends(*handlers: Handler) -> AsyncIterator[list[str]]:
    async with _many([_app(h) for h in handlers]) as urls:
        yield urls


@asynccontextmanager
async def _many(apps: list[web.Application]) -> AsyncIterator[list[str]]:
    if not apps:
        yield []
        return
    async with app_backend(apps[0]) as url, _many(apps[1:]) as rest:
        yield [url, *rest]


def _config(urls: list[str], *, retries: int = 2, consecutive_failures: int = 5, **timeouts: float
            ) -> dict[str, Any]:
    cfg = gateway_config(*urls, routing={"retries": retries, "retry_budget_ratio": 1.0,
                                         "health": {"interval_s": 30, "consecutive_failures": consecutive_failures}})
    for b in cfg["models"][0]["backends"]:
        b.update(timeouts)
    return cfg


def client_on(gw: GatewayHandle, backend: str) -> str:
    """A client id whose sticky first choice is ``backend``."""
    for i in range(1000):
        lease = gw.ctx.router.acquire("sim", f"client-{i}")
        lease.release(Outcome(True, 200, 0.0))
        if lease.backend.name == backend:
            return f"client-{i}"
    raise AssertionError(f"no client id routes to {backend}")


def state(gw: GatewayHandle, name: str) -> Any:
    return next(b for b in gw.ctx.router.pool("sim").backends if b.cfg.name == name)


def test_the_default_never_gives_up_before_the_openai_client() -> None:
    """60 s cut normal long answers (4 096 tokens at 40 tok/s take ~100 s) while the client still waited."""
    b = BackendConfig(name="b", url="http://127.0.0.1:8000")
    assert openai.DEFAULT_TIMEOUT.read == 600
    assert b.first_byte_timeout_s >= openai.DEFAULT_TIMEOUT.read
    assert b.idle_timeout_s == 60  # streams keep their per-chunk bound


async def test_a_non_streamed_answer_is_bounded_by_first_byte_timeout_not_idle_timeout() -> None:
    calls: list[str] = []
    async with backends(slow(calls, "b0", 0.5)) as urls, \
            running_gateway(_config(urls, first_byte_timeout_s=3, idle_timeout_s=0.1)) as gw:
        client = gw.openai_client()
        r = await client.chat.completions.create(model="sim", messages=MSG, max_tokens=4096)
        await client.close()
    assert r.choices[0].message.content == "Hello there." and calls == ["b0"]


async def test_a_whole_response_timeout_is_not_retried_on_another_backend() -> None:
    """Both backends generate for 5 s; the gateway's bound is 0.3 s with 2 retries configured. Before, the
    request ran on every backend in turn (3x the GPU work) and failed anyway; now one try, one 504, at once."""
    calls: list[str] = []
    async with backends(slow(calls, "b0", 5), slow(calls, "b1", 5)) as urls, \
            running_gateway(_config(urls, first_byte_timeout_s=0.3)) as gw:
        client = gw.openai_client()
        clock = OwnClock()  # the 0.3 s bound, answered at once (a busy host's CPU waits taken off)
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="sim", messages=MSG, max_tokens=4096)
        elapsed = clock.elapsed()
        await client.close()
        assert info.value.status_code == 504 and info.value.type == "timeout"
        assert len(calls) == 1, calls
        assert elapsed < 1.5, elapsed
        # the timed-out try is the backend's failure (passive health), reported once
        st = state(gw, calls[0])
        assert st.failures == 1 and st.last_error == "timeout" and st.in_flight == 0
        assert state(gw, "b1" if calls[0] == "b0" else "b0").failures == 0


async def test_a_body_that_stalls_after_its_headers_is_not_retried() -> None:
    calls: list[str] = []
    async with backends(headers_then_stall(calls, "b0", "application/json"),
                        headers_then_stall(calls, "b1", "application/json")) as urls, \
            running_gateway(_config(urls, first_byte_timeout_s=0.3)) as gw, aiohttp.ClientSession() as s, \
            s.post(gw.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {gw.token('a')}"},
                   json={"model": "sim", "messages": MSG, "max_tokens": 5}) as r:
        assert r.status == 504, await r.text()
        assert (await r.json())["error"]["type"] == "timeout"
    assert len(calls) == 1, calls


async def test_a_stream_stalled_before_its_first_chunk_still_goes_to_another_backend() -> None:
    """A stream's idle timeout before its first chunk is a queue or a stall the engine aborts when the gateway
    hangs up: another backend serves it."""
    calls: list[str] = []
    async with backends(headers_then_stall(calls, "b0", "text/event-stream")) as urls, sim_backend() as good, \
            running_gateway(_config([*urls, good.url], idle_timeout_s=0.3)) as gw:
        client = gw.openai_client(client_on(gw, "b0"))
        stream = await client.chat.completions.create(model="sim", messages=MSG, max_tokens=3, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        await client.close()
    assert text and calls == ["b0"] and good.stats.completed == 1


def _full_backlog() -> tuple[socket.socket, list[socket.socket]]:
    """A listener whose accept queue is full: the kernel drops further SYNs, so a connect hangs (a backend host
    that is down behind a firewall that drops, not refuses)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    fillers = []
    for _ in range(4):
        c = socket.socket()
        c.setblocking(False)
        with suppress(BlockingIOError):  # non-blocking: the handshake completes (or not) in the kernel
            c.connect(srv.getsockname())
        fillers.append(c)
    return srv, fillers


async def test_a_connect_timeout_is_retried_elsewhere() -> None:
    """Nothing reached the first backend: the try is safe to repeat."""
    srv, fillers = _full_backlog()
    try:
        await asyncio.sleep(0.05)
        blackhole = f"http://127.0.0.1:{srv.getsockname()[1]}"
        async with sim_backend() as good, \
                running_gateway(_config([blackhole, good.url], connect_timeout_s=0.2, first_byte_timeout_s=5)) as gw:
            client = gw.openai_client(client_on(gw, "b0"))
            r = await client.chat.completions.create(model="sim", messages=MSG, max_tokens=3)
            await client.close()
            assert r.choices[0].message.content and good.stats.completed == 1
            assert state(gw, "b0").failures == 1 and state(gw, "b0").last_error == "timeout"
    finally:
        for c in (srv, *fillers):
            c.close()


async def test_one_slow_answer_among_good_ones_does_not_eject_but_a_backend_that_never_answers_does() -> None:
    """A whole-response timeout is a failure the client saw (a 504): it counts for passive health and the
    canary's error rate. One slow answer between good ones resets nothing worse than one failure; a backend
    that times out ``consecutive_failures`` times in a row is ejected."""
    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        await asyncio.sleep(5 if body["max_tokens"] > 100 else 0)
        return web.json_response(COMPLETION)

    async with backends(chat) as urls, running_gateway(
            _config(urls, retries=0, consecutive_failures=2, first_byte_timeout_s=0.3)) as gw:
        client = gw.openai_client()
        for max_tokens in (4096, 5, 4096, 5, 4096):
            try:
                await client.chat.completions.create(model="sim", messages=MSG, max_tokens=max_tokens)
            except openai.APIStatusError as e:
                assert e.status_code == 504 and max_tokens == 4096
        assert state(gw, "b0").ejected_until == 0  # never two timeouts in a row
        with pytest.raises(openai.APIStatusError):
            await client.chat.completions.create(model="sim", messages=MSG, max_tokens=4096)
        assert state(gw, "b0").ejected_until > 0  # the second in a row: ejected
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="sim", messages=MSG, max_tokens=5)
        assert info.value.status_code == 503
        await client.close()
