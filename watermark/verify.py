"""Verification: which scheme, which candidate keys, and the verdict that the CLI and the admin API print.

``scheme="auto"`` scores the lexical scheme, and KGW too when a tokenizer is available; each scheme's
family-wise p-value is then multiplied by the number of schemes tried (Bonferroni again), so "auto" never
claims more confidence than the schemes it combines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from watermark.base import Scheme
from watermark.keys import ClientKey, KeyRing

SCHEMES = ("auto", "lexical", "kgw")


@dataclass(frozen=True, slots=True)
class Verdict:
    watermarked: bool
    p_value: float  # family-wise corrected p-value of the attributed client (over candidates and schemes)
    log10_p_value: float
    client: str | None
    key_version: int | None
    scheme: str
    scored: int
    candidates: tuple[tuple[str, float], ...]  # (client, corrected p-value), best first
    texts: int

    def to_json(self, corpus: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "watermarked": self.watermarked, "p_value": self.p_value, "log10_p_value": self.log10_p_value,
            "client": self.client, "key_version": self.key_version, "scheme": self.scheme,
            "scored": self.scored,
            "candidates": [{"client": c, "p_value": p} for c, p in self.candidates],
        }
        if corpus:
            out["texts"] = self.texts
        return out


def candidate_keys(ring: KeyRing, clients: Sequence[str],
                   recorded: dict[str, list[int]] | None = None) -> list[ClientKey]:
    """(client, version) hypotheses: the recorded versions of each client if known (versions no longer in
    force are not tested), else every version in force. Duplicated client ids are tested once."""
    unique = list(dict.fromkeys(clients))
    if not recorded:
        return ring.candidates(unique)
    keys: list[ClientKey] = []
    for v in ring.versions:
        keys.extend(ring.derive(v, [c for c in unique if c not in recorded or v in recorded[c]]))
    return keys


def verify(
    texts: str | Sequence[str],
    keys: Sequence[ClientKey],
    schemes: Sequence[Scheme],
    *,
    fpr: float = 1e-6,
    top: int = 5,
) -> Verdict:
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"fpr must be in (0, 1), got {fpr}")
    if not schemes:
        raise ValueError("no scheme to verify with")
    n_texts = 1 if isinstance(texts, str) else len(texts)
    scores = [s.score(texts, keys, top=top) for s in schemes]
    best = min(scores, key=lambda sc: (sc.log10_p_value, -sc.scored))
    m = len(scores)
    adj = min(0.0, best.log10_p_value + math.log10(m))
    family = best.family_size * m
    cands = tuple(
        (c.client_id, _p10(min(0.0, c.log10_p_value + math.log10(family))))
        for c in best.candidates
    )
    client = best.client_id
    return Verdict(
        watermarked=client is not None and adj < math.log10(fpr),
        p_value=_p10(adj), log10_p_value=adj, client=client, key_version=best.key_version,
        scheme=best.scheme if m == 1 or client is not None else "+".join(s.scheme for s in scores),
        scored=best.scored, candidates=cands, texts=n_texts,
    )


def _p10(log10_p: float) -> float:
    return 10.0 ** log10_p if log10_p > -307.0 else 0.0
