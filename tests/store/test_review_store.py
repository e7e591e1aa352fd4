"""Adversarial review of the store and the rate limiter: edge cases that found (or guard against) real defects.

- absurd reservations (``max_tokens`` 10**19 passes the parse step) must keep numbers exact and every key's TTL;
- a negative usage from the backend must not refund other in-flight reservations;
- usage above the reservation: the next request pays, with a consistent ``Retry-After``;
- an error reply that means "Redis cannot serve" (a failover left us on a replica: ``READONLY``) is an outage:
  degraded state, gauge, one WARNING, and a probe that only recovers when writes work again;
- a persistent odd error reply is reported again later, never silent for the rest of the process;
- ids with hash-tag and separator characters never share a bucket; ``SCRIPT FLUSH`` mid-traffic; two stores
  (two gateway replicas) on one Redis share one limit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

from gateway.ratelimit import MAX_AHEAD_US, rate_limit_headers
from gateway.store import resilient as resilient_mod
from gateway.store.base import AdmitRequest, Limits, StateStore
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore
from gateway.store.resilient import ResilientStore
from gateway.telemetry.metrics import Metrics

LOGGER = "gateway.store.resilient"
# T = 1 s per request and per token: nothing refills noticeably while a test runs.
SLOW = Limits(requests_per_minute=60, tokens_per_minute=60, burst_requests=10, burst_tokens=3000)


def req(client: str, tokens: int, limits: Limits = SLOW) -> AdmitRequest:
    return AdmitRequest(client, tokens, (limits,), 60.0)


# --- reservations ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("tokens", [10**17, 10**19, 10**25])
async def test_absurd_reservation_is_capped_not_an_error(store: StateStore, tokens: int) -> None:
    """Before the fix the Lua port raised after its HSET (expiry out of range: a key without TTL, and the request
    answered by the failure mode), and at 10**17 returned a reset of -9.2e12 s (an int64 overflow)."""
    res = await store.hot_path(req("big", tokens))
    assert res.allowed, "a full bucket admits one oversized reservation (then debt)"
    assert 0 < res.tokens.reset_s <= MAX_AHEAD_US / 1e6 + 1
    nxt = await store.hot_path(req("big", 1))
    assert not nxt.allowed
    assert 0 < nxt.tokens.retry_after_s <= MAX_AHEAD_US / 1e6 + 1
    headers = rate_limit_headers(nxt)
    assert int(headers["Retry-After"]) >= 1 and int(headers["RateLimit-Reset"]) >= 0


async def test_absurd_reservation_keeps_every_key_ttl(redis_url: str) -> None:
    store = RedisStore(redis_url, timeout_s=2.0)
    try:
        for tokens in (10**19, 10**25):
            await store.hot_path(req(f"big{tokens}", tokens))
            await store.reconcile_tokens(f"big{tokens}", 1, tokens, SLOW)  # charging more is capped too
    finally:
        await store.close()
    with redis.Redis.from_url(redis_url) as r:
        keys = list(r.scan_iter("*"))
        assert keys
        assert all(r.pttl(k) > 0 for k in keys), {k: r.pttl(k) for k in keys}


async def test_negative_usage_does_not_refund_other_reservations(store: StateStore) -> None:
    assert (await store.hot_path(req("neg", 1000))).allowed  # request A in flight
    assert (await store.hot_path(req("neg", 1000))).allowed  # request B in flight
    await store.reconcile_tokens("neg", 1000, -10**6, SLOW)  # A's backend reports a negative usage
    res = await store.hot_path(req("neg", 1))
    # A gives back its 1000 (charged 0), B's 1000 stays reserved: 3000 - 1000 - 1 left, not 2999.
    assert res.tokens.remaining == 1999


async def test_usage_above_reservation_makes_the_next_request_pay(store: StateStore) -> None:
    lim = Limits(requests_per_minute=600, tokens_per_minute=6000, burst_requests=100, burst_tokens=100)  # T=10 ms
    assert (await store.hot_path(req("over", 10, lim))).allowed
    await store.reconcile_tokens("over", 10, 400, lim)  # the stream produced far more than reserved
    res = await store.hot_path(req("over", 1, lim))
    assert not res.allowed and res.requests.allowed and not res.tokens.allowed
    # TAT ≈ now + 400 T; one more token needs TAT − now ≤ 99 T: wait ≈ 301 T = 3.01 s (minus elapsed time).
    assert 2.8 < res.tokens.retry_after_s <= 3.01 + 1e-6
    h = rate_limit_headers(res)
    assert h["Retry-After"] == "4" and abs(int(h["retry-after-ms"]) - res.tokens.retry_after_s * 1000) <= 1


async def test_gcra_boundaries_with_an_injected_clock() -> None:
    now = [1_700_000_000_000_000]
    store = MemoryStore(clock=lambda: now[0])
    lim = Limits(requests_per_minute=60, tokens_per_minute=6e6, burst_requests=3, burst_tokens=10**6)
    got = [await store.hot_path(req("b", 1, lim)) for _ in range(4)]
    assert [r.allowed for r in got] == [True, True, True, False]
    assert got[2].requests.remaining == 0 and got[2].requests.reset_s == 3.0
    h = rate_limit_headers(got[3])
    assert (h["Retry-After"], h["retry-after-ms"], h["RateLimit-Remaining"]) == ("1", "1000", "0")
    now[0] += 999_998  # 2 µs early (1 µs is EPS_US, the rounding tolerance): rejected, and the headers say so
    early = await store.hot_path(req("b", 1, lim))
    assert not early.allowed and rate_limit_headers(early)["retry-after-ms"] == "1"
    now[0] += 2  # exactly at the advertised time
    assert (await store.hot_path(req("b", 1, lim))).allowed
    now[0] += 3600 * 10**6  # an hour idle banks no more than the burst
    assert [(await store.hot_path(req("b", 1, lim))).allowed for _ in range(4)] == [True, True, True, False]


# --- keys --------------------------------------------------------------------------------------------------


async def test_odd_client_ids_never_share_a_bucket(store: StateStore) -> None:
    lim = Limits(requests_per_minute=1, tokens_per_minute=1e6, burst_requests=1, burst_tokens=10**6)
    ids = ["a", "{a}", "a}", "{a", "%7Ba%7D", "a%", "a:rl", "a}:rl", "ipgate:{a}:rl", "a\x00", "é" * 200]
    for cid in ids:
        assert (await store.hot_path(req(cid, 1, lim))).allowed, cid
    for cid in ids:
        assert not (await store.hot_path(req(cid, 1, lim))).allowed, cid


async def test_script_flush_mid_traffic_counts_exactly(redis_url: str) -> None:
    store = RedisStore(redis_url, timeout_s=2.0)
    try:
        got = [(await store.hot_path(req("flush", 1))).allowed for _ in range(5)]
        with redis.Redis.from_url(redis_url) as r:
            r.script_flush()
        got += [(await store.hot_path(req("flush", 1))).allowed for _ in range(7)]
    finally:
        await store.close()
    assert got == [True] * 10 + [False] * 2


async def test_two_replicas_on_one_redis_share_one_limit(redis_url: str) -> None:
    a, b = RedisStore(redis_url, timeout_s=2.0), RedisStore(redis_url, timeout_s=2.0)
    try:
        got = await asyncio.gather(*((a if i % 2 else b).hot_path(req("shared", 1)) for i in range(30)))
    finally:
        await a.close()
        await b.close()
    assert sum(r.allowed for r in got) == SLOW.burst_requests


# --- error replies that mean "unavailable" ----------------------------------------------------------------


@pytest.fixture
async def guarded(redis_process: Any) -> AsyncIterator[tuple[ResilientStore, CollectorRegistry]]:
    registry = CollectorRegistry()
    store = ResilientStore(RedisStore(redis_process.url, timeout_s=0.5), failure_mode="closed", timeout_ms=500,
                           health_interval_s=0.05, metrics=Metrics(registry))
    await store.start()
    yield store, registry
    await store.close()


async def test_failover_to_replica_is_an_outage_until_writes_work(
        guarded: tuple[ResilientStore, CollectorRegistry], redis_process: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    store, registry = guarded
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert (await store.hot_path(req("c", 1))).allowed
    with redis.Redis(port=redis_process.port) as r:
        r.execute_command("REPLICAOF", "127.0.0.1", "1")  # what a failover does to the old primary
        try:
            res = await store.hot_path(req("c", 1))
            assert res.degraded and res.unavailable and not res.allowed
            assert store.degraded, "READONLY must flip the store to degraded, not fall back silently per call"
            assert registry.get_sample_value("ipgate_store_degraded") == 1
            await asyncio.sleep(0.4)  # ~8 probes: PING answers PONG on a replica, the write probe must not
            assert store.degraded, "the probe declared a read-only replica healthy"
        finally:
            r.execute_command("REPLICAOF", "NO", "ONE")
    deadline = time.monotonic() + 5
    while store.degraded:
        assert time.monotonic() < deadline, "no recovery once the node accepts writes again"
        await asyncio.sleep(0.02)
    assert (await store.hot_path(req("c", 1))).allowed
    assert registry.get_sample_value("ipgate_store_degraded") == 0
    lines = [(rec.levelno, rec.getMessage()) for rec in caplog.records if rec.name == LOGGER]
    assert [lvl for lvl, _ in lines] == [logging.WARNING, logging.INFO], lines
    assert "READONLY" in lines[0][1]


async def test_persistent_error_reply_is_reported_again(
        guarded: tuple[ResilientStore, CollectorRegistry], redis_process: Any,
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    store, registry = guarded
    monkeypatch.setattr(resilient_mod, "ODD_ERROR_LOG_INTERVAL_S", 0.2)
    with redis.Redis(port=redis_process.port) as r:
        r.set(RedisStore("redis://unused").client_keys("odd")[0], "not a hash", ex=60)  # WRONGTYPE for the script
    for _ in range(3):
        assert (await store.hot_path(req("odd", 1))).degraded
    await asyncio.sleep(0.25)
    assert (await store.hot_path(req("odd", 1))).degraded
    errors = [rec.getMessage() for rec in caplog.records if rec.name == LOGGER and rec.levelno == logging.ERROR]
    assert len(errors) == 2, errors
    assert "2 more such failures" in errors[1]
    assert not store.degraded and registry.get_sample_value("ipgate_store_failures_total", {"op": "hot_path"}) == 4


async def test_retry_after_for_an_oversized_reservation_is_the_next_allowed_time() -> None:
    now = [1_700_000_000_000_000]
    store = MemoryStore(clock=lambda: now[0])
    lim = Limits(requests_per_minute=6000, tokens_per_minute=6000, burst_requests=100, burst_tokens=100)  # T=10 ms
    assert (await store.hot_path(req("o", 50, lim))).allowed
    big = await store.hot_path(req("o", 500, lim))  # above the burst: admitted only once the bucket is full
    assert not big.allowed and big.tokens.retry_after_s == pytest.approx(0.5)
    assert rate_limit_headers(big)["retry-after-ms"] == "500"
    now[0] += 499_990
    assert not (await store.hot_path(req("o", 500, lim))).allowed
    now[0] += 10
    res = await store.hot_path(req("o", 500, lim))
    assert res.allowed and res.tokens.reset_s == pytest.approx(5.0)  # charged in full: 500 T of debt


async def test_tier_demotion_mid_window_hands_out_no_fresh_burst() -> None:
    """One TAT per bucket, in time units, whatever the tier: a client demoted right after spending tier 0's burst
    keeps its debt (per-tier keys would hand it the stricter tier's whole burst afresh)."""
    now = [1_700_000_000_000_000]
    store = MemoryStore(clock=lambda: now[0])
    normal = Limits(requests_per_minute=60, tokens_per_minute=6e6, burst_requests=10, burst_tokens=10**6)
    strict = Limits(requests_per_minute=6, tokens_per_minute=6e6, burst_requests=2, burst_tokens=10**6)
    tiers = (normal, strict)
    assert all([(await store.hot_path(AdmitRequest("t", 1, tiers))).allowed for _ in range(10)])
    await store.save_client_state("t", b"", 1, 0.9, 60)
    got = [await store.hot_path(AdmitRequest("t", 1, tiers)) for _ in range(3)]
    assert [r.allowed for r in got] == [True, False, False]  # 10 s of debt fits a 20 s cap once
    assert got[1].tier == 1 and got[1].requests.retry_after_s == pytest.approx(10.0)
