"""Review session 14c: holes in the store fixes of 2026-11-27 (override index, write-back, late timeouts).

- A read of the override index that was in flight while ``set_override`` ran replaced the process's copy with
  its older snapshot: a client denied a moment before an outage was admitted by that process for the outage.
- ``overrides()`` paged the index by offset, recomputing "now" per page: an override cleared or expired between
  two pages shifted the rest left, and as many live overrides were skipped (denied clients missing).
- A Redis hang while the event loop stayed busy was never declared an outage (every timeout fired late).
- A late timeout (busy event loop, store NOT degraded) in failure mode ``local`` stored the detector state in
  process memory; a later outage's write-back raised Redis to that stale tier.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis
from redis.exceptions import ResponseError

from gateway.config import StoreConfig
from gateway.store.base import AdmitRequest, Limits
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore
from gateway.store.resilient import ResilientStore

LIMITS = tuple(
    Limits(requests_per_minute=600, tokens_per_minute=10**6, burst_requests=100, burst_tokens=10**6)
    for _ in range(4)
)


async def _until(cond: Any, what: str, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not cond():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def test_an_index_read_in_flight_does_not_undo_a_deny_set_meanwhile(redis_process: Any) -> None:
    cfg = StoreConfig(kind="redis", url=redis_process.url, failure_mode="open", timeout_ms=100.0,
                      health_interval_s=0.05)
    inner = RedisStore.from_config(cfg)
    store = ResilientStore(inner, failure_mode="open", timeout_ms=100.0, health_interval_s=0.05,
                           overrides_refresh_s=3600.0)
    await store.start()
    try:
        await store.set_override("someone", "deny", None, 3600.0)
        real = inner.overrides
        read, go = asyncio.Event(), asyncio.Event()

        async def in_flight() -> Any:
            snap = await real()  # read before the deny below
            read.set()
            await go.wait()
            return snap

        inner.overrides = in_flight  # type: ignore[method-assign]
        refresh = asyncio.create_task(store._refresh_overrides())
        await read.wait()
        await store.set_override("mallory", "deny", None, 3600.0)  # this process itself, after the read
        go.set()
        await refresh
        redis_process.kill()
        res = await store.hot_path(AdmitRequest("mallory", 1, LIMITS))
        assert res.degraded and not res.allowed, "denied a moment before the outage: stays denied"
    finally:
        await store.close()


async def test_the_index_read_skips_nothing_when_overrides_leave_between_pages(redis_process: Any) -> None:
    cfg = StoreConfig(kind="redis", url=redis_process.url, failure_mode="open", timeout_ms=500.0)
    store = RedisStore.from_config(cfg)
    admin = RedisStore.from_config(cfg)
    try:
        early = [f"early{i}" for i in range(100)]
        denied = [f"deny{i}" for i in range(1100)]
        for c in early:
            await store.set_override(c, "allow", None, 600.0)  # expire first: the front of the index
        for c in denied:
            await store.set_override(c, "deny", None, 3600.0)
        real = store._mux.execute
        pages = 0

        async def execute(*args: Any) -> Any:
            nonlocal pages
            out = await real(*args)
            if args[0] in ("ZRANGEBYSCORE", "ZSCAN"):
                pages += 1
                if pages == 1:  # another process lifts the early overrides while this one reads
                    for c in early:
                        await admin.set_override(c, None, None, 0.0)
            return out

        store._mux.execute = execute  # type: ignore[method-assign]
        got = await store.overrides()
        assert set(denied) <= set(got), f"{len(set(denied) - set(got))} denied clients missing from the copy"
    finally:
        await store.close()
        await admin.close()


async def test_a_late_timeout_keeps_no_local_state_for_a_later_write_back(redis_process: Any) -> None:
    cfg = StoreConfig(kind="redis", url=redis_process.url, failure_mode="local", timeout_ms=50.0,
                      health_interval_s=0.05)
    local = MemoryStore()
    store = ResilientStore(RedisStore.from_config(cfg), failure_mode="local", timeout_ms=50.0,
                           health_interval_s=0.05, local=local)
    await store.start()
    try:
        await store.save_client_state("warm", b"s", 0, 0.0, 600)
        loop = asyncio.get_running_loop()
        loop.call_soon(time.sleep, 0.2)  # a busy loop: the deadline fires late, Redis answered in time
        await store.save_client_state("c", b"old-escalation", 2, 0.9, 3600)
        assert not store.degraded
        await store.save_client_state("c", b"newer", 1, 0.4, 3600)  # detection lowered the client since
        redis_process.pause()
        await store.hot_path(AdmitRequest("other", 1, LIMITS))
        assert store.degraded
        redis_process.resume()
        await _until(lambda: not store.degraded, "recovery")
        with redis.Redis(port=redis_process.port) as r:
            st = r.hgetall("ipgate:{c}:st")
        assert st[b"s"] == b"newer" and st[b"t"] == b"1", "a stale local copy from a late timeout was written back"
    finally:
        await store.close()


async def test_a_hung_redis_is_an_outage_even_while_the_loop_stays_busy(redis_process: Any) -> None:
    """The late-timeout rule hid a hang: with Redis stopped and every call meeting a stalled loop (a saturated
    host), each timeout fired late, so the store was never declared down (no probe, no degraded gauge)."""
    cfg = StoreConfig(kind="redis", url=redis_process.url, failure_mode="local", timeout_ms=50.0,
                      health_interval_s=0.05)
    store = ResilientStore(RedisStore.from_config(cfg), failure_mode="local", timeout_ms=50.0,
                           health_interval_s=0.05)
    await store.start()
    try:
        await store.hot_path(AdmitRequest("warm", 1, LIMITS))
        redis_process.pause()
        loop = asyncio.get_running_loop()
        for i in range(15):  # 15 x 0.12 s: late timeouts and not one success for well over LATE_STREAK_S
            loop.call_soon(time.sleep, 0.12)
            assert (await store.hot_path(AdmitRequest(f"c{i}", 1, LIMITS))).degraded
        assert store.degraded, "no call succeeded for ~2 s: an outage, not a busy loop"
        redis_process.resume()
        await _until(lambda: not store.degraded, "recovery once Redis answers")
    finally:
        redis_process.resume()
        await store.close()


async def test_a_failed_lift_leaves_the_deny_in_the_index(redis_process: Any) -> None:
    """Lifting an override removed the index entry first, then the override: a failure in between (here: an ACL
    that refuses DEL) left the deny in force on the hot path but gone from the index the failure modes read,
    and the administrator was told it was not lifted: still denied, except by the processes that never served
    the client during an outage."""
    with redis.Redis(port=redis_process.port) as r:
        r.execute_command("ACL", "SETUSER", "nodel", "on", ">pw", "~*", "+@all", "-del")
    url = redis_process.url.replace("redis://", "redis://nodel:pw@")
    admin = RedisStore.from_config(StoreConfig(kind="redis", url=redis_process.url, timeout_ms=500.0))
    await admin.set_override("mallory", "deny", None, 3600.0)
    await admin.close()
    store = RedisStore.from_config(StoreConfig(kind="redis", url=url, timeout_ms=500.0))
    try:
        with pytest.raises(ResponseError, match="NOPERM"):  # refused, as the administrator is told
            await store.set_override("mallory", None, None, 3600.0)
        with redis.Redis(port=redis_process.port) as r:
            in_force = r.exists("ipgate:{mallory}:ov")
            listed = r.zscore("ipgate:overrides", "mallory") is not None
        assert not in_force or listed, "a deny still in force must stay in the index"
        assert "mallory" in await store.overrides() or not in_force
    finally:
        await store.close()


async def test_a_process_started_during_an_outage_reads_the_overrides_once_redis_answers(
        redis_process: Any) -> None:
    """Started while Redis was down (a host or cluster restart brings both up together), a process read the
    override index only at its next 30 s tick after recovery: an outage in between admitted denied clients."""
    cfg = StoreConfig(kind="redis", url=redis_process.url, failure_mode="local", timeout_ms=100.0,
                      health_interval_s=0.3)
    redis_process.kill()
    store = ResilientStore(RedisStore.from_config(cfg), failure_mode="local", timeout_ms=100.0,
                           health_interval_s=0.3)  # the default overrides_refresh_s (30 s)
    await store.start()
    try:
        assert store.degraded
        redis_process.start()
        admin = RedisStore.from_config(cfg)
        await admin.set_override("mallory", "deny", None, 3600.0)
        await admin.close()
        await _until(lambda: not store.degraded, "recovery")
        await _until(lambda: "mallory" in store._overrides, "the index read once Redis answers", within_s=3.0)
    finally:
        await store.close()


async def test_late_timeouts_far_apart_on_an_idle_gateway_are_no_outage(redis_url: str) -> None:
    """The streak rule above must not turn two isolated busy moments, with no call in between, into an outage."""
    store = ResilientStore(RedisStore(redis_url, timeout_s=0.05), failure_mode="local", timeout_ms=50,
                           health_interval_s=60)
    await store.start()
    try:
        await store.save_client_state("warm", b"s", 0, 0.0, 60)
        loop = asyncio.get_running_loop()
        for _ in range(2):
            loop.call_soon(time.sleep, 0.15)
            await store.save_client_state("c", b"state", 1, 0.5, 60)
            assert not store.degraded
            await asyncio.sleep(1.1)  # idle: no call at all
    finally:
        await store.close()
