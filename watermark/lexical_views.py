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
from collections.abc import Callable, Sequence
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


# The joint test of two strength chains keeps its state as a (level-1 hits) x (level-2 hits) table. Past this
# many cells (memory) or cell updates (time: about 0.05 s; a pooled corpus with thousands of slots at both levels
# and slots of newer revisions) it uses the Bonferroni bound 2x instead. The choice depends on the text alone,
# and the factor 2 it forgoes only matters near the decision threshold, which such a corpus is far below. An
# 800-word text needs ~500 cell updates (at most ~7 500 seen), a corpus of 10 x 300 words ~16 000 (~100 000).
_MAX_CELLS = 1_000_000
_MAX_WORK = 2_000_000


@dataclass(frozen=True, slots=True)
class Strengths:
    """The strength chains of one reading (level 1; levels 1+2), tested as one hypothesis.

    A normal-strength text carries its watermark in level 1 only, a strong one in both levels, so both chains
    are scored whenever the text has level-2 slots. They share the level-1 slots; counting them as two
    Bonferroni hypotheses costs every such text a factor 2. Here the statistic is X = min_c p_c, the smaller of
    the two chains' exact p-values (``Chain.log_p``), and P0(X <= x) is computed exactly: p_c <= x exactly when
    the chain's statistic is at most t_c(x), the largest attainable value whose p-value is <= x, i.e. when some
    view of chain c reaches its critical count. The hits the level-1 and level-2 slots of each revision add
    are independent Poisson-binomial counts (distinct tuples), so the probability that some view of either chain
    crosses is a first-passage sum over the revisions with a two-dimensional state (level-1 hits, level-2 hits
    so far). It lies in [x, 2x]: never above the Bonferroni bound it replaces, since each p_c is exact.
    """

    chains: tuple[Chain, ...]  # one or two chains (level 1; levels 1+2)
    # per revision, for two chains: log pmf of the level-1 hits and of the level-2 hits it adds, and the index
    # of the level-1 chain's and of the full chain's view that this revision ends (-1: that view did not change)
    steps: tuple[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], int, int], ...] = ()
    _memo: dict[float, float] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(cls, reading: npt.NDArray[np.bool_], low: npt.NDArray[np.bool_], since: npt.NDArray[np.int64],
              ks: npt.NDArray[np.uint64]) -> Strengths | None:
        """The test of one reading (a mask over the tuples); ``low``: level-1 tuples; ``since``: each tuple's
        revision. None when the reading has no tuple."""
        revisions = sorted({1, *since[reading].tolist()})
        high = reading & ~low
        masks = [reading & low] + ([reading] if bool(high.any()) else [])
        chains: list[Chain] = []
        ends: list[list[int]] = []  # per chain and revision: the view that revision ends, or -1
        for mask in masks:
            views: list[npt.NDArray[np.bool_]] = []
            at: list[int] = []
            for r in revisions:
                view = mask & (since <= r)
                # an empty view never rejects; an unchanged one repeats the previous view's condition
                if view.any() and not (views and np.array_equal(view, views[-1])):
                    views.append(view)
                    at.append(len(views) - 1)
                else:
                    at.append(-1)
            if views:
                chains.append(Chain.build(views, ks))
                ends.append(at)
        if len(chains) < 2:
            return cls(tuple(chains)) if chains else None
        steps = []
        prev_low, prev_high = np.zeros(len(ks), dtype=bool), np.zeros(len(ks), dtype=bool)
        for i, r in enumerate(revisions):
            cut = since <= r
            lo, hi = reading & low & cut, high & cut
            steps.append((_log_pmf(_counts(ks[lo & ~prev_low])), _log_pmf(_counts(ks[hi & ~prev_high])),
                          ends[0][i], ends[1][i]))
            prev_low, prev_high = lo, hi
        return cls(tuple(chains), tuple(steps))

    def log_p(self, x: float) -> float:
        """log P0(X <= x) for an observed X = min over the chains of their log p-values."""
        if len(self.chains) == 1:
            return x  # one chain: its exact p-value is the test's
        got = self._memo.get(x)
        if got is not None:
            return got
        low, full = self.chains
        bound = min(x + math.log(2), 0.0)
        cells = (1 + sum(len(s[0]) - 1 for s in self.steps)) * (1 + sum(len(s[1]) - 1 for s in self.steps))
        if cells > _MAX_CELLS or self.work() > _MAX_WORK:
            self._memo[x] = bound
            return bound
        c_low, c_full = critical_counts(low, x), critical_counts(full, x)
        alive = np.zeros((1, 1), dtype=np.float64)  # log P0(A = a, C = c, no view crossed yet)
        exits: list[float] = []
        for pmf_low, pmf_high, j_low, j_full in self.steps:
            alive = _log_convolve_axis(_log_convolve_axis(alive, pmf_low, 0), pmf_high, 1)
            a = np.arange(alive.shape[0])[:, None]
            cross = np.zeros(alive.shape, dtype=bool)
            if j_low >= 0:
                cross |= a >= c_low[j_low]
            if j_full >= 0:
                cross |= a + np.arange(alive.shape[1])[None, :] >= c_full[j_full]
            if cross.any():
                exits.append(float(np.logaddexp.reduce(alive[cross])))
                alive = np.where(cross, stats.LOG_ZERO, alive)
            if j_low >= 0:
                alive = alive[: c_low[j_low]]
            if j_full >= 0:
                alive = alive[: c_full[j_full], : c_full[j_full]]
            if alive.size == 0:
                break
        out = float(np.logaddexp.reduce(np.array(exits))) if exits else stats.LOG_ZERO
        out = min(max(out, x), bound)  # exact arithmetic puts it in [x, x + log 2]
        self._memo[x] = out
        return out


    def work(self) -> int:
        """An upper bound on the cell updates ``log_p`` makes: convolving an R x C table with a pmf of length L
        along one side costs R x C x L, whichever of the two is looped over (crossed cells trimmed away only make
        it less). Depends on the text alone."""
        rows = cols = 1
        total = 0
        for pmf_low, pmf_high, _, _ in self.steps:
            rows_next = rows + len(pmf_low) - 1
            total += rows * cols * len(pmf_low) + rows_next * cols * len(pmf_high)
            rows, cols = rows_next, cols + len(pmf_high) - 1
        return total


