"""Comparing an observed signature with a reference.

Per probe, two pieces of evidence:
- text similarity: Jaccard similarity of word 3-gram shingles of the normalised answers. At temperature 0 the
  genuine weights answer (nearly) identically; batching nondeterminism in real servers can change a late token,
  which costs a few shingles, not most of them.
- first-token distribution, where both sides returned logprobs: total-variation distance between the top-k
  distributions (renormalised over the union of tokens). Quantisation and fine-tuning move these numbers even
  when the greedy text is unchanged, which is what makes this the sharper check.

The verdict uses the median over probes (robust to one flaky answer): ``match`` when the median similarity is
at least ``match_threshold``, ``mismatch`` below ``mismatch_threshold``, ``inconclusive`` between, or when
too few probes were answered.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from fingerprint.signature import Signature, shingles

Verdict = Literal["match", "mismatch", "inconclusive"]


@dataclass(frozen=True, slots=True)
class ProbeComparison:
    probe_id: str
    text_similarity: float
    logprob_distance: float | None  # total variation in [0, 1]; None when either side had no logprobs

    @property
    def similarity(self) -> float:
        if self.logprob_distance is None:
            return self.text_similarity
        return 0.5 * self.text_similarity + 0.5 * (1.0 - self.logprob_distance)


@dataclass(frozen=True, slots=True)
class FingerprintMatch:
    verdict: Verdict
    similarity: float  # median per-probe similarity in [0, 1]
    probes: tuple[ProbeComparison, ...]
    reasons: tuple[str, ...]


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def total_variation(p: Mapping[str, float], q: Mapping[str, float]) -> float:
    """TV distance between two top-k logprob maps, each renormalised over its own top-k mass."""
    tokens = set(p) | set(q)
    pp = {t: math.exp(v) for t, v in p.items()}
    qq = {t: math.exp(v) for t, v in q.items()}
    zp = sum(pp.values()) or 1.0
    zq = sum(qq.values()) or 1.0
    return 0.5 * sum(abs(pp.get(t, 0.0) / zp - qq.get(t, 0.0) / zq) for t in tokens)


def compare(
    reference: Signature,
    observed: Signature,
    *,
    match_threshold: float = 0.8,
    mismatch_threshold: float = 0.5,
    min_probes: int = 4,
) -> FingerprintMatch:
    if not 0.0 <= mismatch_threshold <= match_threshold <= 1.0:
        raise ValueError("thresholds must satisfy 0 <= mismatch_threshold <= match_threshold <= 1")
    comparisons: list[ProbeComparison] = []
    for ref in reference.answers:
        obs = observed.answer(ref.probe_id)
        if obs is None:
            continue
        dist = None
        if ref.first_token_logprobs and obs.first_token_logprobs:
            dist = total_variation(ref.first_token_logprobs, obs.first_token_logprobs)
        comparisons.append(ProbeComparison(ref.probe_id, jaccard(shingles(ref.text), shingles(obs.text)), dist))
    if len(comparisons) < min_probes:
        return FingerprintMatch(
            "inconclusive", 0.0, tuple(comparisons),
            (f"only {len(comparisons)} of {len(reference.answers)} probes answered (need {min_probes})",),
        )
    sims = [c.similarity for c in comparisons]
    median = statistics.median(sims)
    worst = sorted(comparisons, key=lambda c: c.similarity)[:3]
    reasons = tuple(
        f"probe {c.probe_id}: similarity {c.similarity:.2f}" for c in worst if c.similarity < match_threshold
    )
    verdict: Verdict
    if median >= match_threshold:
        verdict = "match"
    elif median < mismatch_threshold:
        verdict = "mismatch"
    else:
        verdict = "inconclusive"
    return FingerprintMatch(verdict, median, tuple(comparisons), reasons)
