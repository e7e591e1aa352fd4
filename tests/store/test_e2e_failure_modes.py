"""Through the real gateway: Redis killed or SIGSTOPped during traffic, under each failure mode.

Chat requests go through the gateway (JWT auth, the full pipeline) to the bundled simulated backend while the
gateway's Redis is killed or paused: every request is answered promptly with the mode's status, /metrics shows
the degradation, and the gateway recovers on its own when Redis is back.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from gateway.store.resilient import ResilientStore
from tests.support.harness import gateway_config, running_gateway, sim_backend
from tests.support.stall import OwnClock

TIMEOUT_MS = 50
BODY = {"model": "sim", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
# local mode: burst 4 shared by local_replicas=2 → 2 per process while degraded
EXPECT = {"open": [200] * 5, "closed": [503] * 5, "local": [200, 200, 429, 429, 429]}


@pytest.mark.parametrize("mode", ["open", "closed", "local"])
@pytest.mark.parametrize("fault", ["kill", "pause"])
async def test_gateway_under_redis_fault(redis_process: Any, mode: str, fault: str) -> None:
    async with sim_backend() as sim:
        cfg = gateway_config(
            sim.url,
            store={"kind": "redis", "url": redis_process.url, "failure_mode": mode, "timeout_ms": TIMEOUT_MS,
                   "health_interval_s": 0.05, "local_replicas": 2},
            limits={"default": {"requests_per_minute": 1, "tokens_per_minute": 10**7, "burst_requests": 4},
                    "suspicious": {"requests_per_minute": 1, "tokens_per_minute": 1000}},
        )
        async with running_gateway(cfg) as gw, aiohttp.ClientSession() as http:
            headers = {"Authorization": f"Bearer {gw.token('alice')}"}

            async def chat() -> tuple[int, dict[str, str], float]:
                clock = OwnClock()  # (the gateway runs on this loop: a busy host's CPU waits are taken off)
                async with http.post(gw.url + "/v1/chat/completions", json=BODY, headers=headers) as r:
                    await r.read()
                    return r.status, dict(r.headers), clock.elapsed()

            store = gw.ctx.store
            assert isinstance(store, ResilientStore)
            assert not store.degraded, "a healthy Redis at start-up must not start the gateway degraded"
            assert (await chat())[0] == 200
            getattr(redis_process, fault)()
            answers = [await chat() for _ in range(5)]
            assert [s for s, _, _ in answers] == EXPECT[mode]
            # the first request pays at most the store timeout; the rest do not touch Redis at all
            assert max(t for _, _, t in answers) < TIMEOUT_MS / 1000 + 0.25
            assert sum(t for _, _, t in answers[1:]) < 0.5
            for status, h, _ in answers:
                if status in (429, 503):
                    assert int(h["Retry-After"]) >= 1
            async with http.get(gw.admin_url + "/metrics") as r:
                text = await r.text()
            assert "ipgate_store_degraded 1.0" in text
            assert 'ipgate_store_failures_total{op="hot_path"}' in text

            if fault == "pause":
                redis_process.resume()
            else:
                redis_process.restart()
            deadline = time.monotonic() + 5
            while store.degraded:
                assert time.monotonic() < deadline, "the gateway did not recover on its own"
                await asyncio.sleep(0.02)
            assert (await chat())[0] == 200
