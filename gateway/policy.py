"""Tier policy as data: tier ints (what the store keeps) ↔ the configured tiers, and each tier's limits.

Tier 0 is the most trusted; detection raises a client's tier as suspicion grows. Every entry of the config's
`limits` is a *limit class* (a plan: `default`, `free`, `enterprise`, ...); a client has one (see
gateway/auth/limitclass.py). A tier may name a `limits` entry too: at that tier a client gets, field by field,
the tighter of its class's limits and the tier's, so suspicion only ever tightens a plan, and a free client is
not loosened by a tier whose limits are above its own. A tier that names none applies the class's limits. A
tier's own `max_in_flight` tightens every class's in-flight cap at that tier the same way.

All of it becomes GCRA parameters here, once, at start-up: one ``limits_by_tier`` tuple per class, so the hot
path does one dict lookup (class → tuple) and the store indexes the tuple by tier. The tuples are built once
and never rebuilt, so stores may cache per-tuple encodings by identity.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace

from gateway.config import GatewayConfig, TierLimitsConfig, TierPolicyConfig
from gateway.principal import DEFAULT_LIMIT_CLASS as DEFAULT_CLASS
from gateway.store.base import Limits

log = logging.getLogger(__name__)

BURST_WINDOW_S = 10.0  # default burst: what the rate allows in 10 s (per_minute / 6)


def limits_from_config(cfg: TierLimitsConfig) -> Limits:
    """GCRA parameters for one ``limits`` entry; default bursts are ``per_minute / 6`` (at least 1)."""
    share = BURST_WINDOW_S / 60.0
    return Limits(
        requests_per_minute=cfg.requests_per_minute,
        tokens_per_minute=cfg.tokens_per_minute,
        burst_requests=cfg.burst_requests or max(1, int(cfg.requests_per_minute * share)),
        burst_tokens=cfg.burst_tokens or max(1, int(cfg.tokens_per_minute * share)),
        max_in_flight=cfg.max_in_flight or 0,
    )


_UNKNOWN_LOGGED: set[str] = set()  # names logged; only a programming error gets here (auth checks names)


def tighter_cap(a: int, b: int) -> int:
    """The tighter of two in-flight caps, where 0 is no cap."""
    return b if a == 0 else a if b == 0 else min(a, b)


def tighter(a: Limits, b: Limits) -> Limits:
    """Field by field the smaller of two limits (rates, bursts, in-flight cap separately); ``a`` itself when it is
    no looser."""
    cap = tighter_cap(a.max_in_flight, b.max_in_flight)
    if (a.requests_per_minute <= b.requests_per_minute and a.tokens_per_minute <= b.tokens_per_minute
            and a.burst_requests <= b.burst_requests and a.burst_tokens <= b.burst_tokens and cap == a.max_in_flight):
        return a
    return Limits(
        requests_per_minute=min(a.requests_per_minute, b.requests_per_minute),
        tokens_per_minute=min(a.tokens_per_minute, b.tokens_per_minute),
        burst_requests=min(a.burst_requests, b.burst_requests),
        burst_tokens=min(a.burst_tokens, b.burst_tokens),
        max_in_flight=cap,
    )


def _at_tier(base: Limits, tier: TierPolicyConfig, limits: Mapping[str, Limits]) -> Limits:
    lim = base if tier.limits is None else tighter(base, limits[tier.limits])
    cap = tighter_cap(lim.max_in_flight, tier.max_in_flight or 0)
    return lim if cap == lim.max_in_flight else replace(lim, max_in_flight=cap)


def class_tiers(base: Limits, tiers: tuple[TierPolicyConfig, ...], limits: Mapping[str, Limits]) -> tuple[Limits, ...]:
    """One class's ``limits_by_tier``: its own limits, tightened at each tier that names limits or an in-flight
    cap."""
    return tuple(_at_tier(base, t, limits) for t in tiers)


class Policy:
    """The configured tiers in order, with each limit class's limits per tier; lookups clamp to the known range."""

    __slots__ = ("_by_name", "_count", "flag_tier", "limits_by_class", "limits_by_tier", "tiers")

    def __init__(self, tiers: tuple[TierPolicyConfig, ...], limits_by_tier: tuple[Limits, ...], flag_tier: int,
                 limits_by_class: Mapping[str, tuple[Limits, ...]] | None = None):
        if not tiers or len(tiers) != len(limits_by_tier):
            raise ValueError("a policy needs at least one tier and one Limits per tier")
        by_class = dict(limits_by_class or {})
        by_class.setdefault(DEFAULT_CLASS, limits_by_tier)
        if by_class[DEFAULT_CLASS] is not limits_by_tier or any(len(v) != len(tiers) for v in by_class.values()):
            raise ValueError("limits_by_class needs one Limits per tier, and its 'default' is limits_by_tier")
        self.tiers = tiers
        self._count = len(tiers)
        self.limits_by_tier = limits_by_tier  # the `default` class's
        self.limits_by_class = by_class
        self.flag_tier = flag_tier
        self._by_name = {t.name: i for i, t in enumerate(tiers)}

    @classmethod
    def from_config(cls, cfg: GatewayConfig) -> Policy:
        tiers = tuple(cfg.policy.tiers)
        limits = {name: limits_from_config(lc) for name, lc in cfg.limits.items()}
        # the config validator guarantees that every name a tier uses is a key of `limits`
        by_class = {name: class_tiers(lim, tiers, limits) for name, lim in limits.items()}
        flag = next(i for i, t in enumerate(tiers) if t.name == cfg.policy.flag_tier)
        return cls(tiers, by_class[DEFAULT_CLASS], flag, by_class)

    def _clamp(self, i: int) -> int:
        return 0 if i < 0 else min(i, len(self.tiers) - 1)

    def tier(self, i: int) -> TierPolicyConfig:
        # five or six lookups per request: the in-range case without a call to _clamp (≈ 0.15 µs each)
        if 0 <= i < self._count:
            return self.tiers[i]
        return self.tiers[self._clamp(i)]

    def class_limits(self, limit_class: str) -> tuple[Limits, ...]:
        """A class's ``limits_by_tier``. The authenticator only hands out classes of this config (checked at
        load); an unknown name here is a programming error, answered with `default` and logged once."""
        by_tier = self.limits_by_class.get(limit_class)
        if by_tier is None:
            if limit_class not in _UNKNOWN_LOGGED:
                _UNKNOWN_LOGGED.add(limit_class)
                log.error("limit class %r is not in the configuration; `default` applies", limit_class)
            return self.limits_by_tier
        return by_tier

    def limits_for(self, i: int, limit_class: str = DEFAULT_CLASS) -> Limits:
        return self.class_limits(limit_class)[self._clamp(i)]

    def index(self, name: str) -> int:
        """The int of a tier name; raises ``KeyError`` naming the known tiers."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"unknown tier {name!r}; known tiers: {', '.join(self._by_name)}") from None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tiers)
