"""Combiner parameters (fitted logistic regression, shipped as JSON) and the tier state machine.

The combiner is ``score = sigmoid(intercept + sum_i weight_i * detector_score_i)``: a logistic regression
fitted by ``scripts/eval/fit_combiner.py`` on generated traces from the TRAIN split of prompts, so the
score reads as "probability this client is extracting", calibrated on that population. Weights are plain
floats in ``detectors/data/combiner.json``; the gateway config may override any weight by detector name.

Tiers (0 normal, 1 watch, 2 throttle, 3 block) move with hysteresis: a client climbs to tier t as soon as
its score reaches ``enter[t]``; it steps down one tier only after its score has stayed below
``enter[tier] - margin`` for ``cooldown_s`` seconds. Detector counters decay with time, so a client that
stops misbehaving cools down tier by tier.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detectors.reference import Reference


@dataclass(frozen=True, slots=True)
class TierThresholds:
    """``enter[i]`` is the score that lifts a client to tier ``i + 1``; must be increasing."""

    enter: tuple[float, ...] = (0.5, 0.8, 0.97)
    margin: float = 0.15
    cooldown_s: float = 900.0
    min_requests_to_block: int = 20

    def __post_init__(self) -> None:
        if any(b <= a for a, b in zip(self.enter, self.enter[1:], strict=False)):
            raise ValueError(f"tier thresholds must increase, got {self.enter}")
        if not all(0.0 < t <= 1.0 for t in self.enter):
            raise ValueError(f"tier thresholds must lie in (0, 1], got {self.enter}")
        if self.margin < 0 or self.cooldown_s < 0:
            raise ValueError("margin and cooldown_s must be >= 0")

    @property
    def max_tier(self) -> int:
        return len(self.enter)


@dataclass(frozen=True, slots=True)
class CombinerParams:
    """Fitted combiner: intercept + one weight per detector name (detectors without a weight get 0)."""

    intercept: float
    weights: Mapping[str, float]
    tiers: TierThresholds = field(default_factory=TierThresholds)
    reference: Reference = field(default_factory=Reference)
    meta: Mapping[str, Any] = field(default_factory=dict)

    def combine(self, scores: Mapping[str, float], weights: Mapping[str, float] | None = None) -> float:
        w = self.weights if weights is None else weights
        z = self.intercept + sum([w.get(name, 0.0) * s for name, s in scores.items()])  # a list: faster, same sum
        return 1.0 / (1.0 + math.exp(-z)) if z > -60 else 0.0

    @classmethod
    def from_json(cls, text: str) -> CombinerParams:
        try:
            raw = json.loads(text)
            tiers_raw = raw.get("tiers", {})
            d = TierThresholds()  # defaults (a slots dataclass has no class-level default attributes)
            tiers = TierThresholds(
                enter=tuple(float(x) for x in tiers_raw.get("enter", d.enter)),
                margin=float(tiers_raw.get("margin", d.margin)),
                cooldown_s=float(tiers_raw.get("cooldown_s", d.cooldown_s)),
                min_requests_to_block=int(tiers_raw.get("min_requests_to_block", d.min_requests_to_block)),
            )
            return cls(
                intercept=float(raw["intercept"]),
                weights={str(k): float(v) for k, v in raw["weights"].items()},
                tiers=tiers,
                reference=Reference.from_dict(raw.get("reference", {})),
                meta=dict(raw.get("meta", {})),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"combiner parameters are malformed: {e}") from e

    def to_json(self) -> str:
        return json.dumps(
            {
                "intercept": round(self.intercept, 6),
                "weights": {k: round(v, 6) for k, v in sorted(self.weights.items())},
                "tiers": {
                    "enter": list(self.tiers.enter),
                    "margin": self.tiers.margin,
                    "cooldown_s": self.tiers.cooldown_s,
                    "min_requests_to_block": self.tiers.min_requests_to_block,
                },
                "reference": self.reference.to_dict(),
                "meta": dict(self.meta),
            },
            indent=2,
            sort_keys=True,
        ) + "\n"


def default_combiner_path() -> Path:
    """Where the shipped parameters live: ``detectors/data/combiner.json``, package data that installs with
    the package (``scripts/eval/fit_combiner.py`` regenerates it)."""
    return Path(__file__).resolve().parent / "data" / "combiner.json"


@dataclass(slots=True)
class TierState:
    tier: int = 0
    below_since: float = -1.0  # when the score first fell below the current tier's exit level; -1 = not


def next_tier(
    st: TierState, score: float, now: float, last_ts: float, requests_seen: int, th: TierThresholds
) -> None:
    """Advance the hysteresis state machine in place (see module docstring).

    Silence counts as good behaviour: if the score (already time-decayed by the detectors) is below the exit
    level now, the cool-down clock is taken to have started at the client's previous request, ``last_ts``.
    """
    target = 0
    for i, level in enumerate(th.enter):
        if score >= level:
            target = i + 1
    if target >= th.max_tier and requests_seen < th.min_requests_to_block:
        target = th.max_tier - 1  # never block on a handful of requests
    if target > st.tier:
        st.tier, st.below_since = target, -1.0
        return
    while st.tier > 0:
        exit_level = th.enter[st.tier - 1] - th.margin
        if score >= exit_level:
            st.below_since = -1.0
            return
        if st.below_since < 0:
            st.below_since = last_ts if 0 < last_ts < now else now
        if now - st.below_since < th.cooldown_s:
            return
        st.tier -= 1
        st.below_since += th.cooldown_s  # the next step down needs another full cool-down
