"""Tier policy as data: tier ints (what the store keeps) ↔ the configured tiers, and each tier's limits.

Tier 0 is the most trusted; detection raises a client's tier as suspicion grows. Each tier names a `limits`
entry of the config; those become GCRA parameters here, once, at start-up, so the hot path only indexes a
tuple.
"""

from __future__ import annotations

from gateway.config import GatewayConfig, TierLimitsConfig, TierPolicyConfig
from gateway.store.base import Limits

BURST_WINDOW_S = 10.0  # default burst: what the rate allows in 10 s (per_minute / 6)


def limits_from_config(cfg: TierLimitsConfig) -> Limits:
    """GCRA parameters for one ``limits`` entry; default bursts are ``per_minute / 6`` (at least 1)."""
    share = BURST_WINDOW_S / 60.0
    return Limits(
        requests_per_minute=cfg.requests_per_minute,
        tokens_per_minute=cfg.tokens_per_minute,
        burst_requests=cfg.burst_requests or max(1, int(cfg.requests_per_minute * share)),
        burst_tokens=cfg.burst_tokens or max(1, int(cfg.tokens_per_minute * share)),
    )


class Policy:
    """The configured tiers in order, with their limits; every lookup clamps to the known range."""

    __slots__ = ("_by_name", "flag_tier", "limits_by_tier", "tiers")

    def __init__(self, tiers: tuple[TierPolicyConfig, ...], limits_by_tier: tuple[Limits, ...], flag_tier: int):
        if not tiers or len(tiers) != len(limits_by_tier):
            raise ValueError("a policy needs at least one tier and one Limits per tier")
        self.tiers = tiers
        self.limits_by_tier = limits_by_tier
        self.flag_tier = flag_tier
        self._by_name = {t.name: i for i, t in enumerate(tiers)}

    @classmethod
    def from_config(cls, cfg: GatewayConfig) -> Policy:
        tiers = tuple(cfg.policy.tiers)
        limits = {name: limits_from_config(lc) for name, lc in cfg.limits.items()}
        by_tier = tuple(limits[t.limits] for t in tiers)  # the config validator guarantees the keys exist
        flag = next(i for i, t in enumerate(tiers) if t.name == cfg.policy.flag_tier)
        return cls(tiers, by_tier, flag)

    def _clamp(self, i: int) -> int:
        return 0 if i < 0 else min(i, len(self.tiers) - 1)

    def tier(self, i: int) -> TierPolicyConfig:
        return self.tiers[self._clamp(i)]

    def limits_for(self, i: int) -> Limits:
        return self.limits_by_tier[self._clamp(i)]

    def index(self, name: str) -> int:
        """The int of a tier name; raises ``KeyError`` naming the known tiers."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"unknown tier {name!r}; known tiers: {', '.join(self._by_name)}") from None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tiers)
