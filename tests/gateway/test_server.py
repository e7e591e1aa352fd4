"""``ipgate serve`` as a real process: SIGTERM drain, SIGHUP reload, two processes sharing one Redis."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.support.harness import app_backend, gateway_config, sim_backend
from tests.support.process import GatewayProcess

MSG = [{"role": "user", "content": "Write a long essay about rivers."}]


def _config(*urls: str, **over: Any) -> dict[str, Any]:
    cfg = gateway_config(*urls, **over)
    cfg["auth"]["jwt"].pop("secret_file", None)
    return cfg


async def _stream(url: str, token: str, max_tokens: int) -> tuple[bytes, aiohttp.ClientResponse]:
    s = aiohttp.ClientSession()
    r = await s.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {token}"},
                     json={"model": "sim", "messages": MSG, "max_tokens": max_tokens, "stream": True})
    first = await r.content.readuntil(b"\n\n")
    r._session_for_test = s  # type: ignore[attr-defined]
    return first, r


async def _rest(r: aiohttp.ClientResponse) -> bytes:
    try:
        return await r.read()
    finally:
        await r._session_for_test.close()  # type: ignore[attr-defined]


async def test_sigterm_drains_then_ends_streams_with_error(tmp_path: Path) -> None:
    async with sim_backend(tokens_per_s=20) as sim:
        gw = GatewayProcess(_config(sim.url, server={"drain_timeout_s": 1.0}), tmp_path).start()
        try:
            _, long_stream = await _stream(gw.url, gw.token("a"), 400)  # 20 s of tokens: outlives the drain
            _, short_stream = await _stream(gw.url, gw.token("b"), 8)  # finishes within the drain
            t0 = time.monotonic()
            gw.signal(signal.SIGTERM)
            for _ in range(50):
                if gw.ready() == 503:
                    break
                await asyncio.sleep(0.01)
            assert gw.ready() == 503  # readiness flips at once
            await asyncio.sleep(0.2)
            with pytest.raises(aiohttp.ClientConnectionError):  # no new connections
                async with aiohttp.ClientSession() as s:
                    await s.get(gw.url + "/v1/models")
            short = await _rest(short_stream)
            assert short.endswith(b"data: [DONE]\n\n")
            long = await _rest(long_stream)
            elapsed = time.monotonic() - t0
            assert b"[DONE]" not in long
            last = json.loads(long.strip().split(b"\n\n")[-1][len(b"data: "):])
            assert last["error"]["code"] == "server_shutdown"
            assert 0.9 < elapsed < 5
            assert await asyncio.to_thread(gw.wait, 10) == 0
        finally:
            gw.stop()
        assert "Traceback" not in gw.output() and "SIGTERM: draining" in gw.output()


async def test_ctrl_c_drains_the_same_way_and_says_so(tmp_path: Path) -> None:
    async with sim_backend() as sim:
        gw = GatewayProcess(_config(sim.url), tmp_path).start()
        try:
            gw.signal(signal.SIGINT)
            assert await asyncio.to_thread(gw.wait, 10) == 0
        finally:
            gw.stop()
        assert "SIGINT: draining" in gw.output() and "SIGTERM" not in gw.output()


async def test_sighup_reloads_weights_without_dropping_streams(tmp_path: Path) -> None:
    async with sim_backend(tokens_per_s=50) as a, sim_backend() as b:
        cfg = _config(a.url, b.url)
        cfg["models"][0]["backends"][1]["weight"] = 0
        gw = GatewayProcess(cfg, tmp_path).start()
        try:
            _, inflight = await _stream(gw.url, gw.token("x"), 30)  # on backend a, still running at reload
            cfg["models"][0]["backends"][0]["weight"] = 0
            cfg["models"][0]["backends"][1]["weight"] = 1
            gw.write_config(cfg)
            gw.signal(signal.SIGHUP)
            await asyncio.sleep(0.5)
            async with aiohttp.ClientSession() as s:
                for i in range(3):
                    async with s.post(gw.url + "/v1/chat/completions",
                                      headers={"Authorization": f"Bearer {gw.token(f'c{i}')}"},
                                      json={"model": "sim", "messages": MSG, "max_tokens": 2}) as r:
                        assert r.status == 200
            assert b.stats.completed == 3
            assert (await _rest(inflight)).endswith(b"data: [DONE]\n\n")
            assert a.stats.completed == 1 and a.stats.aborted == 0
        finally:
            gw.stop()


@pytest.mark.redis
async def test_two_processes_share_one_redis_limit_exactly(tmp_path: Path, redis_url: str) -> None:
    burst = 10
    async with sim_backend() as sim:
        cfg = _config(sim.url, store={"kind": "redis", "url": redis_url, "failure_mode": "closed"},
                      limits={"default": {"requests_per_minute": 1, "tokens_per_minute": 10_000_000,
                                          "burst_requests": burst, "burst_tokens": 1_000_000},
                              "suspicious": {"requests_per_minute": 1, "tokens_per_minute": 1}})
        g1 = GatewayProcess(cfg, tmp_path).start()
        g2 = GatewayProcess(cfg, tmp_path).start()
        try:
            token = g1.token("shared-client")
            async with aiohttp.ClientSession() as s:
                async def one(url: str) -> int:
                    async with s.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {token}"},
                                      json={"model": "sim", "messages": MSG, "max_tokens": 1}) as r:
                        await r.read()
                        return r.status
                statuses = await asyncio.gather(*[one(g.url) for _ in range(15) for g in (g1, g2)])
        finally:
            g1.stop()
            g2.stop()
        assert statuses.count(200) == burst and statuses.count(429) == 30 - burst


async def test_workers_share_the_port_and_aggregate_metrics(tmp_path: Path) -> None:
    async with sim_backend() as sim:
        gw = GatewayProcess(_config(sim.url), tmp_path, workers=2).start()
        try:
            pids: set[int] = set()
            for _ in range(200):  # both workers up: new connections reach each of them
                async with aiohttp.ClientSession() as fresh, fresh.get(gw.admin_url + "/readyz") as r:
                    if r.status == 200:
                        pids.add((await r.json())["pid"])
                if len(pids) == 2:
                    break
                await asyncio.sleep(0.05)
            assert len(pids) == 2, gw.output()
            async with aiohttp.ClientSession() as s:
                async def one(i: int) -> int:
                    async with aiohttp.ClientSession() as fresh, fresh.post(  # new connections spread over workers
                            gw.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {gw.token(f'w{i}')}"},
                            json={"model": "sim", "messages": MSG, "max_tokens": 1}) as r:
                        await r.read()
                        return r.status
                assert await asyncio.gather(*[one(i) for i in range(20)]) == [200] * 20
                async with s.get(gw.admin_url + "/metrics") as r:
                    text = await r.text()
            total = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                        if line.startswith("ipgate_requests_total{"))
            assert total == 20  # counted across both workers
            gw.signal(signal.SIGTERM)
            assert await asyncio.to_thread(gw.wait, 15) == 0, gw.output()
        finally:
            gw.stop()


async def test_a_request_cut_at_the_drain_deadline_is_told_to_retry_elsewhere(tmp_path: Path) -> None:
    """The 503 for a non-streamed request still running at the drain deadline carries Retry-After and
    Connection: close, as the 503 for a request arriving during the drain does (the SDKs retry on it, and must
    not reuse a connection to a process that is going away)."""
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(30)  # still generating at the deadline
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", slow)
    async with app_backend(app) as url:
        gw = GatewayProcess(_config(url, server={"drain_timeout_s": 1.0}), tmp_path).start()
        try:
            body = {"model": "sim", "max_tokens": 40, "messages": [{"role": "user", "content": "hi"}]}
            async with aiohttp.ClientSession() as s:
                call = asyncio.create_task(s.post(gw.url + "/v1/chat/completions", json=body,
                                                  headers={"Authorization": f"Bearer {gw.token('a')}"}))
                await asyncio.sleep(0.5)  # in flight at the backend (20 s of tokens)
                gw.signal(signal.SIGTERM)
                r = await call
                assert r.status == 503 and (await r.json())["error"]["code"] == "draining"
                assert r.headers["Retry-After"] == "1" and r.headers["Connection"].lower() == "close"
            assert await asyncio.to_thread(gw.wait, 10) == 0
        finally:
            gw.stop()
