"""MemoryStore specifics: expiry frees memory (lazy + sweep), the size cap, the monotonic clock."""

from __future__ import annotations

import time

import pytest

from gateway.config import StoreConfig
from gateway.store.base import AdmitRequest, Limits
from gateway.store.factory import open_store
from gateway.store.memory import MemoryStore, monotonic_wall_clock
from gateway.store.ttlmap import TtlMap

S = 1_000_000
LIM = (Limits(requests_per_minute=60, tokens_per_minute=6000, burst_requests=2, burst_tokens=100),)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000 * S

    def __call__(self) -> int:
        return self.now


async def test_expired_entries_are_swept_without_being_read() -> None:
    clock = FakeClock()
    s = MemoryStore(clock=clock)
    for i in range(500):
        await s.hot_path(AdmitRequest(f"c{i}", 10, LIM))
        await s.save_client_state(f"c{i}", b"x", 1, 0.5, ttl_s=30)
        await s.link_sketches(f"c{i}", [i], ttl_s=30)
    assert len(s._rl) == 500 and len(s._state) == 500 and len(s._sketch) == 500
    clock.now += 5 * S  # rate-limit buckets are full again after 1 s (+1 s grace)
    await s.get_blob("tick")  # any operation runs the (at most once a second) sweep
    assert len(s._rl) == 0 and len(s._state) == 500
    clock.now += 60 * S
    await s.get_blob("tick")
    assert len(s._state) == 0 and len(s._sketch) == 0
    assert all(not m._wheel for m in s._maps), "no bucket memberships left behind"


def test_ttlmap_renewal_keeps_one_bucket_membership() -> None:
    m: TtlMap[str, int] = TtlMap()
    for i in range(1000):
        m.set("hot", i, (i + 10) * S)  # renewed into a new one-second bucket each time
    assert sum(len(b) for b in m._wheel.values()) == 1
    assert m.get("hot", 0) == 999 and m.get("hot", 1010 * S) is None and len(m) == 0


def test_ttlmap_cap_evicts_oldest() -> None:
    m: TtlMap[int, int] = TtlMap(max_entries=3)
    for i in range(5):
        m.set(i, i, 100 * S)
    assert len(m) == 3 and m.get(0, 0) is None and m.get(1, 0) is None and m.get(4, 0) == 4
    assert m.sweep(200 * S) == 3 and not m._wheel


async def test_gcra_exact_with_controlled_clock() -> None:
    clock = FakeClock()
    s = MemoryStore(clock=clock)
    got = [(await s.hot_path(AdmitRequest("c", 1, LIM))).allowed for _ in range(3)]
    assert got == [True, True, False]
    clock.now += S - 2  # 2 µs early: rejected (EPS_US tolerates 1 µs of float rounding)
    assert not (await s.hot_path(AdmitRequest("c", 1, LIM))).allowed
    clock.now += 2
    r = await s.hot_path(AdmitRequest("c", 1, LIM))
    assert r.allowed and r.now == 1_700_000_001.0


def test_monotonic_wall_clock_tracks_wall_time() -> None:
    clock = monotonic_wall_clock()
    a = clock()
    b = clock()
    assert b >= a and abs(a / S - time.time()) < 1.0


async def test_state_size_limit_is_configurable(redis_url: str) -> None:
    for cfg in (StoreConfig(kind="memory", max_state_bytes=10),
                StoreConfig(kind="redis", url=redis_url, max_state_bytes=10, timeout_ms=2000)):
        store = await open_store(cfg, None)
        try:
            await store.save_client_state("c", b"x" * 10, 0, 0.0, 60)
            with pytest.raises(ValueError, match="11 bytes, above the 10-byte limit"):
                await store.save_client_state("c", b"x" * 11, 0, 0.0, 60)
        finally:
            await store.close()
