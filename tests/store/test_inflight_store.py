"""The in-flight cap (``max_in_flight``) through the ``StateStore`` contract: memory, a real Redis, a real Redis
Cluster (the ``store`` fixture), and the resilient store's failure modes."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aredis

from gateway.errors import RateLimited
from gateway.ratelimit import admission_error
from gateway.store.base import AdmitRequest, AdmitResult, Limits, StateStore
from gateway.store.redis import RedisStore
from gateway.store.resilient import ResilientStore
from tests.conftest import free_port

ROOMY = Limits(requests_per_minute=6000, tokens_per_minute=6e6, burst_requests=100, burst_tokens=10**6,
               max_in_flight=3)
TIGHT = Limits(requests_per_minute=6000, tokens_per_minute=6e6, burst_requests=100, burst_tokens=10**6,
               max_in_flight=1)
UNCAPPED = Limits(requests_per_minute=6000, tokens_per_minute=6e6, burst_requests=100, burst_tokens=10**6)
TIERS = (ROOMY, TIGHT)
_ids = iter(range(10**9))


def lease() -> str:
    return f"t:{next(_ids)}"


async def admit(store: StateStore, client: str, tiers: tuple[Limits, ...] = TIERS, lease_s: float = 60.0,
                lid: str | None = None) -> tuple[AdmitResult, str]:
    lid = lid or lease()
    return await store.hot_path(AdmitRequest(client, 10, tiers, 3600.0, lid, lease_s)), lid


async def give_back(store: StateStore, client: str, lid: str) -> None:
    await store.reconcile_tokens(client, 10, 10, ROOMY, None, lid)


async def test_admits_up_to_the_cap_then_refuses_and_a_release_frees_a_slot(store: StateStore) -> None:
    held = [await admit(store, "a") for _ in range(3)]
    assert [(r.allowed, r.slot, r.in_flight, r.in_flight_limit) for r, _ in held] == \
        [(True, True, 1, 3), (True, True, 2, 3), (True, True, 3, 3)]
    refused, _ = await admit(store, "a")
    assert not refused.allowed and not refused.slot and refused.too_many_in_flight
    assert (refused.in_flight, refused.in_flight_limit) == (3, 3)
    assert refused.requests.allowed and refused.tokens.allowed, "the rate limits would have admitted it"
    assert refused.requests.remaining == held[-1][0].requests.remaining, "a refused request is not charged"
    err = admission_error(refused)
    assert isinstance(err, RateLimited) and err.code == "too_many_concurrent_requests"
    assert err.headers["Retry-After"] == "1" and err.headers["retry-after-ms"] == "1000"
    assert "3 of this client's requests are in flight and its limit is 3" in err.message
    other, _ = await admit(store, "b")
    assert other.allowed and other.in_flight == 1, "the cap is per client"
    await give_back(store, "a", held[1][1])
    again, lid = await admit(store, "a")
    assert again.allowed and again.in_flight == 3
    await give_back(store, "a", held[1][1])  # released twice: no error, frees nothing more
    assert not (await admit(store, "a"))[0].allowed
    for _, x in [held[0], held[2], (again, lid)]:
        await give_back(store, "a", x)
    assert (await admit(store, "a"))[0].in_flight == 1


async def test_expired_leases_are_pruned_on_admission(store: StateStore) -> None:
    """A replica that died never gives its slots back: they end with their lease."""
    for _ in range(3):
        assert (await admit(store, "dead", lease_s=0.3))[0].allowed
    assert not (await admit(store, "dead"))[0].allowed
    await asyncio.sleep(0.35)
    r, _ = await admit(store, "dead")
    assert r.allowed and r.in_flight == 1


async def test_renewal_keeps_a_running_request_counted_and_records_an_expired_one_again(store: StateStore) -> None:
    (r1, l1), (r2, l2) = await admit(store, "long", lease_s=0.3), await admit(store, "long", lease_s=0.3)
    assert r1.allowed and r2.allowed
    await asyncio.sleep(0.2)
    await store.renew_leases([("long", l1)], 5.0)
    await asyncio.sleep(0.15)  # l2 expired, l1 renewed
    r, _ = await admit(store, "long", lease_s=5.0)
    assert r.allowed and r.in_flight == 3, "below the cap the expired lease is not pruned yet (no answer changes)"
    r, _ = await admit(store, "long", lease_s=5.0)
    assert r.allowed and r.in_flight == 3, "at the cap the expired one is dropped, the renewed one kept"
    await store.renew_leases([("long", l2)], 5.0)  # still running after all: counted again
    r, _ = await admit(store, "long", lease_s=5.0)
    assert not r.allowed and r.in_flight == 4


async def test_the_cap_follows_the_tier(store: StateStore) -> None:
    await store.set_override("suspect", None, 1, ttl_s=60)
    r, _ = await admit(store, "suspect")
    assert r.allowed and r.tier == 1 and r.in_flight_limit == 1
    r, _ = await admit(store, "suspect")
    assert not r.allowed and r.too_many_in_flight
    assert [(await admit(store, "fine"))[0].allowed for _ in range(3)] == [True] * 3


async def test_the_allowlist_keeps_tier_0s_cap_and_a_deny_takes_no_slot(store: StateStore) -> None:
    await store.set_override("vip", "allow", None, ttl_s=60)
    got = [(await admit(store, "vip"))[0] for _ in range(4)]
    assert [r.allowed for r in got] == [True] * 3 + [False] and got[-1].in_flight_limit == 3
    await store.set_override("bad", "deny", None, ttl_s=60)
    r, _ = await admit(store, "bad")
    assert not r.allowed and not r.slot and r.in_flight == 0 and not r.too_many_in_flight
    await store.set_override("bad", None, None, ttl_s=60)
    assert (await admit(store, "bad"))[0].in_flight == 1, "the denied request held nothing"


async def test_a_request_refused_by_its_rate_takes_no_slot(store: StateStore) -> None:
    one = (Limits(60, 6e6, 1, 10**6, max_in_flight=5),)
    assert (await admit(store, "rate", one))[0].allowed
    r, _ = await admit(store, "rate", one)
    assert not r.allowed and not r.requests.allowed and not r.slot and not r.too_many_in_flight


async def test_no_cap_records_nothing(store: StateStore) -> None:
    got = [(await admit(store, "free", (UNCAPPED,)))[0] for _ in range(10)]
    assert all(r.allowed and not r.slot and r.in_flight == 0 and r.in_flight_limit == 0 for r in got)
    r = await store.hot_path(AdmitRequest("nolease", 1, TIERS))
    assert r.allowed and not r.slot, "a request without a lease id takes no slot"


async def test_release_rides_on_the_token_reconciliation(store: StateStore) -> None:
    """One call gives the slot back and the unused tokens: both show on the next admission."""
    lim = (Limits(6000, 600, 100, 100, max_in_flight=1),)  # 100 ms per token
    r, lid = await admit(store, "tok", lim)
    assert r.allowed and r.tokens.remaining == 90
    await store.reconcile_tokens("tok", 10, 10, lim[0], r.tokens_until_us, "someone-else")
    assert not (await admit(store, "tok", lim))[0].allowed, "another lease id frees nothing"
    await store.reconcile_tokens("tok", 10, 1, lim[0], r.tokens_until_us, lid)
    again, _ = await admit(store, "tok", lim)
    # 100 - 1 used - 10 reserved now (without the give-back: 80)
    assert again.allowed and again.tokens.remaining >= 89, "slot and 9 unused tokens back in one call"


async def test_redis_in_flight_set_has_a_ttl_and_shares_the_clients_slot(redis_url: str) -> None:
    s = RedisStore(redis_url)
    raw = aredis.from_url(redis_url)
    try:
        r, lid = await admit(s, "ttl", lease_s=30.0)
        assert r.allowed
        key = s.client_keys("ttl")[3]
        assert 29_000 < await raw.pttl(key) <= 30_001  # (expiry rounded up to the ms)
        assert await raw.zscore(key, lid) is not None
        await s.renew_leases([("ttl", lid)], 90.0)
        assert 89_000 < await raw.pttl(key) <= 90_001
        await give_back(s, "ttl", lid)
        assert not await raw.exists(key), "the last release removes the set"
    finally:
        await raw.aclose()
        await s.close()


# --- failure modes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "replicas", "admitted"), [
    ("local", 1, 3),  # counted in-process, the whole cap
    ("local", 2, 2),  # each replica's share: ceil(3 / 2)
    ("open", 1, 10),  # admitted, not counted
    ("closed", 1, 0),
])
async def test_failure_modes_while_the_store_is_away(mode: str, replicas: int, admitted: int) -> None:
    dead = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.05)
    s = ResilientStore(dead, failure_mode=mode, timeout_ms=50, local_replicas=replicas)  # type: ignore[arg-type]
    await s.start()
    try:
        answers = [await admit(s, "c", (ROOMY,)) for _ in range(10)]
        got = [r for r, _ in answers]
        assert all(r.degraded for r in got)
        assert sum(r.allowed for r in got) == admitted
        if mode == "local":
            assert got[admitted].too_many_in_flight
            await s.reconcile_tokens("c", 10, 10, ROOMY, None, answers[0][1])  # given back in-process
            assert (await admit(s, "c", (ROOMY,)))[0].allowed
    finally:
        await s.close()
