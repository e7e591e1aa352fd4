"""Shared by the semantic fit and evaluation scripts: a sub-sampled prompt bank, and MiniLM vectors with a
disk cache (so the expensive encoding runs once per text, on one CPU thread).

The cache is an ``.npz`` of sha1 keys and float32 vectors (no pickle); it lives under ``var/`` by default.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detectors.features import prompt_of
from detectors.neural import DIM, Encoder, load_encoder
from detectors.traffic.corpus import Split
from detectors.traffic.generator import Bank
from scripts.eval.common import REPO, load_bank

log = logging.getLogger(__name__)
DEFAULT_CACHE = REPO / "var" / "minilm-cache.npz"


def sub_bank(split: Split, size: int, seed: int) -> Bank:
    """``size`` prompts of the split, drawn with a fixed seed (keeps the encoding bill to a few thousand)."""
    bank = load_bank(split)
    prompts = list(bank.prompts)
    if 0 < size < len(prompts):
        prompts = random.Random(seed).sample(prompts, size)
    return Bank(prompts, split)


def record_texts(records: Iterable[Mapping[str, Any]]) -> list[str]:
    return [prompt_of(str(r["endpoint"]), r["body"])[0] for r in records]


def _key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()


def load_one_thread() -> Encoder:
    """The encoder on one torch thread (the scripts share a small machine)."""
    return load_encoder(threads=1)


class VectorCache:
    def __init__(self, path: Path = DEFAULT_CACHE) -> None:
        self.path = path
        self.vecs: dict[str, np.ndarray] = {}
        if path.is_file():
            with np.load(path, allow_pickle=False) as z:
                self.vecs = dict(zip(z["keys"].tolist(), z["vecs"], strict=True))

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = np.array(list(self.vecs), dtype="U40")
        vecs = np.stack(list(self.vecs.values())) if self.vecs else np.zeros((0, DIM), np.float32)
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez(tmp, keys=keys, vecs=vecs)
        tmp.replace(self.path)

    def encode(self, texts: Sequence[str], loader: Callable[[], Encoder] | None, batch_size: int = 8
               ) -> np.ndarray:
        """Vectors for ``texts`` (rows in order); only texts not cached are encoded, with the encoder
        ``loader()`` returns (called only on a miss; None raises if anything is missing)."""
        keys = [_key(t) for t in texts]
        missing = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in self.vecs}.items())
        if missing:
            if loader is None:
                raise RuntimeError(f"{len(missing)} texts are not in the vector cache {self.path}")
            encoder = loader()
            t0 = time.perf_counter()
            out = encoder.encode([t for _, t in missing], batch_size=batch_size)
            dt = time.perf_counter() - t0
            log.info("encoded %d texts in %.1f s (%.0f us/prompt)", len(missing), dt, dt / len(missing) * 1e6)
            for (k, _), v in zip(missing, out, strict=True):
                self.vecs[k] = v
            self.save()
        return np.stack([self.vecs[k] for k in keys]) if keys else np.zeros((0, DIM), np.float32)
