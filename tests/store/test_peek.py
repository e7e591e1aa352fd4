"""``StateStore.peek``: what ``hot_path`` would answer now, writing nothing. Every contract test runs on
``MemoryStore``, a real Redis and a real Redis Cluster (the ``store`` fixture); the failure modes on the resilient
store in front of a Redis that is not there."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
import redis.asyncio as aredis

from gateway.ratelimit import admission_error, rate_limit_headers
from gateway.store.base import AdmitRequest, AdmitResult, Limits, StateStore
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore
from gateway.store.resilient import ResilientStore
from tests.conftest import free_port

# one request every 10 s: no refill between a look and the admission that follows it, however loaded the host
SLOW = Limits(requests_per_minute=6, tokens_per_minute=60_000, burst_requests=3, burst_tokens=10_000,
              max_in_flight=2)
TOKENS = Limits(requests_per_minute=6000, tokens_per_minute=600, burst_requests=100, burst_tokens=100)  # 0.1 s/tok
TIGHT = Limits(requests_per_minute=60, tokens_per_minute=6000, burst_requests=1, burst_tokens=100, max_in_flight=1)
TIERS = (SLOW, TIGHT)
_ids = iter(range(10**9))


def look(client: str, tiers: tuple[Limits, ...] = TIERS, tokens: int = 1) -> AdmitRequest:
    return AdmitRequest(client, tokens, tiers, 0.0)


async def admit(store: StateStore, client: str, tiers: tuple[Limits, ...] = TIERS, tokens: int = 1,
                lease_s: float = 60.0) -> tuple[AdmitResult, str]:
    lid = f"p:{next(_ids)}"
    return await store.hot_path(AdmitRequest(client, tokens, tiers, 3600.0, lid, lease_s)), lid


def _same_answer(peeked: AdmitResult, admitted: AdmitResult) -> None:
    """A refusal looked at and the same refusal by the hot path: the same decision, error and headers."""
    assert not peeked.allowed and not admitted.allowed
    assert (peeked.tier, peeked.override, peeked.in_flight, peeked.in_flight_limit) == \
        (admitted.tier, admitted.override, admitted.in_flight, admitted.in_flight_limit)
    assert (peeked.requests.allowed, peeked.requests.remaining, peeked.tokens.allowed, peeked.tokens.remaining) == \
        (admitted.requests.allowed, admitted.requests.remaining, admitted.tokens.allowed, admitted.tokens.remaining)
    assert peeked.requests.retry_after_s == pytest.approx(admitted.requests.retry_after_s, abs=0.5)
    a, b = admission_error(peeked), admission_error(admitted)
    assert a is not None and b is not None and (a.status, a.code) == (b.status, b.code)
    h1, h2 = rate_limit_headers(peeked), rate_limit_headers(admitted)
    assert h1.keys() == h2.keys() and h1.get("Retry-After") == h2.get("Retry-After")


async def test_a_look_charges_nothing(store: StateStore) -> None:
    for _ in range(10):
        r = await store.peek(look("c"))
        assert r.allowed and r.tier == 0 and r.override is None and r.detector_state is None and not r.slot
        assert (r.in_flight, r.in_flight_limit) == (0, 2)
    got = [(await admit(store, "c", lease_s=60.0))[0] for _ in range(2)]
    assert [r.requests.remaining for r in got] == [2, 1], "ten looks took no request from the bucket"
    assert [r.in_flight for r in got] == [1, 2], "nor any slot"


async def test_an_empty_request_bucket_is_refused_by_the_look_as_by_the_hot_path(store: StateStore) -> None:
    one = (dataclasses.replace(SLOW, max_in_flight=0),)
    for _ in range(3):
        assert (await admit(store, "r", one))[0].allowed
    peeked = await store.peek(look("r", one))
    admitted, _ = await admit(store, "r", one)
    _same_answer(peeked, admitted)
    assert not peeked.requests.allowed and 9.0 < peeked.requests.retry_after_s <= 10.0


async def test_a_token_bucket_in_debt_refuses_even_the_smallest_request(store: StateStore) -> None:
    assert (await admit(store, "k", (TOKENS,), tokens=150))[0].allowed  # over the burst: admitted once, then debt
    peeked = await store.peek(look("k", (TOKENS,)))
    admitted, _ = await admit(store, "k", (TOKENS,))
    _same_answer(peeked, admitted)
    assert not peeked.tokens.allowed and peeked.requests.allowed


async def test_a_full_in_flight_cap_is_refused_and_a_release_or_an_expiry_frees_it(store: StateStore) -> None:
    _, first = await admit(store, "f")
    await admit(store, "f", lease_s=1.0)
    peeked = await store.peek(look("f"))
    assert peeked.too_many_in_flight and peeked.in_flight == 2
    _same_answer(peeked, (await admit(store, "f"))[0])
    await asyncio.sleep(1.05)  # the second lease expired: a live count, as the hot path prunes at the cap
    r = await store.peek(look("f"))
    assert r.allowed and r.in_flight == 1
    await store.reconcile_tokens("f", 1, 1, SLOW, None, first)
    r = await store.peek(look("f"))
    assert r.allowed and r.in_flight == 0


async def test_overrides_and_tiers_as_the_hot_path_applies_them(store: StateStore) -> None:
    await store.set_override("bad", "deny", None, ttl_s=60)
    peeked = await store.peek(look("bad"))
    assert not peeked.allowed and peeked.override == "deny" and not peeked.too_many_in_flight
    _same_answer(peeked, (await admit(store, "bad"))[0])
    await store.set_override("pinned", None, 1, ttl_s=60)
    r = await store.peek(look("pinned"))
    assert r.allowed and r.tier == 1 and r.in_flight_limit == 1
    await store.save_client_state("raised", b"state", 5, 0.9, 60)  # above the last tier: clamped
    await store.set_override("vip", "allow", 1, ttl_s=60)
    assert (await store.peek(look("raised"))).tier == 1
    assert (await store.peek(look("vip"))).tier == 0
    assert (await store.peek(look("raised"))).detector_state is None, "a look does not read the state"


async def test_redis_look_writes_no_key(redis_url: str) -> None:
    s = RedisStore(redis_url)
    raw = aredis.from_url(redis_url)
    try:
        await s.save_client_state("w", b"state", 0, 0.0, 30)
        st = s.client_keys("w")[1]
        before = await raw.pttl(st)
        for _ in range(5):
            assert (await s.peek(look("w"))).allowed
        assert sorted(await raw.keys("*")) == [st.encode()], "no bucket, no in-flight set written"
        assert await raw.pttl(st) <= before, "the state's TTL is not extended"
    finally:
        await raw.aclose()
        await s.close()


@pytest.mark.parametrize(("mode", "allowed", "unavailable"), [("open", True, False), ("closed", False, True),
                                                              ("local", True, False)])
async def test_failure_modes_answer_the_look_as_the_hot_path_and_take_nothing(mode: str, allowed: bool,
                                                                              unavailable: bool) -> None:
    dead = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.05)
    local = MemoryStore()
    s = ResilientStore(dead, failure_mode=mode, timeout_ms=50, local=local)  # type: ignore[arg-type]
    await s.start()
    try:
        got = [await s.peek(look("c")) for _ in range(5)]
        assert all(r.degraded and r.allowed is allowed and r.unavailable is unavailable for r in got)
        assert (await s.hot_path(AdmitRequest("c", 1, TIERS, 0.0))).allowed is allowed
        if mode == "local":  # the in-process store was looked at, not charged (one hot path took one)
            assert (await local.peek(look("c", (SLOW,)))).requests.remaining == 1
        assert s.degraded
    finally:
        await s.close()
