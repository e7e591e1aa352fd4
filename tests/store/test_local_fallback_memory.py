"""The ``local`` failure mode's in-process store after an outage (found by the soak's heap probe,
docs/soak-memory.md): the detector states saved locally while Redis was away (~7 KB per client active during
the outage) stayed in the gateway for their whole TTL (7 days by default) after Redis came back, and a later
outage resumed them, stale. They are dropped when the store recovers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from gateway.config import StoreConfig
from gateway.store.base import AdmitRequest, Limits
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore
from gateway.store.resilient import ResilientStore

LIMITS = (Limits(requests_per_minute=6000, tokens_per_minute=10**6, burst_requests=100, burst_tokens=10**6),)
STATE = b"\x01" * 7000  # the size of a real detector envelope


async def _until(cond: Any, what: str, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not cond():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def test_local_states_from_an_outage_are_dropped_when_redis_is_back(redis_process: Any) -> None:
    cfg = StoreConfig(kind="redis", url=redis_process.url, failure_mode="local", timeout_ms=50.0,
                      health_interval_s=0.05)
    local = MemoryStore()
    store = ResilientStore(RedisStore.from_config(cfg), failure_mode="local", timeout_ms=cfg.timeout_ms,
                           health_interval_s=cfg.health_interval_s, local=local)
    await store.start()
    try:
        redis_process.kill()
        for i in range(200):
            await store.save_client_state(f"c{i}", STATE, 0, 0.0, 7 * 86400.0)
        assert store.degraded and len(local._state) == 200  # the outage's states live here meanwhile
        res = await store.hot_path(AdmitRequest("c7", 10, LIMITS, 60.0))
        assert res.degraded and res.detector_state == STATE  # and detection goes on from them

        redis_process.start()
        await _until(lambda: not store.degraded, "recovery")
        assert len(local._state) == 0  # kept for 7 days before

        redis_process.kill()  # the next outage starts the client fresh, not from the last outage's copy
        res = await store.hot_path(AdmitRequest("c7", 10, LIMITS, 60.0))
        assert res.degraded and res.detector_state is None
    finally:
        await store.close()
