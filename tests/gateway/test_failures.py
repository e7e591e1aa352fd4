"""Failure paths: client disconnect, upstream cut, retries before (and never after) the first byte,
idle timeout. Real sockets; the backends are the sim or small aiohttp apps."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import openai
import pytest
from aiohttp import web

from gateway.routing.router import Outcome
from tests.support.harness import GatewayHandle, SimHandle, app_backend, gateway_config, running_gateway, sim_backend
from tests.support.stall import OwnClock

MSG = [{"role": "user", "content": "Tell me a long story."}]


async def _settled(sim: SimHandle, deadline_s: float = 30.0) -> None:
    """Until the sim's one generation ended, aborted or completed (the deadline, generous for a loaded host, is
    no bound of what is tested: its times are asserted apart)."""
    end = time.monotonic() + deadline_s
    while not (sim.stats.aborted or sim.stats.completed) and time.monotonic() < end:
        await asyncio.sleep(0.005)


def client_on(gw: GatewayHandle, backend: str) -> str:
    """A client id whose sticky first choice is ``backend`` (equal weights: about every second id)."""
    for i in range(1000):
        lease = gw.ctx.router.acquire("sim", f"client-{i}")
        lease.release(Outcome(True, 200, 0.0))
        if lease.backend.name == backend:
            return f"client-{i}"
    raise AssertionError(f"no client id routes to {backend}")


async def test_client_disconnect_cancels_upstream_within_1s() -> None:
    async with sim_backend(tokens_per_s=20) as sim, running_gateway(gateway_config(sim.url)) as gw:
        async with aiohttp.ClientSession() as s:
            r = await s.post(gw.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {gw.token('a')}"},
                             json={"model": "sim", "messages": MSG, "max_tokens": 500, "stream": True})
            await r.content.readuntil(b"\n\n")
            await r.content.readuntil(b"\n\n")
            closed = OwnClock()
            r.close()  # drop the connection mid-stream
        await _settled(sim)  # aborted, or the 25 s generation completed
        assert sim.stats.aborted == 1 and sim.stats.completed == 0
        assert closed.elapsed(sim.stats.abort_times[0]) < 1.0  # less the host's load: not this test's to time
        await asyncio.sleep(0.05)
        backend = gw.ctx.router.pool("sim").backends[0]
        assert backend.in_flight == 0 and backend.failures == 0  # released, and not the backend's fault


async def test_disconnect_while_waiting_for_first_byte_cancels_upstream() -> None:
    async with sim_backend(latency_ms=5000) as sim, running_gateway(gateway_config(sim.url)) as gw:
        client = gw.openai_client()
        call = asyncio.create_task(client.chat.completions.create(model="sim", messages=MSG, max_tokens=5))
        # The client gives up once the request is at the backend, in its 5 s before the first byte (a client
        # timeout of its own could fire on a loaded host before the gateway had sent anything upstream)
        end = time.monotonic() + 30
        while not sim.stats.last_body and not call.done() and time.monotonic() < end:
            await asyncio.sleep(0.005)
        assert sim.stats.last_body and not call.done(), sim.stats
        gone = OwnClock()
        call.cancel()  # as on the SDK's timeout: the connection is closed before the answer
        with pytest.raises(asyncio.CancelledError):
            await call
        await client.close()
        await _settled(sim)  # aborted, or answered after its latency: the request was never cancelled
        assert sim.stats.aborted == 1 and sim.stats.completed == 0
        assert gone.elapsed(sim.stats.abort_times[0]) < 1.0  # less the host's load: not this test's to time


async def test_mid_stream_cut_reaches_client_as_error() -> None:
    async with sim_backend(cut_after=3) as sim, running_gateway(gateway_config(sim.url)) as gw:
        client = gw.openai_client()
        stream = await client.chat.completions.create(model="sim", messages=MSG, max_tokens=50, stream=True)
        got: list[str] = []
        with pytest.raises(openai.APIError) as info:
            async for chunk in stream:
                got.extend(c.delta.content or "" for c in chunk.choices)
        assert "ended before the response was complete" in info.value.message or "mid-stream" in info.value.message
        assert len([g for g in got if g]) == 3  # what was streamed before the cut did arrive
        assert sim.stats.cut == 1 and sim.stats.requests == 1  # never retried after the first byte
        await client.close()


async def test_cut_stream_raw_bytes_never_end_clean() -> None:
    async with sim_backend(cut_after=2) as sim, running_gateway(gateway_config(sim.url)) as gw:
        async with aiohttp.ClientSession() as s, s.post(
                gw.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {gw.token('a')}"},
                json={"model": "sim", "messages": MSG, "max_tokens": 50, "stream": True}) as r:
            raw = await r.read()
        assert b"[DONE]" not in raw
        last = raw.strip().split(b"\n\n")[-1]
        assert json.loads(last[len(b"data: "):])["error"]["code"] == "stream_interrupted"


async def test_retry_before_first_byte_goes_to_another_backend() -> None:
    async with sim_backend(fail_rate=1.0, fail_status=503) as bad, sim_backend() as good:
        cfg = gateway_config(bad.url, good.url, routing={"retries": 2, "retry_budget_ratio": 1.0})
        async with running_gateway(cfg) as gw:
            client = gw.openai_client()
            for i in range(6):  # sticky hashing puts some clients on the bad backend first
                c = gw.openai_client(f"client-{i}")
                r = await c.chat.completions.create(model="sim", messages=MSG, max_tokens=3)
                assert r.choices[0].message.content
                await c.close()
            await client.close()
        assert good.stats.completed == 6 and bad.stats.failed >= 1


async def test_unreachable_backend_is_retried_elsewhere() -> None:
    async with sim_backend() as good:
        cfg = gateway_config("http://127.0.0.1:9", good.url, routing={"retries": 1, "retry_budget_ratio": 1.0})
        async with running_gateway(cfg) as gw:
            for i in range(4):
                c = gw.openai_client(f"c{i}")
                s = await c.chat.completions.create(model="sim", messages=MSG, max_tokens=3, stream=True)
                assert [x async for x in s]
                await c.close()
        assert good.stats.completed == 4


async def test_no_retry_after_first_byte() -> None:
    """A stream that dies after bytes went out is not retried on the healthy second backend."""
    async with sim_backend(cut_after=1) as cutter, sim_backend() as good:
        cfg = gateway_config(cutter.url, good.url, routing={"retries": 2, "retry_budget_ratio": 1.0})
        async with running_gateway(cfg) as gw:
            client = gw.openai_client(client_on(gw, "b0"))  # sticks to the cutter; b1 would answer a retry
            stream = await client.chat.completions.create(model="sim", messages=MSG, max_tokens=20, stream=True)
            with pytest.raises(openai.APIError):
                async for _ in stream:
                    pass
            await client.close()
        assert cutter.stats.cut == 1 and good.stats.requests == 0


async def test_all_backends_failing_is_502_without_detail() -> None:
    async with sim_backend(fail_rate=1.0, fail_status=500) as bad, running_gateway(gateway_config(bad.url)) as gw:
        client = gw.openai_client()
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="sim", messages=MSG, max_tokens=3)
        assert info.value.status_code == 502
        assert "simulated failure" not in str(info.value)  # the backend's own message is not relayed
        await client.close()


async def test_idle_timeout_ends_stream_with_error() -> None:
    async with sim_backend(stall_after=2) as sim:
        cfg = gateway_config()
        cfg["models"] = [{"name": "sim", "backends": [{"name": "b0", "url": sim.url, "idle_timeout_s": 0.3}]}]
        async with running_gateway(cfg) as gw:
            client = gw.openai_client()
            stream = await client.chat.completions.create(model="sim", messages=MSG, max_tokens=20, stream=True)
            clock = OwnClock()
            with pytest.raises(openai.APIError):
                async for _ in stream:
                    pass
            assert clock.elapsed() < 2  # the 0.3 s idle timeout, not a stall for ever (less the host's load)
            await client.close()
        await _settled(sim)
        assert sim.stats.aborted == 1  # the stalled generation was cancelled at the backend too


async def test_upstream_4xx_passes_through() -> None:
    async def reject(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "context too long", "type": "invalid_request_error",
                                             "param": "messages", "code": "context_length_exceeded"}}, status=400)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", reject)
    async with app_backend(app) as url, running_gateway(gateway_config(url)) as gw:
        client = gw.openai_client()
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model="sim", messages=MSG)
        assert info.value.code == "context_length_exceeded"
        await client.close()


async def test_stream_dying_before_its_first_chunk_is_retried() -> None:
    """Headers are not the first byte: the client has received nothing yet, so another backend may answer."""
    hits = 0

    async def headers_then_die(request: web.Request) -> web.StreamResponse:
        nonlocal hits
        hits += 1
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        assert request.transport is not None
        request.transport.abort()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", headers_then_die)
    async with app_backend(app) as dying, sim_backend() as good:
        cfg = gateway_config(dying, good.url, routing={"retries": 1, "retry_budget_ratio": 1.0})
        async with running_gateway(cfg) as gw:
            client = gw.openai_client(client_on(gw, "b0"))  # first choice: the dying backend
            stream = await client.chat.completions.create(model="sim", messages=MSG, max_tokens=4, stream=True)
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            assert len(text.split()) == 4
            await client.close()
        assert hits == 1 and good.stats.completed == 1