def critical_counts(chain: Chain, x: float, outer: Callable[[float], float] | None = None) -> list[int]:
    """Per view of ``chain``: the smallest hit count whose tail is at most t_c(x), the largest attainable
    statistic of the chain whose exact p-value is <= x (len(table): never). ``outer`` maps the chain's log
    p-value to that of an enclosing joint test (``Strengths.log_p``, for the readings test); it must be
    non-decreasing, as the chain's is."""
    values = np.unique(np.concatenate(chain.tables))  # every attainable statistic, ascending
    lo, hi = -1, len(values) - 1  # the p-value is non-decreasing in the statistic: binary search
    while lo < hi:
        mid = (lo + hi + 1) // 2
        log_p = chain.log_p(float(values[mid]))
        if (outer(log_p) if outer is not None else log_p) <= x + 1e-12 * max(1.0, abs(x)):
            lo = mid
        else:
            hi = mid - 1
    if lo < 0:
        return [len(table) for table in chain.tables]
    t = float(values[lo])
    out = []
    for table in chain.tables:
        crossing = np.flatnonzero(table <= t)
        out.append(int(crossing[0]) if crossing.size else len(table))
    return out


def _log_convolve_axis(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64], axis: int) -> npt.NDArray[np.float64]:
    """Convolve the 2-D log table ``a`` along ``axis`` with the 1-D log pmf ``b``."""
    if len(b) == 1:
        shifted: npt.NDArray[np.float64] = a + float(b[0])
        return shifted
    m = np.moveaxis(a, axis, 0)
    out = np.full((m.shape[0] + len(b) - 1, m.shape[1]), stats.LOG_ZERO, dtype=np.float64)
    if len(b) <= m.shape[0]:
        for j, lb in enumerate(b.tolist()):
            out[j : j + m.shape[0]] = np.logaddexp(out[j : j + m.shape[0]], m + lb)
    else:  # one pass per row of the shorter table
        for i in range(m.shape[0]):
            out[i : i + len(b)] = np.logaddexp(out[i : i + len(b)], b[:, None] + m[i][None, :])
    moved: npt.NDArray[np.float64] = np.moveaxis(out, 0, axis)
    return moved


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
