"""Policy: tier names ↔ ints, limits per tier with default bursts."""

from __future__ import annotations

import pytest

from gateway.config import parse_config
from gateway.policy import Policy
from gateway.store.base import Limits

MODELS = [{"name": "sim", "backends": [{"name": "a", "url": "http://127.0.0.1:1"}]}]


def test_default_policy() -> None:
    p = Policy.from_config(parse_config({"models": MODELS}, env={}))
    assert p.names == ("normal", "watch", "throttle", "block")
    assert p.flag_tier == 2 and p.index("throttle") == 2
    assert p.limits_for(0) == Limits(600, 200_000, 100, 33_333, 64), "default bursts are per_minute / 6"
    assert p.limits_for(1) == Limits(600, 200_000, 100, 33_333, 16), "watch: the class's limits, 16 in flight"
    assert p.limits_for(2) == Limits(30, 10_000, 5, 1_666, 4)
    assert p.limits_by_tier[3] == p.limits_for(2)
    assert p.tier(3).block and not p.tier(2).block
    assert p.tier(99).name == "block" and p.limits_for(-1) == p.limits_for(0), "lookups clamp"
    with pytest.raises(KeyError, match="unknown tier 'nope'; known tiers: normal, watch, throttle, block"):
        p.index("nope")


def test_explicit_bursts_and_custom_tiers() -> None:
    cfg = parse_config({
        "models": MODELS,
        "limits": {
            "default": {"requests_per_minute": 3, "tokens_per_minute": 5, "burst_requests": 7},
            "vip": {"requests_per_minute": 6000, "tokens_per_minute": 1e6, "burst_tokens": 9},
        },
        "policy": {"tiers": [{"name": "vip", "limits": "vip"}, {"name": "std"}], "flag_tier": "std"},
    }, env={})
    p = Policy.from_config(cfg)
    # a tier's limits only tighten a class (gateway/policy.py): `default` clients stay at their own limits on
    # tier "vip", while the `vip` class gets its own (defaulted bursts: 6000 / 6, explicit 9) on both tiers
    assert p.limits_by_tier == (Limits(3, 5, 7, 1, 64), Limits(3, 5, 7, 1, 64))
    assert p.limits_by_class["vip"] == (Limits(6000, 1e6, 1000, 9, 64), Limits(6000, 1e6, 1000, 9, 64))
    assert p.flag_tier == 1 and p.index("vip") == 0


def test_policy_needs_one_limits_per_tier() -> None:
    p = Policy.from_config(parse_config({"models": MODELS}, env={}))
    with pytest.raises(ValueError, match="one Limits per tier"):
        Policy(p.tiers, p.limits_by_tier[:2], 0)
