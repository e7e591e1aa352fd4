"""Comparing an observed signature with a reference.

Per probe, two pieces of evidence:
- text similarity: the larger of the Jaccard similarity of word 3-gram shingles and the shared-prefix ratio
  (words in common from the start, over the longer answer). At temperature 0 the genuine weights answer
  (nearly) identically; batching nondeterminism in real servers can flip one token part-way, after which the
  greedy continuation diverges: the shingles then undercount (0.3 at a divergence half-way) while the prefix
  still shows the shared start. A different model rarely shares more than a few opening words.
- first-token distribution, where both sides returned logprobs: total-variation distance between the top-k
  distributions (both cut to the shorter list's k, then renormalised). Quantisation and fine-tuning move
  these numbers even when the greedy text is unchanged, which is what makes this the sharper check.

The verdict uses the median over probes (robust to one flaky answer): ``match`` when the median similarity is
at least ``match_threshold``, ``mismatch`` below ``mismatch_threshold``, ``inconclusive`` between, or when
too few probes were answered. The logprob channel also has a veto of its own: when the median first-token
distance over the probes that carried logprobs exceeds ``max_logprob_distance``, the verdict is ``mismatch``
even if the greedy texts agree (a re-quantised or fine-tuned model that keeps its argmax answers); and the
text channel has one too: a median text similarity below ``mismatch_threshold`` is a ``mismatch`` even when
the first tokens agree. Empty answers, and probes the reference recorded with another prompt, are skipped
(no evidence either way).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from fingerprint.signature import Signature, normalise, shingles

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


def prefix_ratio(a: str, b: str) -> float:
    """Words shared from the start, over the longer answer's word count."""
    wa, wb = normalise(a).split(), normalise(b).split()
    if not wa and not wb:
        return 1.0
    n = 0
    for x, y in zip(wa, wb, strict=False):
        if x != y:
            break
        n += 1
    return n / max(len(wa), len(wb))


def text_similarity(a: str, b: str) -> float:
    return max(jaccard(shingles(a), shingles(b)), prefix_ratio(a, b))


def _head(p: Mapping[str, float], k: int) -> dict[str, float]:
    # Ties are broken by token so both sides cut a tied tail the same way.
    return dict(sorted(p.items(), key=lambda kv: (-kv[1], kv[0]))[:k])


# Engines spell the same token differently: byte-level BPE's "Ġ" or SentencePiece's "▁" for a leading space
# (some servers pass them through), or the decoded " The". The distribution is the weights' identity, not the
# spelling: map the markers to a space and compare tokens without surrounding whitespace (probabilities of
# tokens that then coincide add up, which can only lower the distance a little).
_SPACE_MARKERS = str.maketrans({"Ġ": " ", "▁": " ", "Ċ": "\n"})


def _probs(top: Mapping[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for t, v in top.items():
        key = t.translate(_SPACE_MARKERS).strip()
        out[key] = out.get(key, 0.0) + math.exp(v)
    return out


def total_variation(p: Mapping[str, float], q: Mapping[str, float]) -> float:
    """TV distance between two top-k logprob maps, each cut to the shorter list's k and renormalised.

    Cutting matters: a server that caps ``top_logprobs`` (or a proxy in front of it) returns the head of the
    same distribution, and renormalising a top-1 list over its own mass would make it look like a point mass
    (TV 0.4 against a genuine top-5 of 0.6/0.2/0.1/...).
    """
    k = min(len(p), len(q))
    if k == 0:
        return 0.0
    pp, qq = _probs(_head(p, k)), _probs(_head(q, k))
    tokens = set(pp) | set(qq)
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
    max_logprob_distance: float = 0.35,
) -> FingerprintMatch:
    if not 0.0 <= mismatch_threshold <= match_threshold <= 1.0:
        raise ValueError("thresholds must satisfy 0 <= mismatch_threshold <= match_threshold <= 1")
    comparisons: list[ProbeComparison] = []
    empty, other_probe = [], []
    for ref in reference.answers:
        obs = observed.answer(ref.probe_id)
        if obs is None:
            continue
        if not ref.same_probe(obs):  # recorded with another version of this probe: a different question
            other_probe.append(ref.probe_id)
            continue
        if not normalise(ref.text) or not normalise(obs.text):
            # An empty answer (a content filter, text sent elsewhere, a broken server) says nothing about the
            # weights: it is neither evidence of a swap nor, when both sides are empty, of a match.
            empty.append(ref.probe_id)
            continue
        dist = None
        if ref.first_token_logprobs and obs.first_token_logprobs:
            dist = total_variation(ref.first_token_logprobs, obs.first_token_logprobs)
        comparisons.append(ProbeComparison(ref.probe_id, text_similarity(ref.text, obs.text), dist))
    if len(comparisons) < min_probes:
        why = [f"only {len(comparisons)} of {len(reference.answers)} probes answered (need {min_probes})"]
        if empty:
            why.append(f"empty answers: {', '.join(empty)}")
        if other_probe:
            why.append(f"the reference was recorded with other versions of probes {', '.join(other_probe)}: "
                       "re-record it")
        return FingerprintMatch("inconclusive", 0.0, tuple(comparisons), tuple(why))
    sims = [c.similarity for c in comparisons]
    median = statistics.median(sims)
    median_text = statistics.median(c.text_similarity for c in comparisons)
    worst = sorted(comparisons, key=lambda c: c.similarity)[:3]
    reasons = tuple(
        f"probe {c.probe_id}: similarity {c.similarity:.2f}" for c in worst if c.similarity < match_threshold
    )
    dists = [c.logprob_distance for c in comparisons if c.logprob_distance is not None]
    median_dist = statistics.median(dists) if len(dists) >= min_probes else None
    verdict: Verdict
    if median_dist is not None and median_dist > max_logprob_distance:
        verdict = "mismatch"
        reasons = (f"first-token distributions moved: median total variation {median_dist:.2f} "
                   f"over {len(dists)} probes (limit {max_logprob_distance:.2f})", *reasons)
    elif median_text < mismatch_threshold:
        # Each channel can veto on its own: a sibling model or fine-tune with the same tokenizer often starts
        # its answers like the genuine one, and averaging that agreement in would lift a text mismatch into
        # "inconclusive" — turning logprobs on must never make a check weaker than text alone.
        verdict, median = "mismatch", min(median, median_text)
        reasons = (f"answers differ: median text similarity {median_text:.2f} "
                   f"(mismatch below {mismatch_threshold:.2f})", *reasons)
    elif median >= match_threshold:
        verdict = "match"
    elif median < mismatch_threshold:
        verdict = "mismatch"
        reasons = (f"median similarity {median:.2f} (mismatch below {mismatch_threshold:.2f})", *reasons)
    else:
        verdict = "inconclusive"
        reasons = (f"median similarity {median:.2f} lies between {mismatch_threshold:.2f} and "
                   f"{match_threshold:.2f}", *reasons)
    return FingerprintMatch(verdict, median, tuple(comparisons), reasons)
