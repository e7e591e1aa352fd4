"""A timeout that fired late because this process's event loop was busy is not a Redis outage.

A loaded host (the walkthrough: `ipgate serve --workers 2` at start-up, a 2-core host at load 3) ran the
store's 50 ms deadline after a CPU-bound stall of the event loop, while Redis had answered in time: the
connection was reset, the store declared unavailable for a second ("state store unavailable ... failure_mode
applies"), the degraded alert could fire, and the detector states kept meanwhile were dropped on recovery.
Now such a call takes the failure-mode answer alone; a deadline that fires on time (Redis hung) still degrades
the store (tests/store/test_e2e_failure_modes.py).
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from gateway.store.redis import RedisStore
from gateway.store.resilient import ResilientStore


async def test_a_late_timeout_does_not_declare_the_store_down(redis_url: str,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    inner = RedisStore(redis_url, timeout_s=0.05)
    store = ResilientStore(inner, failure_mode="local", timeout_ms=50, health_interval_s=60)
    await store.start()
    try:
        await store.save_client_state("warm", b"s", 0, 0.0, 60)  # connected, scripts loaded
        reconnects = inner.reconnects
        loop = asyncio.get_running_loop()
        with caplog.at_level(logging.WARNING):
            loop.call_soon(time.sleep, 0.2)  # the loop stalls for 4x the deadline right after the call is sent
            await store.save_client_state("c", b"state", 1, 0.5, 60)
        assert not store.degraded, "a busy event loop is not a Redis outage"
        assert not [r for r in caplog.records if "state store unavailable" in r.getMessage()]
        assert any("while the event loop was busy" in r.getMessage() for r in caplog.records)
        # the connection was kept (its late reply was dropped in order) and the next calls are served by Redis
        await store.save_client_state("c", b"state2", 1, 0.5, 60)
        rec = await store.get_client("c")
        assert rec is not None and rec.detector_tier == 1
        assert inner.reconnects == reconnects
    finally:
        await store.close()


async def test_a_deadline_that_fires_on_time_still_degrades(redis_url: str) -> None:
    """The contrast: a call that Redis does not answer within the deadline (here: a blocking command holds the
    single connection's replies back) degrades the store as before."""
    inner = RedisStore(redis_url, timeout_s=0.05)
    store = ResilientStore(inner, failure_mode="local", timeout_ms=50, health_interval_s=60)
    await store.start()
    try:
        blocker = asyncio.create_task(inner._mux.execute("BLPOP", "ipgate-test:never", "1"))
        await asyncio.sleep(0.01)
        await store.save_client_state("c", b"state", 1, 0.5, 60)  # its reply waits behind BLPOP's second
        assert store.degraded
        blocker.cancel()
        with pytest.raises((asyncio.CancelledError, Exception)):
            await blocker
    finally:
        await store.close()
