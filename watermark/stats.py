"""Exact tail probabilities for watermark detection, in log space.

NULL HYPOTHESIS. H0(k): the text was produced without knowledge of key k (human text, another client's
watermark, another model). The detector turns the text into a set of scored tuples -- (context, slot) for the
lexical scheme, (context, token) for KGW -- using only the observed text, never the key. For each tuple the
key's pseudo-random function (a PRF keyed with k and evaluated on the tuple) selects what a watermarked text
would contain there; the tuple is a *hit* when the text matches. Under H0 the text is independent of the PRF
output, so each hit is a Bernoulli(p_i) draw with p_i known exactly (1/k_i for a k_i-way lexical choice,
gamma for KGW), and draws for *distinct* tuples are independent because the PRF is evaluated on distinct
inputs.

WHAT MAKES THE P-VALUE VALID.
1. Each tuple is scored once. A repeated tuple gives the same PRF output again, so its hit is a copy, not a
   new draw; counting it twice would make the binomial tail far too small (repetitive text would "detect").
   Callers deduplicate -- across all texts of a corpus when they are pooled. (The lexical scheme numbers the
   repeats of a (previous word, slot) pair within a text, "so", "so#2", ...: distinct inputs, distinct draws.)
2. The set of tuples is chosen from the observed text alone (never from the key), so it is independent of the
   PRF outputs under H0.
3. Tails are exact (binomial / Poisson-binomial sums over log-pmfs), not the normal approximation, whose
   relative error is unbounded far in the tail where 1e-6 .. 1e-30 decisions are made.
4. Testing N candidate keys (clients x key versions) is N hypotheses: the family-wise p-value of the best
   candidate is min(1, N * p) (Bonferroni), valid under any dependence between the candidates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

LOG_ZERO = -math.inf
_LN10 = math.log(10.0)


def _log_binom_pmf(n: int, p: float) -> npt.NDArray[np.float64]:
    """log P(X = i), i = 0..n, for X ~ Binomial(n, p), 0 < p < 1."""
    i = np.arange(n + 1, dtype=np.float64)
    lg = np.vectorize(math.lgamma, otypes=[np.float64])
    log_comb = math.lgamma(n + 1) - lg(i + 1) - lg(n - i + 1)
    out: npt.NDArray[np.float64] = log_comb + i * math.log(p) + (n - i) * math.log1p(-p)
    return out


def _log_tail_from_log_pmf(log_pmf: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """log P(X >= h) for h = 0..n from log P(X = i): a reverse cumulative log-sum-exp."""
    rev = np.logaddexp.accumulate(log_pmf[::-1])[::-1]
    # Rounding can push log P(X >= 0) a hair above 0; a probability never exceeds 1. P(X >= 0) is exactly 1:
    # keep it so (the sum of the pmf may round a hair below), so that a text with no hit reports p = 1.0.
    out: npt.NDArray[np.float64] = np.minimum(rev, 0.0)
    out[0] = 0.0
    return out


def binom_log_sf_table(n: int, p: float) -> npt.NDArray[np.float64]:
    """log P(X >= h) for every h in 0..n, X ~ Binomial(n, p). Index the result with hit counts."""
    _check_p(p)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return _log_tail_from_log_pmf(_log_binom_pmf(n, p))


def binom_log_sf(hits: int, n: int, p: float) -> float:
    """log P(X >= hits), X ~ Binomial(n, p); 0.0 (probability 1) for hits <= 0, -inf for hits > n."""
    if hits <= 0:
        return 0.0
    if hits > n:
        return LOG_ZERO
    return float(binom_log_sf_table(n, p)[hits])


def poisson_binomial_log_sf_table(counts: Mapping[float, int]) -> npt.NDArray[np.float64]:
    """log P(H >= h), h = 0..n, where H is a sum of independent Bernoulli(p) draws, ``counts[p]`` of each.

    The lexical scheme mixes 2-, 3- and 4-way choices, so its hit count is Poisson-binomial. With few
    distinct p the exact distribution is the convolution of one binomial per p, done here in log space.
    The table depends only on the text, not on the key, so attribution among many clients needs it once.
    """
    log_pmf = np.zeros(1, dtype=np.float64)  # the point mass at 0
    for p, c in sorted(counts.items()):
        _check_p(p)
        if c < 0:
            raise ValueError(f"count must be >= 0, got {c}")
        if c == 0:
            continue
        log_pmf = _log_convolve(log_pmf, _log_binom_pmf(c, p))
    return _log_tail_from_log_pmf(log_pmf)


def _log_convolve(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    out = np.full(len(a) + len(b) - 1, LOG_ZERO, dtype=np.float64)
    for j, lb in enumerate(b):  # len(b) is one group's count: at most a few thousand
        seg = out[j : j + len(a)]
        out[j : j + len(a)] = np.logaddexp(seg, a + lb)
    return out


def bonferroni_log(log_p: float | npt.NDArray[np.float64], family_size: int) -> npt.NDArray[np.float64]:
    """log of min(1, family_size * p): the family-wise p-value of one of ``family_size`` tests."""
    if family_size < 1:
        raise ValueError(f"family_size must be >= 1, got {family_size}")
    out: npt.NDArray[np.float64] = np.minimum(np.asarray(log_p, dtype=np.float64) + math.log(family_size), 0.0)
    return out


def log_to_p(log_p: float) -> float:
    """exp(log_p); underflows to 0.0 below ~1e-308 (report ``log10`` alongside for such values)."""
    return math.exp(log_p) if log_p > -745.0 else 0.0


def log_to_log10(log_p: float) -> float:
    return log_p / _LN10


def _check_p(p: float) -> None:
    if not 0.0 < p < 1.0:
        raise ValueError(f"probability must be in (0, 1), got {p}")
