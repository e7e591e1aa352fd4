"""What every watermark scheme exposes: a streaming embedder and a scorer with one result type."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from watermark.keys import ClientKey


class StreamEmbedder(Protocol):
    """Incremental watermarking of one response (same shape as ``gateway.hooks.StreamEmbedder``)."""

    def feed(self, text: str) -> str:
        """Take the next piece of text; return the watermarked text that is safe to emit now."""

    def finish(self) -> str:
        """Return whatever was held back."""


@dataclass(frozen=True, slots=True)
class CandidateScore:
    client_id: str
    key_version: int
    hits: int
    p_value: float  # this candidate's own (uncorrected) p-value
    log10_p_value: float  # same, in log10 (finite far below float's ~1e-308 floor)


@dataclass(frozen=True, slots=True)
class WatermarkScore:
    """The verdict for one text (or a pooled corpus) against a family of candidate keys."""

    scheme: str
    scored: int  # distinct tuples scored (each counted once)
    family_size: int  # hypotheses tested: candidate clients x key versions
    client_id: str | None  # best candidate (None when there was no candidate or nothing to score)
    key_version: int | None
    hits: int  # the best candidate's hits
    p_value: float  # family-wise (Bonferroni) corrected p-value of the best candidate
    log10_p_value: float
    candidates: tuple[CandidateScore, ...] = ()  # best first, a few at most

    def watermarked(self, fpr: float) -> bool:
        return self.client_id is not None and self.log10_p_value < _log10(fpr)


def _log10(x: float) -> float:
    return math.log10(x) if x > 0 else -math.inf


class Scheme(Protocol):
    """A detector: scores texts against candidate keys. Pooled texts share one tuple set (corpus mode)."""

    name: str

    def score(self, texts: str | Sequence[str], keys: Sequence[ClientKey], *, top: int = 5) -> WatermarkScore:
        ...


class PostHocScheme(Scheme, Protocol):
    """A scheme that rewrites finished text (the lexical one); in-sampler schemes (KGW) have no embedder."""

    def embedder(self, key: ClientKey) -> StreamEmbedder: ...
