"""Limit classes in the policy and the stores: the tighter-of rule per tier, one precomputed tuple per class,
and every store admitting two classes side by side (memory, a real Redis, a real Redis Cluster, and the
resilient store's in-process fallback)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from gateway.admit import Admission
from gateway.config import StoreConfig, parse_config
from gateway.policy import Policy, tighter
from gateway.store.base import AdmitRequest, AdmitResult, Limits, RateDecision, StateStore
from gateway.store.redis import TIER_ARGS_CACHE_MAX, RedisStore
from gateway.store.resilient import ResilientStore
from tests.conftest import free_port

MODELS = [{"name": "sim", "backends": [{"name": "a", "url": "http://127.0.0.1:1"}]}]
LIMITS: dict[str, Any] = {
    "default": {"requests_per_minute": 600, "tokens_per_minute": 200_000},
    # below `suspicious` in requests, above it in tokens: the tighter-of rule mixes fields
    "free": {"requests_per_minute": 12, "tokens_per_minute": 50_000, "burst_requests": 2},
    "enterprise": {"requests_per_minute": 6000, "tokens_per_minute": 2_000_000, "burst_tokens": 500_000},
}
SUSPICIOUS = Limits(30, 10_000, 5, 1_666, 4)  # the built-in entry, bursts per_minute / 6


def policy(**extra: Any) -> Policy:
    return Policy.from_config(parse_config({"models": MODELS, "limits": LIMITS, **extra}, env={}))


@pytest.mark.parametrize(("a", "b", "expected"), [
    (Limits(10, 100, 1, 10), Limits(20, 200, 2, 20), Limits(10, 100, 1, 10)),
    (Limits(20, 200, 2, 20), Limits(10, 100, 1, 10), Limits(10, 100, 1, 10)),
    (Limits(10, 200, 3, 10), Limits(20, 100, 2, 20), Limits(10, 100, 2, 10)),  # field by field
    (Limits(5, 5, 5, 5), Limits(5, 5, 5, 5), Limits(5, 5, 5, 5)),
    # in-flight caps: the smaller; 0 (no cap) never tightens
    (Limits(5, 5, 5, 5, 8), Limits(5, 5, 5, 5, 3), Limits(5, 5, 5, 5, 3)),
    (Limits(5, 5, 5, 5, 0), Limits(5, 5, 5, 5, 3), Limits(5, 5, 5, 5, 3)),
    (Limits(5, 5, 5, 5, 0), Limits(5, 5, 5, 5, 0), Limits(5, 5, 5, 5, 0)),
])
def test_tighter_is_per_field_and_symmetric(a: Limits, b: Limits, expected: Limits) -> None:
    assert tighter(a, b) == expected == tighter(b, a)


def test_tighter_returns_the_class_object_when_the_tier_does_not_bind() -> None:
    lim = Limits(1, 1, 1, 1, 2)
    assert tighter(lim, SUSPICIOUS) is lim  # no new object per class and tier when nothing changes


# default tiers: normal, watch (no limits: the class's; max_in_flight 16), throttle, block (limits: suspicious);
# every class's max_in_flight is 64 unless it names one, suspicious's 4
@pytest.mark.parametrize(("cls", "expected"), [
    ("default", (Limits(600, 200_000, 100, 33_333, 64), Limits(600, 200_000, 100, 33_333, 16)) + (SUSPICIOUS,) * 2),
    ("enterprise", (Limits(6000, 2_000_000, 1000, 500_000, 64), Limits(6000, 2_000_000, 1000, 500_000, 16))
     + (SUSPICIOUS,) * 2),
    ("free", (Limits(12, 50_000, 2, 8_333, 64), Limits(12, 50_000, 2, 8_333, 16))
     + (Limits(12, 10_000, 2, 1_666, 4),) * 2),
    ("suspicious", (SUSPICIOUS,) * 4),
])
def test_class_limits_per_tier(cls: str, expected: tuple[Limits, ...]) -> None:
    p = policy()
    assert p.class_limits(cls) == expected
    assert [p.limits_for(i, cls) for i in range(4)] == list(expected)


def test_one_tuple_per_class_built_once() -> None:
    p = policy()
    assert set(p.limits_by_class) == {"default", "free", "enterprise", "suspicious"}
    assert p.class_limits("free") is p.class_limits("free") is p.limits_by_class["free"]
    assert p.limits_by_tier is p.limits_by_class["default"], "the default class is the old single tuple"
    assert p.limits_for(99, "free") == p.limits_for(3, "free") and p.limits_for(-1, "free") == p.limits_for(0, "free")


def test_unknown_class_in_the_policy_is_default_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    p = policy()
    with caplog.at_level(logging.ERROR, logger="gateway.policy"):
        for _ in range(3):
            assert p.class_limits("no-such-plan-xyz") is p.limits_by_tier
    assert sum("no-such-plan-xyz" in r.getMessage() for r in caplog.records) == 1


def test_a_tier_naming_limits_tightens_each_class_including_at_tier_0() -> None:
    p = policy(policy={"tiers": [{"name": "capped", "limits": "default"}, {"name": "open"}], "flag_tier": "open"})
    assert p.limits_for(0, "enterprise") == Limits(600, 200_000, 100, 33_333, 64), "capped to default at tier 0"
    assert p.limits_for(1, "enterprise") == Limits(6000, 2_000_000, 1000, 500_000, 64)
    assert p.limits_for(0, "free") == p.limits_for(1, "free") == Limits(12, 50_000, 2, 8_333, 64)


def test_admission_reconciles_at_the_limits_it_was_admitted_at() -> None:
    p = policy()
    d = RateDecision(True, 1, 1, 0.0, 0.0)
    for tier in (0, 2, 3, 7):
        res = AdmitResult(True, tier, None, d, d, None, 0.0)
        assert Admission(res, tier, None, 10, p.class_limits("free")).limits == p.limits_for(tier, "free")


# --- the stores -----------------------------------------------------------------------------------------

async def burst(store: StateStore, client: str, by_tier: tuple[Limits, ...], n: int) -> list[bool]:
    return [(await store.hot_path(AdmitRequest(client, 1, by_tier))).allowed for _ in range(n)]


async def test_two_classes_side_by_side(store: StateStore) -> None:
    """A free and an enterprise client at the same moment: the free one is refused after its burst of 2, the
    enterprise one is not; interleaving their requests (one tuple, then the other) changes nothing."""
    p = policy()
    free, ent = p.class_limits("free"), p.class_limits("enterprise")
    got_free, got_ent = [], []
    for _ in range(6):
        got_free += await burst(store, "lc-free", free, 1)
        got_ent += await burst(store, "lc-ent", ent, 1)
    assert got_free == [True, True, False, False, False, False]
    assert all(got_ent)
    res = await store.hot_path(AdmitRequest("lc-free", 1, free))
    assert res.requests.limit == 2 and 0 < res.requests.retry_after_s <= 5.0  # 12/min: one every 5 s
    # at a suspicious tier the enterprise client is held to `suspicious` (pin tier 2 = throttle)
    await store.set_override("lc-ent", None, 2, 60)
    res = await store.hot_path(AdmitRequest("lc-ent", 1, ent))
    assert res.tier == 2 and res.requests.limit == SUSPICIOUS.burst_requests


async def test_redis_encodes_each_class_once(redis_url: str) -> None:
    s = RedisStore(redis_url, timeout_s=2.0)
    try:
        p = policy()
        free, ent = p.class_limits("free"), p.class_limits("enterprise")
        packed_free, packed_ent = s._limit_args(free)[0], s._limit_args(ent)[0]
        for _ in range(3):  # alternating classes hits the cache: the very same bytes objects come back
            assert s._limit_args(free)[0] is packed_free and s._limit_args(ent)[0] is packed_ent
        assert packed_free != packed_ent and len(s._tier_args) == 2
        for i in range(TIER_ARGS_CACHE_MAX + 5):  # a caller that builds a tuple per call stays bounded
            s._limit_args(tuple(Limits(i + 1, 1, 1, 1) for _ in range(4)))
        assert len(s._tier_args) <= TIER_ARGS_CACHE_MAX
        assert await burst(s, "lc-r", free, 3) == [True, True, False]
    finally:
        await s.close()


async def test_resilient_local_mode_divides_each_class_once_and_keeps_them_apart() -> None:
    """Redis unreachable, failure_mode local: each class's limits, divided by the replica count, in process."""
    dead = RedisStore.from_config(StoreConfig(kind="redis", url=f"redis://127.0.0.1:{free_port()}/0", timeout_ms=50))
    s = ResilientStore(dead, failure_mode="local", timeout_ms=50, local_replicas=2)
    await s.start()
    try:
        assert s.degraded
        p = policy()
        free, ent = p.class_limits("free"), p.class_limits("enterprise")
        div_free, div_ent = s._local_limits(free), s._local_limits(ent)
        for _ in range(3):
            assert s._local_limits(free) is div_free and s._local_limits(ent) is div_ent
        assert div_free[0].burst_requests == 1 and div_ent[0].burst_requests == 500
        assert await burst(s, "lc-free", free, 2) == [True, False], "free's burst of 2 over 2 replicas"
        assert all(await burst(s, "lc-ent", ent, 20))
    finally:
        await s.close()
