"""The benign reference the coverage and template detectors compare against (fitted, shipped as JSON).

Built by ``scripts/eval/fit_combiner.py`` from the TRAIN split of benign prompts: k-means topic centroids in
the hashed embedding space, the reference mean embedding and its spread (for the MMD test), and the
head/tail keys that are common in ordinary prompts ("how much money does she have left ?"), which must
never count as a template and never link two accounts (Blacklight likewise drops common hashes).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class Reference:
    centroids: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # k x EMBED_DIM, unit rows
    mean: np.ndarray = field(default_factory=lambda: np.zeros(0))  # EMBED_DIM
    sigma2: float = 1.0  # E||x - mean||^2 for one benign prompt
    persona_offset: float = 0.0  # typical squared distance of a focused benign user's mean (p99.5)
    common_keys: frozenset[int] = frozenset()

    @property
    def empty(self) -> bool:
        return self.centroids.size == 0

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Reference:
        return cls(
            centroids=np.asarray(raw.get("centroids", []), dtype=np.float64),
            mean=np.asarray(raw.get("mean", []), dtype=np.float64),
            sigma2=float(raw.get("sigma2", 1.0)),
            persona_offset=float(raw.get("persona_offset", 0.0)),
            common_keys=frozenset(int(k) for k in raw.get("common_keys", [])),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "centroids": [[round(float(v), 5) for v in row] for row in self.centroids],
            "mean": [round(float(v), 6) for v in self.mean],
            "sigma2": round(self.sigma2, 6),
            "persona_offset": round(self.persona_offset, 6),
            "common_keys": sorted(self.common_keys),
        }
