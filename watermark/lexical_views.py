"""The nested table-revision views of the lexical detector, tested together as one exact hypothesis.

The table is append-only and every group records the revision that added it. A text served before the table
grew carries no watermark in the newer groups, so each reading and strength of a text is scored over the
groups of every revision it has slots of: nested views V_1 ⊂ V_2 ⊂ ... ⊂ V_m (the groups with ``since <= r``).
Counting each view as one more Bonferroni hypothesis costs every text that has slots of a newer revision a
factor m, although the views overlap almost entirely (one revision adds a few slots). Here the views of one
reading and strength form a *chain*, tested once with the statistic

    T = min_j  log P0(S_j >= s_j)        (s_j: the hits a key has in V_j; S_j the same count under H0)

whose null distribution is computed exactly. S_j = D_1 + ... + D_j, where D_i counts the hits among the slots
that revision i adds (a Poisson-binomial of its own, independent of the others: distinct tuples are independent
draws, see ``watermark.stats``). With c_j(t) the smallest count whose tail in V_j is <= t, T <= t exactly when
some S_j >= c_j(t), so

    P0(T <= t) = sum_j P0(S_1 < c_1, ..., S_{j-1} < c_{j-1}, S_j >= c_j)

a first-passage probability over m steps, summed in log space like every other tail here. It is exact, it
depends only on the text (the views and the choice sizes of their slots are read from the text alone), it is
never below the single view's tail e^t and never above the Bonferroni bound m e^t it replaces: the p-value
stays valid and the test is at least as powerful as before.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from watermark import stats


@dataclass(frozen=True, slots=True)
class Chain:
    """The nested views of one reading and strength, smallest first, with what the exact test needs."""

    views: tuple[npt.NDArray[np.bool_], ...]  # masks over the observation's tuples, each inside the next
    deltas: tuple[npt.NDArray[np.bool_], ...]  # per view: the tuples it adds to the previous one
    tables: tuple[npt.NDArray[np.float64], ...]  # per view: log P0(S_j >= h), h = 0..|V_j|
    steps: tuple[npt.NDArray[np.float64], ...]  # per view: log P0(D_j = d), d = 0..|V_j \ V_{j-1}|
    _memo: dict[float, float] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(cls, views: Sequence[npt.NDArray[np.bool_]], ks: npt.NDArray[np.uint64]) -> Chain:
        prev = np.zeros(len(ks), dtype=bool)
        tables, steps, deltas = [], [], []
        for view in views:
            if bool(np.any(prev & ~view)):
                raise ValueError("chain views must be nested")
            tables.append(stats.poisson_binomial_log_sf_table(_counts(ks[view])))
            deltas.append(view & ~prev)
            steps.append(_log_pmf(_counts(ks[deltas[-1]])))
            prev = view
        return cls(tuple(views), tuple(deltas), tuple(tables), tuple(steps))

    def log_p(self, t: float) -> float:
        """log P0(T <= t) for an observed statistic t (a value of one of the views' tail tables)."""
        got = self._memo.get(t)
        if got is not None:
            return got
        alive = np.zeros(1, dtype=np.float64)  # log P0(S = s, no view crossed yet): the point mass at 0
        exits: list[float] = []
        for table, step in zip(self.tables, self.steps, strict=True):
            dist = _log_convolve(alive, step)
            crossing = np.flatnonzero(table <= t)
            c = int(crossing[0]) if crossing.size else len(table)
            if c < len(dist):
                exits.append(float(np.logaddexp.reduce(dist[c:])))
                alive = dist[:c]
            else:
                alive = dist
            if alive.size == 0:
                break
        out = float(np.logaddexp.reduce(np.array(exits))) if exits else stats.LOG_ZERO
        # exact arithmetic puts it in [t, t + log m]; keep float rounding from stepping outside
        out = min(max(out, t), t + math.log(len(self.tables)), 0.0)
        self._memo[t] = out
        return out


def _counts(ks: npt.NDArray[np.uint64]) -> dict[float, int]:
    counts: dict[float, int] = {}
    for k in ks.tolist():
        counts[1.0 / k] = counts.get(1.0 / k, 0) + 1
    return counts


def _log_pmf(counts: dict[float, int]) -> npt.NDArray[np.float64]:
    """log P(D = d), d = 0..n, for a sum of independent Bernoulli(p) draws, ``counts[p]`` of each."""
    out = np.zeros(1, dtype=np.float64)
    for p, c in sorted(counts.items()):
        i = np.arange(c + 1, dtype=np.float64)
        log_comb = np.array([math.lgamma(c + 1) - math.lgamma(x + 1) - math.lgamma(c - x + 1) for x in range(c + 1)])
        out = _log_convolve(out, log_comb + i * math.log(p) + (c - i) * math.log1p(-p))
    return out


def _log_convolve(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    if len(b) > len(a):
        a, b = b, a  # one numpy pass per element of the shorter array
    out = np.full(len(a) + len(b) - 1, stats.LOG_ZERO, dtype=np.float64)
    for j, lb in enumerate(b.tolist()):
        out[j : j + len(a)] = np.logaddexp(out[j : j + len(a)], a + lb)
    return out
