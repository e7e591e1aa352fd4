"""The Lua hot path is a faithful port of ``gateway.ratelimit.admit``: replay a random request sequence run on
Redis through the Python GCRA at the same clock readings (Redis TIME, returned by the script) and require the
same decisions and numbers, request by request."""

from __future__ import annotations

import asyncio
import math
import random

import pytest

from gateway.config import StoreConfig
from gateway.ratelimit import admit
from gateway.store.base import AdmitRequest, Limits, RateDecision
from gateway.store.redis import RedisStore

TIERS = (
    Limits(requests_per_minute=6000, tokens_per_minute=60_000, burst_requests=3, burst_tokens=200),  # 10 ms, 1 ms
    Limits(requests_per_minute=700, tokens_per_minute=7_000, burst_requests=2, burst_tokens=50),  # fractional T
)


def same(redis_d: RateDecision, py_d: RateDecision) -> None:
    assert (redis_d.allowed, redis_d.limit, redis_d.remaining) == (py_d.allowed, py_d.limit, py_d.remaining)
    # the script reports whole microseconds: reset floored, retry-after rounded up
    assert redis_d.reset_s == pytest.approx(math.floor(py_d.reset_s * 1e6 + 1e-6) / 1e6, abs=1.5e-6)
    assert redis_d.retry_after_s == pytest.approx(math.ceil(py_d.retry_after_s * 1e6 - 1e-6) / 1e6, abs=1.5e-6)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_lua_matches_python_gcra(redis_url: str, seed: int) -> None:
    rng = random.Random(seed)
    store = RedisStore.from_config(StoreConfig(kind="redis", url=redis_url, timeout_ms=2000))
    tat_r = tat_k = 0.0
    tier = 0
    outcomes = set()
    try:
        for i in range(150):
            if i % 40 == 20:
                tier = 1 - tier
                await store.save_client_state("c", b"", tier, 0.0, 60)
            tokens = rng.choice([0, 1, 5, 40, 120, 260])  # 260 exceeds both token bursts
            res = await store.hot_path(AdmitRequest("c", tokens, TIERS))
            now_us = round(res.now * 1e6)
            py = admit(tat_r, tat_k, now_us, tokens, TIERS[tier])
            assert res.allowed == py.allowed and res.tier == tier
            same(res.requests, py.requests)
            same(res.tokens, py.tokens)
            tat_r, tat_k = py.tat_requests_us, py.tat_tokens_us
            outcomes.add((py.allowed, py.requests.allowed, py.tokens.allowed))
            if rng.random() < 0.3:
                await asyncio.sleep(rng.choice([0.001, 0.004, 0.012]))
    finally:
        await store.close()
    assert len(outcomes) >= 3, f"the sequence exercised too few paths: {outcomes}"
