"""Semantic coverage and diversity of a client's prompts, from 384-d MiniLM sentence embeddings.

The neural counterpart of ``detectors.coverage`` (which sees hashed words): the same three views, in a space
where paraphrases sit together and topics separate.

- **near duplicates / paraphrases** (PRADA-style minimum distances): the cosine of each prompt to the nearest
  of the client's previous ``RING`` prompts (kept as int8). A paraphrase sweep or a template pipeline sits
  close to a previous prompt far more often than a person's questions do.
- **topic coverage**: each prompt goes to the nearest of ``K`` semantic k-means centroids fitted on benign
  TRAIN prompts; the normalised entropy of the client's decayed topic histogram. A person asks about a few
  things; a harvester replaying a whole dataset, or sweeping a taxonomy, covers them all evenly.
- **distribution distance** (MMD, linear kernel): squared distance of the client's decayed mean embedding to
  the benign reference mean, minus its sampling term ``sigma2 / n``, against the benign p99.5 offset.

Embeddings are computed *off the request path* (``gateway/embedding.py`` in a background thread; ``ipgate
replay --embedder minilm`` up front) and arrive with a lag in ``RequestFeatures.neural``: the vectors of this
client's earlier prompts that finished encoding since its previous request (usually exactly one). A request
without vectors only decays the counters. Nothing here imports torch.

All scales come from the shipped reference ``detectors/data/semantic.json`` (fitted on the TRAIN split by
``scripts/eval/fit_semantic.py``): the centroids, the reference mean and spread, the evidence ramps and the
detector's combiner weight. The caller reads the file (``default_semantic_path``) and passes the parsed
``SemanticReference`` in; the detector does no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from detectors.base import Counters, any_of, dump_vectors, load_vectors, norm_entropy, ramp, shrunk_share
from detectors.types import DetectorScore, RequestFeatures, ResponseFeatures

DIM = 384
RING = 16
MAX_TOPICS = 64
MAX_PER_REQUEST = 32  # vectors folded per request at most (the gateway keeps as many per client)
W, NEAR, TOPIC0 = 0, 1, 2


def default_semantic_path() -> Path:
    """The shipped, TRAIN-fitted reference (the caller reads it: this package does no I/O)."""
    return Path(__file__).resolve().parent / "data" / "semantic.json"


@dataclass(frozen=True, slots=True)
class SemanticReference:
    """Fitted benign reference and evidence scales (plain JSON; see ``scripts/eval/fit_semantic.py``)."""

    centroids: np.ndarray = field(default_factory=lambda: np.zeros((0, DIM), dtype=np.float32))  # K x DIM, unit
    mean: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))  # DIM
    sigma2: float = 1.0  # E||x - mean||^2 for one benign prompt
    persona_offset: float = 0.0  # p99.5 MMD excess of focused benign users (0: the MMD view is off)
    near_cosine: float = 0.8  # a prompt this close to a previous one is a near duplicate / paraphrase
    near_share: tuple[float, float] = (0.3, 0.6)  # ramp of the (shrunk) near-duplicate share
    entropy: tuple[float, float] = (0.85, 0.95)  # ramp of the normalised topic entropy
    min_prompts: tuple[float, float] = (30.0, 80.0)  # the coverage view ramps in over this many prompts
    weight: float = 0.0  # the fitted combiner weight (a config weight overrides it)
    meta: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, text: str) -> SemanticReference:
        raw = json.loads(text)
        cent = np.asarray(raw["centroids"], dtype=np.float32).reshape(-1, DIM)
        mean = np.asarray(raw.get("mean", []), dtype=np.float32)
        if mean.size not in (0, DIM):
            raise ValueError(f"semantic reference: mean has {mean.size} values, expected {DIM}")

        def pair(key: str, default: tuple[float, float]) -> tuple[float, float]:
            lo, hi = (float(x) for x in raw.get(key, default))
            if not hi > lo:
                raise ValueError(f"semantic reference: {key} must be an increasing pair, got {[lo, hi]}")
            return lo, hi

        near = float(raw.get("near_cosine", cls().near_cosine))
        if not 0.0 < near <= 1.0:
            raise ValueError(f"semantic reference: near_cosine must lie in (0, 1], got {near}")
        d = cls()
        return cls(
            centroids=cent, mean=mean, sigma2=float(raw.get("sigma2", 1.0)),
            persona_offset=float(raw.get("persona_offset", 0.0)),
            near_cosine=near,
            near_share=pair("near_share", d.near_share), entropy=pair("entropy", d.entropy),
            min_prompts=pair("min_prompts", d.min_prompts), weight=float(raw.get("weight", 0.0)),
            meta=dict(raw.get("meta", {})),
        )

    def to_json(self) -> str:
        return json.dumps({
            "centroids": [[round(float(v), 5) for v in row] for row in self.centroids],
            "mean": [round(float(v), 6) for v in self.mean],
            "sigma2": round(self.sigma2, 6), "persona_offset": round(self.persona_offset, 6),
            "near_cosine": self.near_cosine, "near_share": list(self.near_share), "entropy": list(self.entropy),
            "min_prompts": list(self.min_prompts), "weight": round(self.weight, 4), "meta": dict(self.meta),
        })


@dataclass(frozen=True, slots=True)
class SemanticStats:
    """The raw statistics behind the score (the fit script calibrates the ramps on them)."""

    vectors: float  # decayed count of vectors folded in
    near: float  # ... of which near-duplicated a previous prompt
    entropy: float  # normalised topic entropy (0 with fewer than 2 topics)
    topics: int  # topics holding at least half a (decayed) prompt
    mmd_excess: float  # squared distance of the mean to the reference mean, minus sigma2 / n


class SemanticState:
    __slots__ = ("counters", "mean_sum", "pos", "ring", "ring_i8")

    def __init__(self, topics: int) -> None:
        self.counters = Counters(TOPIC0 + topics + DIM)
        self.ring = np.zeros((RING, DIM), dtype=np.float32)  # for the dot products
        self.ring_i8 = np.zeros((RING, DIM), dtype=np.int8)  # the same vectors as stored (x 127)
        self.pos = 0
        self.mean_sum = self.counters.c[TOPIC0 + topics :]  # a view: decays with the counters


class SemanticCoverage:
    name: ClassVar[str] = "semantic"
    state_bytes: ClassVar[int] = 8 + 4 * (TOPIC0 + MAX_TOPICS + DIM) + RING * DIM + 1

    def __init__(self, reference: SemanticReference | None = None) -> None:
        if reference is None:
            raise ValueError(f"{self.name}: needs its fitted reference (detection.embedder: minilm loads it)")
        self.ref = reference
        self.k = int(reference.centroids.shape[0])
        if self.k > MAX_TOPICS:
            raise ValueError(f"{self.name}: at most {MAX_TOPICS} topic centroids fit the state budget")
        self._cent = np.ascontiguousarray(reference.centroids, dtype=np.float32)

    def new_state(self) -> SemanticState:
        return SemanticState(self.k)

    def dump(self, state: SemanticState) -> bytes:
        return dump_vectors(state.counters, state.ring_i8, state.pos)

    def load(self, data: bytes) -> SemanticState:
        st = SemanticState(self.k)
        st.ring_i8, st.ring, st.pos = load_vectors(data, st.counters, RING, DIM, self.name,
                                                   (TOPIC0 + self.k, TOPIC0 + self.k + DIM))  # signed: the sum
        st.mean_sum = st.counters.c[TOPIC0 + self.k :]
        return st

    def observe(self, state: SemanticState, feats: RequestFeatures, now: float) -> DetectorScore:
        state.counters.advance(now)
        vecs = feats.neural
        if vecs is not None and len(vecs):
            for v in np.asarray(vecs, dtype=np.float32).reshape(-1, DIM)[-MAX_PER_REQUEST:]:
                self.fold(state, v)
        return self.score(state, now)

    def fold(self, state: SemanticState, v: np.ndarray) -> None:
        """Fold one unit vector in (zeros, from empty prompts, are skipped)."""
        # Unit vectors, or zeros for empty prompts (cheaper than v.any()). Anything else (NaN, inf, a huge
        # vector from a broken encoder) is skipped too: it saturated every view (score 1) or made it NaN.
        # float64: a float32 dot of a huge vector overflows (and warns) instead of reading as "not unit".
        w = v.astype(np.float64)
        if not 0.5 <= float(w @ w) <= 1.5:
            return
        c = state.counters.c
        c[W] += 1
        state.mean_sum += v
        if self.k:
            c[TOPIC0 + int(np.argmax(self._cent @ v))] += 1
        # Empty ring slots are zero vectors: their cosine 0 never reaches near_cosine, so no fill count needed.
        if float(np.max(state.ring @ v)) >= self.ref.near_cosine:
            c[NEAR] += 1
        # stored as it reads back after a round trip (int8 / 127), so a cached and a decoded state agree;
        # |v_i| <= 1 for a unit vector, so 127 v never leaves the int8 range
        q = np.rint(v * np.float32(127.0))
        state.ring_i8[state.pos] = q
        state.ring[state.pos] = q / np.float32(127.0)
        state.pos = (state.pos + 1) % RING

    def observe_response(self, state: SemanticState, resp: ResponseFeatures, now: float) -> None:
        return None

    def stats(self, state: SemanticState) -> SemanticStats:
        c = state.counters.c
        w = float(c[W])
        hist = c[TOPIC0 : TOPIC0 + self.k].tolist()
        excess = 0.0
        if self.ref.mean.size == DIM and w > 0:
            diff = state.mean_sum / w - self.ref.mean
            excess = float(diff @ diff) - self.ref.sigma2 / w
        return SemanticStats(w, float(c[NEAR]), norm_entropy(hist), sum(1 for x in hist if x >= 0.5), excess)

    def score(self, state: SemanticState, now: float) -> DetectorScore:
        s = self.stats(state)
        ref = self.ref
        reasons: list[str] = []
        e_near = ramp(shrunk_share(s.near, s.vectors, 10.0), *ref.near_share)
        if e_near > 0:
            reasons.append(f"{s.near:.0f} of the last {s.vectors:.0f} prompts paraphrase a recent prompt "
                           f"(MiniLM cosine >= {ref.near_cosine:.2f})")
        e_cov = 0.0
        if self.k:
            e_cov = ramp(s.entropy, *ref.entropy) * ramp(s.vectors, *ref.min_prompts)
            if e_cov > 0:
                reasons.append(f"prompts spread evenly over {s.topics} of {self.k} semantic topics "
                               f"(entropy {s.entropy:.2f})")
        e_mmd = 0.0
        if ref.persona_offset > 0 and s.vectors > 0:
            off = ref.persona_offset
            e_mmd = ramp(s.mmd_excess, off, 2.5 * off) * ramp(s.vectors, 20.0, 50.0)
            if e_mmd > 0:
                reasons.append(f"prompt meaning far from the benign reference (MMD {s.mmd_excess / off:.1f}x "
                               "benign p99.5)")
        return DetectorScore(self.name, any_of(e_near, e_cov, e_mmd), tuple(reasons))
