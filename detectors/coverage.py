"""Coverage and diversity of a client's prompts in the embedding space.

Three views, all incremental (nothing is rescored from a window):
- **topic coverage**: each prompt is assigned to the nearest of the reference's k-means topic centroids;
  a decayed histogram per client gives the coverage entropy. Sweeps over a taxonomy spread evenly over
  many topics; a person's questions cluster on a few.
- **distribution test (MMD)** against the benign reference: with a linear kernel the squared MMD is the
  squared distance between the client's (decayed) mean embedding and the reference mean. Under "this
  client is an ordinary benign user" it is about ``sigma2 / n`` plus the offset a focused user has; the
  excess over the benign p99.5 offset (fitted on TRAIN personas) is evidence.
- **near duplicates** (PRADA-style minimum distances): the cosine distance of each prompt to the nearest of
  the client's previous 16 prompts (kept as int8 vectors, 1 KiB). Template fills and paraphrase sweeps
  sit very close to a previous prompt far more often than human questions do.

The default embedding is the hashed n-gram projection from ``detectors.features``; it sees words, not
meaning, so paraphrased sweeps in new vocabulary look diverse but not anomalous (see the README's limits).
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from detectors.base import Counters, decode_vectors, dump_vectors, norm_entropy, ramp, shrunk_share
from detectors.features import EMBED_DIM
from detectors.reference import Reference
from detectors.types import DetectorScore, RequestFeatures, ResponseFeatures

RING = 16
N, W, NEAR, TOPIC0 = 0, 1, 2, 3
NEAR_COSINE = 0.85
_SPREAD = (0.82, 0.95)  # normalised topic entropy that is no evidence / full evidence of a sweep


class CoverageState:
    __slots__ = ("counters", "mean_sum", "pos", "ring", "ring_i8")

    def __init__(self, topics: int) -> None:
        self.counters = Counters(TOPIC0 + topics + EMBED_DIM)
        self.ring = np.zeros((RING, EMBED_DIM), dtype=np.float32)  # for the dot products
        self.ring_i8 = np.zeros((RING, EMBED_DIM), dtype=np.int8)  # the same vectors as stored (x 127)
        self.pos = 0
        self.mean_sum = self.counters.c[TOPIC0 + topics :]  # a view: decays with the counters


class Coverage:
    name: ClassVar[str] = "coverage"
    uses_reference: ClassVar[bool] = True
    state_bytes: ClassVar[int] = 8 + 4 * (TOPIC0 + 64 + EMBED_DIM) + RING * EMBED_DIM + 1

    def __init__(self, reference: Reference | None = None, max_topics: int = 64) -> None:
        self.ref = reference or Reference()
        if self.ref.centroids.shape[0] > max_topics:
            raise ValueError(f"{self.name}: at most {max_topics} topic centroids fit the state budget")
        self.k = int(self.ref.centroids.shape[0])
        # With m non-empty topics the normalised entropy is at most log(m) / log(k). Up to this many (17 of
        # 32) that bound is under the coverage ramp's low end, so the term is 0 whatever the exact entropy
        # and its per-topic logs are skipped (a focused user touches few topics).
        self._few_topics = self.k if self.k < 2 else max(
            (m for m in range(1, self.k + 1) if math.log(m) / math.log(self.k) < _SPREAD[0] - 1e-6), default=0)

    def new_state(self) -> CoverageState:
        return CoverageState(self.k)

    def dump(self, state: CoverageState) -> bytes:
        return dump_vectors(state.counters, state.ring_i8, state.pos)

    def load(self, data: bytes) -> CoverageState:
        # Built field by field: ``CoverageState(k)`` would first allocate the zero arrays replaced here.
        st = CoverageState.__new__(CoverageState)
        st.counters, st.ring_i8, st.ring, st.pos = decode_vectors(
            data, TOPIC0 + self.k + EMBED_DIM, RING, EMBED_DIM, self.name,
            (TOPIC0 + self.k, TOPIC0 + self.k + EMBED_DIM),  # the embedding sum is signed; the rest are counts
        )
        st.mean_sum = st.counters.c[TOPIC0 + self.k :]
        return st

    def observe(self, state: CoverageState, feats: RequestFeatures, now: float) -> DetectorScore:
        state.counters.advance(now)
        c = state.counters.c
        c[N] += 1
        # ndarray methods and ufunc reductions rather than the np.* wrappers: the same results, and on
        # 64-element arrays the Python-level wrappers cost as much as the arithmetic.
        if any(feats.embedding):
            e = feats.embedding_array if feats.embedding_array is not None else np.array(feats.embedding)
            c[W] += 1
            state.mean_sum += e
            if self.k:
                c[TOPIC0 + int((self.ref.centroids @ e).argmax())] += 1
            filled = min(int(c[N]) - 1, RING)
            if filled > 0 and float(np.maximum.reduce(state.ring @ e.astype(np.float32))) >= NEAR_COSINE:
                c[NEAR] += 1
            # stored as it will read back after a round trip (int8 / 127), so a cached and a decoded state agree
            q = np.rint(e * 127.0)
            state.ring_i8[state.pos] = q
            state.ring[state.pos] = q / 127.0
            state.pos = (state.pos + 1) % RING
        return self.score(state, now)

    def observe_response(self, state: CoverageState, resp: ResponseFeatures, now: float) -> None:
        return None

    def score(self, state: CoverageState, now: float) -> DetectorScore:
        c = state.counters.c
        w = float(c[W])
        near = float(c[NEAR])
        reasons: list[str] = []
        e_near = ramp(shrunk_share(near, w, 10.0), 0.3, 0.7)
        if e_near > 0:
            reasons.append(f"{near:.0f} of the last {w:.0f} prompts near-duplicate a previous prompt")
        e_cov = e_mmd = 0.0
        if self.k and w > 30:  # below 30 prompts the coverage term is 0 whatever the entropy
            hist = c[TOPIC0 : TOPIC0 + self.k].tolist()
            if len(hist) - hist.count(0.0) > self._few_topics:
                entropy = norm_entropy(hist)
                e_cov = ramp(entropy, *_SPREAD) * ramp(w, 30.0, 80.0)
            if e_cov > 0:
                topics = len([x for x in hist if x >= 0.5])
                reasons.append(
                    f"prompts spread evenly over {topics} of {self.k} topic clusters (entropy {entropy:.2f})"
                )
        if self.ref.mean.size == EMBED_DIM and w > 0:
            diff = state.mean_sum / w - self.ref.mean
            excess = float(diff @ diff) - self.ref.sigma2 / w
            off = max(self.ref.persona_offset, 1e-6)
            e_mmd = ramp(excess, off, 2.5 * off) * ramp(w, 20.0, 50.0)
            if e_mmd > 0:
                reasons.append(
                    f"prompt distribution far from the benign reference (MMD {excess / off:.1f}x benign p99.5)"
                )
        score = float(1.0 - (1.0 - e_near) * (1.0 - e_cov) * (1.0 - e_mmd))
        return DetectorScore(self.name, score, tuple(reasons))
