"""The ``local`` failure mode on recovery: a tier a client reached during the outage reaches Redis.

Before the fix, the detector states saved in process memory during a Redis outage were dropped when Redis came
back, so a client that detection escalated during the outage (throttle, block) went back to its pre-outage tier
on its next request, and the detector resumed from the pre-outage state (which never saw the outage's
requests). Now, before the store is declared healthy again, every local state above tier 0 whose tier is higher
than the one Redis holds (or for which Redis holds nothing, e.g. restarted without persistence) is written to
Redis.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis

from gateway.config import StoreConfig
from gateway.store.base import AdmitRequest, Limits
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore
from gateway.store.resilient import ResilientStore

LIMITS = tuple(
    Limits(requests_per_minute=6000, tokens_per_minute=10**6, burst_requests=100, burst_tokens=10**6)
    for _ in range(4)
)
DAY = 86400.0


async def _until(cond: Any, what: str, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not cond():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


def _store(url: str) -> tuple[ResilientStore, MemoryStore]:
    cfg = StoreConfig(kind="redis", url=url, failure_mode="local", timeout_ms=50.0, health_interval_s=0.05)
    local = MemoryStore()
    return ResilientStore(RedisStore.from_config(cfg), failure_mode="local", timeout_ms=cfg.timeout_ms,
                          health_interval_s=cfg.health_interval_s, local=local), local


async def test_a_tier_reached_during_a_local_outage_is_written_back_on_recovery(redis_process: Any) -> None:
    store, local = _store(redis_process.url)
    await store.start()
    try:
        # before the outage: both clients known to Redis; "hot" at tier 0, "flagged" already at throttle (2)
        await store.save_client_state("hot", b"pre-outage", 0, 0.1, DAY)
        await store.save_client_state("flagged", b"flagged-pre", 2, 0.9, DAY)
        await store.save_client_state("calm", b"calm-pre", 1, 0.5, DAY)
        redis_process.pause()  # hung: the data stays, nothing answers
        res = await store.hot_path(AdmitRequest("hot", 10, LIMITS, DAY))
        assert res.degraded
        # detection escalates "hot" to block (3) during the outage; "flagged" and "calm" score lower locally
        await store.save_client_state("hot", b"outage-state", 3, 0.99, DAY)
        await store.save_client_state("flagged", b"flagged-outage", 0, 0.0, DAY)
        await store.save_client_state("calm", b"calm-outage", 1, 0.4, DAY)
        assert (await store.hot_path(AdmitRequest("hot", 10, LIMITS, DAY))).tier == 3

        redis_process.resume()
        await _until(lambda: not store.degraded, "recovery")
        res = await store.hot_path(AdmitRequest("hot", 10, LIMITS, DAY))
        assert not res.degraded
        assert (res.tier, res.detector_state) == (3, b"outage-state")  # was (0, b"pre-outage")
        rec = await store.get_client("hot")
        assert rec is not None and rec.detector_tier == 3 and rec.score == 0.99
        # a higher (or equal) tier in Redis wins: the outage's fresh local state does not lower it
        res = await store.hot_path(AdmitRequest("flagged", 10, LIMITS, DAY))
        assert (res.tier, res.detector_state) == (2, b"flagged-pre")
        res = await store.hot_path(AdmitRequest("calm", 10, LIMITS, DAY))
        assert (res.tier, res.detector_state) == (1, b"calm-pre")
        assert len(local._state) == 0  # and the local copies are still dropped
        with redis.Redis(port=redis_process.port) as r:
            ttl = r.pttl("ipgate:{hot}:st")
        assert DAY * 1000 - 60_000 < ttl <= DAY * 1000  # the written-back state keeps its TTL
    finally:
        await store.close()


async def test_an_escalation_survives_a_redis_restart_that_lost_the_data(redis_process: Any) -> None:
    store, _ = _store(redis_process.url)
    await store.start()
    try:
        await store.save_client_state("hot", b"pre-outage", 0, 0.1, DAY)
        redis_process.kill()
        assert (await store.hot_path(AdmitRequest("hot", 10, LIMITS, DAY))).degraded
        await store.save_client_state("hot", b"outage-state", 2, 0.8, DAY)
        await store.save_client_state("benign", b"benign-state", 0, 0.0, DAY)
        redis_process.start()  # empty: no persistence
        await _until(lambda: not store.degraded, "recovery")
        res = await store.hot_path(AdmitRequest("hot", 10, LIMITS, DAY))
        assert (res.degraded, res.tier, res.detector_state) == (False, 2, b"outage-state")
        # only escalations are carried over: a tier-0 state costs Redis a write per client and protects nothing
        assert await store.get_client("benign") is None
    finally:
        await store.close()


async def test_a_key_the_write_back_cannot_read_does_not_keep_the_store_degraded(
        redis_process: Any, caplog: pytest.LogCaptureFixture) -> None:
    """An error reply about one client's key (not an outage) skips that client; the store recovers."""
    store, _ = _store(redis_process.url)
    await store.start()
    try:
        redis_process.kill()
        assert (await store.hot_path(AdmitRequest("hot", 10, LIMITS, DAY))).degraded
        await store.save_client_state("hot", b"outage-state", 2, 0.8, DAY)
        redis_process.start()
        with redis.Redis(port=redis_process.port) as r:
            r.hset("ipgate:{hot}:st", mapping={"t": "x"})  # a value the merge script cannot read (an error reply)
        await _until(lambda: not store.degraded, "recovery")  # an error reply about one key is not an outage
        res = await store.hot_path(AdmitRequest("other", 10, LIMITS, DAY))
        assert not res.degraded
        assert any("could not write back client 'hot'" in r.getMessage() for r in caplog.records)
    finally:
        await store.close()


