"""The first level of KGW detection's dedup: token ids -> the distinct (context window, token) tuples scored.

The dedup key is exactly the PRF's input (why that makes the p-value valid: ``watermark/kgw/detect.py``), so
the tuple set does not depend on the key; the per-key second level is in ``watermark/kgw/counting.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from watermark.kgw.params import KgwParams

IntArray = npt.NDArray[np.int64]

_MAX_TOKEN_ID = 1 << 31  # token ids travel in uint32 lanes (and int64 in the torch core)


@dataclass(frozen=True, slots=True)
class Tuples:
    """The distinct scored tuples of one text or a pooled corpus."""

    prev: IntArray  # (n, params.prev_tokens), oldest first
    cand: IntArray  # (n,)

    @property
    def n(self) -> int:
        return int(self.cand.shape[0])


def _dedup_key(window: tuple[int, ...], tok: int, params: KgwParams) -> tuple[object, ...]:
    if params.seeding == "lefthash":
        return (window, tok)
    if params.seeding == "minhash":
        return (frozenset(window), tok)
    return (frozenset((*window, tok)), tok)


def collect_tuples(
    sequences: Iterable[Sequence[int]],
    params: KgwParams,
    prompts: Sequence[Sequence[int] | None] | None = None,
) -> Tuples:
    """Distinct scored tuples over all ``sequences`` (pooled: a tuple seen in two texts counts once).

    ``prompts[i]`` (optional) are the token ids that preceded ``sequences[i]`` at generation: they give the
    first tokens their context and are never scored themselves.
    """
    p = params.prev_tokens
    seen: set[tuple[object, ...]] = set()
    prev_rows: list[tuple[int, ...]] = []
    cands: list[int] = []
    for i, seq in enumerate(sequences):
        prompt = list(prompts[i] or []) if prompts is not None else []
        ids = [*(int(t) for t in prompt[-p:]), *(int(t) for t in seq)]
        if any(not 0 <= t < _MAX_TOKEN_ID for t in ids):
            raise ValueError(f"token ids must be in [0, 2**31) (text {i})")
        start = min(len(prompt), p)  # index in ids of the first response token
        for pos in range(max(start, p), len(ids)):
            window = tuple(ids[pos - p : pos])
            key = _dedup_key(window, ids[pos], params)
            if key in seen:
                continue
            seen.add(key)
            prev_rows.append(window)
            cands.append(ids[pos])
    prev = np.asarray(prev_rows, dtype=np.int64).reshape(len(cands), p)
    return Tuples(prev=prev, cand=np.asarray(cands, dtype=np.int64))
