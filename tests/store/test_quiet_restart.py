"""A Redis restarted while no call was in flight (a quiet moment: a nightly maintenance restart, a managed
failover at low traffic) is not seen as an outage: the multiplexed connection just reconnects on the next
call. Redis may have come back empty all the same (no persistence), so whatever callers cached as "already
written" must be written again: the watermark recipients above all, or verification without a client list no
longer finds a client this gateway keeps serving. ``ResilientStore.recoveries`` now also counts such
reconnects, which is what those callers watch."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.config import StoreConfig, parse_config
from gateway.principal import Principal
from gateway.store.base import AdmitRequest, Limits
from gateway.store.redis import RedisStore
from gateway.store.resilient import ResilientStore
from gateway.watermarking import GatewayWatermarking, key_ring

LIMITS = (Limits(requests_per_minute=600, tokens_per_minute=10**6, burst_requests=100, burst_tokens=10**6),)


async def test_recipients_are_written_again_after_a_redis_restart_between_two_calls(redis_process: Any) -> None:
    cfg = parse_config({"models": [{"name": "m1", "backends": [{"name": "b", "url": "http://127.0.0.1:9"}]}],
                        "watermark": {"scheme": "lexical"}}, env={})
    wm = GatewayWatermarking(cfg, key_ring(cfg.watermark, b"unit-test-master-secret-0123"))
    scfg = StoreConfig(kind="redis", url=redis_process.url, failure_mode="local", timeout_ms=200.0,
                       health_interval_s=0.05)
    store = ResilientStore(RedisStore.from_config(scfg), failure_mode="local", timeout_ms=scfg.timeout_ms,
                           health_interval_s=scfg.health_interval_s)
    await store.start()
    try:
        await wm.record_recipient(store, Principal("alice"))
        assert await store.recipients() == {"alice": [wm.ring.current]}
        before = store.recoveries

        redis_process.restart()  # nothing in flight: no call fails, the data is gone
        await asyncio.sleep(0.05)  # the closed connection is noticed
        res = await store.hot_path(AdmitRequest("alice", 1, LIMITS))
        assert not res.degraded  # it reconnected on its own: never an outage

        await wm.record_recipient(store, Principal("alice"))  # alice is served again
        assert await store.recipients() == {"alice": [wm.ring.current]}  # was {}: alice lost for 200 days
        assert store.recoveries != before
    finally:
        await store.close()


async def test_an_idle_connection_that_stays_up_changes_nothing(redis_process: Any) -> None:
    store = ResilientStore(RedisStore(redis_process.url, timeout_s=0.2), failure_mode="local", timeout_ms=200.0)
    await store.start()
    try:
        await store.hot_path(AdmitRequest("a", 1, LIMITS))
        before = store.recoveries
        for _ in range(20):
            await store.hot_path(AdmitRequest("a", 1, LIMITS))
        assert store.recoveries == before  # one connection, no reason to write anything again
    finally:
        await store.close()