async def test_merge_client_state_writes_only_above_the_stored_tier(store: Any) -> None:
    """The write-back's Lua script on a standalone Redis and on a Redis Cluster (the state key's slot)."""
    if isinstance(store, MemoryStore):
        pytest.skip("the merge is the Redis store's (the memory store is the outage's copy itself)")
    assert await store.merge_client_state("{odd}%id", b"first", 1, 0.5, 60.0)  # no state yet: written
    assert not await store.merge_client_state("{odd}%id", b"lower", 1, 0.4, 3600.0)  # same tier: kept
    assert await store.merge_client_state("{odd}%id", b"higher", 2, 0.8, 30.0)
    res = await store.hot_path(AdmitRequest("{odd}%id", 1, LIMITS, 0.0))
    assert (res.tier, res.detector_state) == (2, b"higher")
    rec = await store.get_client("{odd}%id")
    assert rec is not None and rec.score == 0.8
    with pytest.raises(ValueError):
        await store.merge_client_state("c", b"x" * 40_000, 2, 0.0, 60.0)


async def test_a_prober_blocked_during_an_outage_stays_blocked_after_it(redis_process: Any) -> None:
    """The pipeline's detection steps (hot_path -> real engine -> account) on the resilient store: a logit
    prober that detection blocks while Redis is away is still blocked by Redis's answer once it is back."""
    from prometheus_client import CollectorRegistry

    from detectors.combiner import CombinerParams
    from detectors.engine import Engine
    from gateway.config import parse_config
    from gateway.detection import GatewayDetection
    from gateway.hooks import ResponseFacts
    from gateway.policy import Policy
    from gateway.principal import Principal
    from gateway.telemetry.metrics import Metrics

    cfg = parse_config({"models": [{"name": "sim", "backends": [{"name": "a", "url": "http://x"}]}]}, env={})
    policy = Policy.from_config(cfg)
    params = CombinerParams(intercept=-6.0, weights={"logit_probing": 14.0, "templates": 10.0, "coverage": 4.0,
                                                     "volume": 4.0, "timing": 3.0, "reasoning": 6.0,
                                                     "linking": 8.0})
    det = GatewayDetection(Engine.from_params(params), policy, cfg.detection, metrics=Metrics(CollectorRegistry()))
    store, _ = _store(redis_process.url)
    await store.start()

    async def send(i: int) -> tuple[int, bool]:
        body = {"model": "sim", "messages": [{"role": "user", "content": "Say hi to order 1234"}],
                "max_tokens": 1, "logprobs": True, "top_logprobs": 20,
                "logit_bias": {str(1000 + 50 * i + j): 100 for j in range(50)}}
        res = await store.hot_path(AdmitRequest("prober", 10, policy.limits_by_tier, cfg.detection.state_ttl_s))
        s = det.observe(Principal("prober"), "/v1/chat/completions", body, res.detector_state, res.tier,
                        1000.0 + i, override=res.override)
        await s.account(store, ResponseFacts(status=200, prompt_tokens=9, completion_tokens=1))
        return max(res.tier, s.outcome.tier), res.degraded

    try:
        assert await send(0) == (0, False)  # known to Redis at tier 0 before the outage
        redis_process.kill()
        tiers = [await send(i) for i in range(1, 26)]
        assert all(d for _, d in tiers) and tiers[-1][0] == 3, tiers  # blocked in local mode
        redis_process.start()
        await _until(lambda: not store.degraded, "recovery")
        res = await store.hot_path(AdmitRequest("prober", 10, policy.limits_by_tier, cfg.detection.state_ttl_s))
        assert (res.degraded, res.tier) == (False, 3)  # was 0: the prober started over on a clean slate
        assert policy.tier(res.tier).block
        assert await send(26) == (3, False)  # and detection goes on from the outage's state
    finally:
        await store.close()
