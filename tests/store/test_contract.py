"""The StateStore contract: every test runs on MemoryStore and on a real redis-server (see conftest)."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aredis
from redis.crc import key_slot

from gateway.config import StoreConfig
from gateway.ratelimit import rate_limit_headers
from gateway.store.base import AdmitRequest, Limits, StateStore
from gateway.store.memory import MAX_SKETCH_MEMBERS
from gateway.store.redis import RedisStore

SLOW = Limits(requests_per_minute=60, tokens_per_minute=60_000, burst_requests=5, burst_tokens=10_000)  # T=1 s
FAST = Limits(requests_per_minute=600, tokens_per_minute=600_000, burst_requests=3, burst_tokens=100_000)  # 0.1 s
TOKENS = Limits(requests_per_minute=6000, tokens_per_minute=6000, burst_requests=100, burst_tokens=100)  # 10 ms/tok
TIGHT = Limits(requests_per_minute=60, tokens_per_minute=6000, burst_requests=1, burst_tokens=100)
TIERS = (SLOW, TIGHT, TIGHT)


def req(client: str = "c1", tokens: int = 1, tiers: tuple[Limits, ...] = (SLOW,), ttl: float = 3600.0) -> AdmitRequest:
    return AdmitRequest(client, tokens, tiers, ttl)


# --- GCRA through the store ---------------------------------------------------------------------------------


async def test_new_client_is_admitted_with_full_bucket(store: StateStore) -> None:
    r = await store.hot_path(req(tokens=100))
    assert r.allowed and r.tier == 0 and r.override is None and r.detector_state is None and not r.degraded
    assert (r.requests.limit, r.requests.remaining) == (5, 4)
    assert (r.tokens.limit, r.tokens.remaining) == (10_000, 9_900)
    assert r.requests.reset_s == pytest.approx(1.0, abs=0.01)
    assert r.requests.retry_after_s == 0
    assert r.now > 1.6e9


async def test_burst_then_reject_with_retry_after(store: StateStore) -> None:
    results = [await store.hot_path(req()) for _ in range(6)]
    assert [r.allowed for r in results] == [True] * 5 + [False]
    assert [r.requests.remaining for r in results[:5]] == [4, 3, 2, 1, 0]
    last = results[-1]
    assert not last.requests.allowed and last.tokens.allowed
    assert 0.9 < last.requests.retry_after_s <= 1.0
    h = rate_limit_headers(last)
    assert h["Retry-After"] == "1" and h["RateLimit-Limit"] == "5" and h["RateLimit-Remaining"] == "0"
    other = await store.hot_path(req("c2"))
    assert other.allowed, "limits are per client"


async def test_refill_timing(store: StateStore) -> None:
    for _ in range(3):
        assert (await store.hot_path(req(tiers=(FAST,)))).allowed
    rejected = await store.hot_path(req(tiers=(FAST,)))
    assert not rejected.allowed
    assert 0.05 < rejected.requests.retry_after_s <= 0.1
    await asyncio.sleep(rejected.requests.retry_after_s + 0.01)
    assert (await store.hot_path(req(tiers=(FAST,)))).allowed, "one emission interval refills one request"
    assert not (await store.hot_path(req(tiers=(FAST,)))).allowed


async def test_tokens_bucket_rejects_without_charging_requests(store: StateStore) -> None:
    a = await store.hot_path(req(tokens=60, tiers=(TOKENS,)))
    assert a.allowed and a.tokens.remaining == 40
    b = await store.hot_path(req(tokens=60, tiers=(TOKENS,)))
    assert not b.allowed and b.requests.allowed and not b.tokens.allowed
    assert b.requests.remaining == 99, "a rejected request is not charged to the requests bucket"
    assert 0.15 < b.tokens.retry_after_s <= 0.2  # 20 tokens short at 10 ms each
    h = rate_limit_headers(b)
    assert h["RateLimit-Limit"] == "100" and h["x-ratelimit-remaining-tokens"] == "40"


async def test_cost_above_burst_is_admitted_once_then_debt(store: StateStore) -> None:
    big = await store.hot_path(req(tokens=150, tiers=(TOKENS,)))
    assert big.allowed, "a reservation larger than the burst passes when the bucket is full"
    nxt = await store.hot_path(req(tokens=1, tiers=(TOKENS,)))
    assert not nxt.allowed and 0.45 < nxt.tokens.retry_after_s <= 0.51  # 51 tokens of debt to wait out


async def test_reconcile_gives_back_and_charges_more(store: StateStore) -> None:
    assert (await store.hot_path(req(tokens=90, tiers=(TOKENS,)))).allowed
    assert not (await store.hot_path(req(tokens=90, tiers=(TOKENS,)))).allowed
    await store.reconcile_tokens("c1", reserved=90, actual=10, limits=TOKENS)  # give 80 back
    assert (await store.hot_path(req(tokens=90, tiers=(TOKENS,)))).allowed
    # an aborted stream is charged what was streamed: here more than reserved
    await store.reconcile_tokens("c1", reserved=90, actual=190, limits=TOKENS)
    r = await store.hot_path(req(tokens=1, tiers=(TOKENS,)))
    assert not r.allowed and r.tokens.retry_after_s > 0.9


async def test_give_back_returns_only_what_time_has_not_repaid(store: StateStore) -> None:
    """Decoys: a request that outlived its reservation's refill time and generated nothing must not hand the
    client a second burst. Time already repaid that reservation; giving it back again shifted the reservation
    made since into the past (two full bursts admitted at once)."""
    a = await store.hot_path(req(tokens=100, tiers=(TOKENS,)))  # the whole burst, repaid by time in 1 s
    assert a.allowed
    await asyncio.sleep(1.05)
    b = await store.hot_path(req(tokens=100, tiers=(TOKENS,)))  # the bucket refilled: a full burst again
    assert b.allowed
    await store.reconcile_tokens("c1", reserved=100, actual=0, limits=TOKENS, until_us=a.tokens_until_us)
    c = await store.hot_path(req(tokens=100, tiers=(TOKENS,)))
    assert not c.allowed, "a's reservation was repaid by time: nothing left to give back"
    assert 0.8 < c.tokens.retry_after_s <= 1.0


async def test_give_back_returns_the_part_still_ahead(store: StateStore) -> None:
    a = await store.hot_path(req(tokens=100, tiers=(TOKENS,)))  # 1 s of the bucket, until a.tokens_until_us
    assert a.allowed
    await asyncio.sleep(0.3)  # about 30 tokens of a's reservation repaid by time, about 70 still ahead
    b = await store.hot_path(req(tokens=30, tiers=(TOKENS,)))  # queued right behind a
    assert b.allowed
    await store.reconcile_tokens("c1", reserved=100, actual=0, limits=TOKENS, until_us=a.tokens_until_us)
    # what is ahead of now is b's 30 tokens only (however long the sleep was, while a's span lasted)
    assert not (await store.hot_path(req(tokens=75, tiers=(TOKENS,)))).allowed
    assert (await store.hot_path(req(tokens=65, tiers=(TOKENS,)))).allowed
    # reconciled while its reservation is still wholly ahead: everything unused comes back, as before
    d = await store.hot_path(req("c2", tokens=90, tiers=(TOKENS,)))
    await store.reconcile_tokens("c2", reserved=90, actual=10, limits=TOKENS, until_us=d.tokens_until_us)
    assert (await store.hot_path(req("c2", tokens=90, tiers=(TOKENS,)))).allowed


async def test_reconcile_on_unknown_client(store: StateStore) -> None:
    await store.reconcile_tokens("ghost", reserved=10, actual=0, limits=TOKENS)  # nothing to give back
    assert (await store.hot_path(req("ghost", tokens=100, tiers=(TOKENS,)))).allowed
    await store.reconcile_tokens("late", reserved=0, actual=100, limits=TOKENS)  # charge with no bucket yet
    assert not (await store.hot_path(req("late", tokens=10, tiers=(TOKENS,)))).allowed


async def test_concurrent_admissions_are_exact(store: StateStore) -> None:
    lim = Limits(requests_per_minute=1, tokens_per_minute=1e9, burst_requests=10, burst_tokens=10**9)
    results = await asyncio.gather(*(store.hot_path(req("hot", tiers=(lim,))) for _ in range(60)))
    assert sum(r.allowed for r in results) == 10


# --- tiers, state, overrides --------------------------------------------------------------------------------


async def test_stored_tier_selects_limits_and_state_round_trips(store: StateStore) -> None:
    await store.save_client_state("c1", b"\x00state\xff", tier=1, score=0.7, ttl_s=60)
    r = await store.hot_path(req(tiers=TIERS))
    assert r.tier == 1 and r.detector_state == b"\x00state\xff" and r.requests.limit == 1
    assert not (await store.hot_path(req(tiers=TIERS))).allowed
    await store.save_client_state("c1", b"", tier=9, score=1.0, ttl_s=60)
    assert (await store.hot_path(req(tiers=TIERS))).tier == 2, "tiers above the policy's last are clamped"
    rec = await store.get_client("c1")
    assert rec is not None and rec.detector_tier == 9 and rec.score == 1.0 and rec.override is None


async def test_the_admin_reads_the_stored_state(store: StateStore) -> None:
    assert await store.get_client_state("c1") is None
    await store.save_client_state("c1", b"\x00state\xff", tier=1, score=0.7, ttl_s=60)
    assert await store.get_client_state("c1") == b"\x00state\xff"
    await store.save_client_state("c1", b"", tier=1, score=0.7, ttl_s=60)
    assert await store.get_client_state("c1") is None


async def test_state_size_limit(store: StateStore) -> None:
    await store.save_client_state("c1", b"x" * 32 * 1024, tier=0, score=0.0, ttl_s=60)
    with pytest.raises(ValueError, match="32768-byte limit"):
        await store.save_client_state("c1", b"x" * (32 * 1024 + 1), tier=0, score=0.0, ttl_s=60)
    assert (await store.hot_path(req())).detector_state == b"x" * 32 * 1024, "the oversize write changed nothing"
    with pytest.raises(ValueError, match="tier"):
        await store.save_client_state("c1", b"", tier=-1, score=0.0, ttl_s=60)


async def test_state_expires_and_hot_path_extends_it(store: StateStore) -> None:
    await store.save_client_state("a", b"A", tier=1, score=0.5, ttl_s=0.3)
    await store.save_client_state("b", b"B", tier=1, score=0.5, ttl_s=0.3)
    await store.hot_path(req("a", ttl=30.0))  # an active client's state does not lapse between saves
    await asyncio.sleep(0.4)
    assert (await store.hot_path(req("a"))).detector_state == b"A"
    gone = await store.hot_path(req("b", tiers=TIERS))
    assert gone.detector_state is None and gone.tier == 0
    assert await store.get_client("b") is None


async def test_overrides(store: StateStore) -> None:
    await store.save_client_state("c1", b"s", tier=2, score=0.9, ttl_s=60)
    await store.set_override("c1", "allow", None, ttl_s=60)
    r = await store.hot_path(req(tiers=TIERS))
    assert r.allowed and r.tier == 0 and r.override == "allow" and r.requests.limit == 5
    rec = await store.get_client("c1")
    assert rec is not None and (rec.tier, rec.override, rec.detector_tier, rec.pinned_tier) == (0, "allow", 2, None)
    assert rec.override_ttl_s is not None and 55 < rec.override_ttl_s <= 60

    await store.set_override("c1", None, 1, ttl_s=60)  # pin tier 1, replacing the allow
    r = await store.hot_path(req(tiers=TIERS))
    assert r.tier == 1 and r.override is None

    await store.set_override("c1", "deny", None, ttl_s=60)
    denied = [await store.hot_path(req(tiers=TIERS)) for _ in range(3)]
    assert all(not d.allowed and d.override == "deny" for d in denied)
    assert "Retry-After" not in rate_limit_headers(denied[0])

    await store.set_override("c1", None, None, ttl_s=60)  # clear
    rec = await store.get_client("c1")
    assert rec is not None and (rec.override, rec.pinned_tier, rec.override_ttl_s, rec.tier) == (None, None, None, 2)
    await store.set_override("fresh", "deny", None, ttl_s=60)
    await store.set_override("fresh", None, None, ttl_s=60)
    r = await store.hot_path(req("fresh"))
    assert r.allowed and r.requests.remaining == 4, "denied requests were not charged"


async def test_override_expires(store: StateStore) -> None:
    await store.set_override("c1", "deny", None, ttl_s=0.2)
    assert not (await store.hot_path(req())).allowed
    rec = await store.get_client("c1")
    assert rec is not None and rec.override == "deny" and rec.score == 0.0
    await asyncio.sleep(0.3)
    assert (await store.hot_path(req())).allowed
    assert await store.get_client("c1") is None


# --- cross-account linking, alerts, recipients, leases, blobs ----------------------------------------------


async def test_link_sketches(store: StateStore) -> None:
    assert await store.link_sketches("A", [1, 2, 3], ttl_s=60) == {}
    assert await store.link_sketches("B", [2, 3, 4, 3], ttl_s=60) == {"A": 2}
    assert await store.link_sketches("C", [3, -7], ttl_s=60) == {"A": 1, "B": 1}
    assert await store.link_sketches("A", [1], ttl_s=60) == {}, "a client is never linked to itself"
    assert await store.link_sketches("A", [], ttl_s=60) == {}


async def test_link_sketches_bounded_and_expiring(store: StateStore) -> None:
    for i in range(MAX_SKETCH_MEMBERS + 8):
        await store.link_sketches(f"k{i}", [42], ttl_s=60)
    shared = await store.link_sketches("probe", [42], ttl_s=60)
    assert len(shared) == MAX_SKETCH_MEMBERS and "k0" not in shared, "oldest members are dropped"
    await store.link_sketches("x", [99], ttl_s=0.2)
    await asyncio.sleep(0.3)
    assert await store.link_sketches("y", [99], ttl_s=60) == {}


async def test_alerts_bounded_newest_first(store: StateStore) -> None:
    for i in range(10):
        await store.append_alert(f'{{"n": {i}}}', max_len=5)
    assert await store.recent_alerts(100) == [f'{{"n": {i}}}' for i in (9, 8, 7, 6, 5)]
    assert await store.recent_alerts(2) == ['{"n": 9}', '{"n": 8}']
    assert await store.recent_alerts(0) == []


async def test_recipients(store: StateStore) -> None:
    assert await store.recipients() == {}
    await store.add_recipient("a", 2, ttl_s=60)
    await store.add_recipient("a", 1, ttl_s=60)
    await store.add_recipient("b:with:colons", 1, ttl_s=60)
    await store.add_recipient("a", 1, ttl_s=60)
    await store.add_recipient("short", 3, ttl_s=0.2)
    assert await store.recipients() == {"a": [1, 2], "b:with:colons": [1], "short": [3]}
    await asyncio.sleep(0.3)
    assert "short" not in await store.recipients()
    await store.add_recipient("a", 1, ttl_s=0.1)  # a shorter TTL never shortens an existing record
    await asyncio.sleep(0.2)
    assert (await store.recipients())["a"] == [1, 2]


async def test_leases_one_owner_at_a_time(store: StateStore) -> None:
    assert await store.acquire_lease("canary", "r1", ttl_s=0.3)
    assert not await store.acquire_lease("canary", "r2", ttl_s=0.3)
    assert await store.acquire_lease("canary", "r1", ttl_s=0.3), "the owner renews"
    assert await store.acquire_lease("other", "r2", ttl_s=0.3), "leases are per name"
    results = await asyncio.gather(*(store.acquire_lease("race", f"o{i}", ttl_s=5) for i in range(20)))
    assert sum(results) == 1
    await asyncio.sleep(0.4)
    assert await store.acquire_lease("canary", "r2", ttl_s=0.3), "an expired lease can be taken over"
    assert not await store.acquire_lease("canary", "r1", ttl_s=0.3)


async def test_blobs(store: StateStore) -> None:
    assert await store.get_blob("weights") is None
    await store.set_blob("weights", b'{"stable": 90}', ttl_s=60)
    assert await store.get_blob("weights") == b'{"stable": 90}'
    await store.set_blob("weights", b"\x00\x01", ttl_s=0.2)
    assert await store.get_blob("weights") == b"\x00\x01"
    await asyncio.sleep(0.3)
    assert await store.get_blob("weights") is None


@pytest.mark.parametrize("bad", [0, -1.0])
async def test_non_positive_ttl_is_rejected(store: StateStore, bad: float) -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        await store.set_blob("b", b"x", ttl_s=bad)


# --- Redis-only: TTL on every key, hash-tag layout ------------------------------------------------------------


async def test_every_redis_key_has_a_ttl(redis_url: str) -> None:
    s = RedisStore.from_config(StoreConfig(kind="redis", url=redis_url, timeout_ms=2000))
    try:
        await s.hot_path(req("c1", tokens=5, tiers=TIERS))
        await s.reconcile_tokens("c2", 0, 50, TOKENS)
        await s.save_client_state("c1", b"s", 1, 0.5, ttl_s=60)
        await s.set_override("c3", None, 2, ttl_s=60)
        await s.link_sketches("c1", [1, 2], ttl_s=60)
        await s.append_alert("{}", max_len=10)
        await s.add_recipient("c1", 1, ttl_s=60)
        await s.acquire_lease("l", "o", ttl_s=60)
        await s.set_blob("b", b"v", ttl_s=60)
        raw = aredis.Redis.from_url(redis_url)
        keys = [k async for k in raw.scan_iter("*")]
        assert len(keys) == 11, keys  # 10 + the override index (ipgate:overrides)
        for k in keys:
            assert await raw.pttl(k) > 0, f"{k!r} has no TTL"
        await raw.aclose()
    finally:
        await s.close()


@pytest.mark.parametrize("client", ["alice", "a{b}c", "}x{", "tenant:42/user", "ü"])
def test_client_keys_share_one_cluster_slot(client: str) -> None:
    s = RedisStore("redis://127.0.0.1:1/0")
    keys = s.client_keys(client)
    assert len(set(keys)) == 4
    assert len({key_slot(k.encode()) for k in keys}) == 1
