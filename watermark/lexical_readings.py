"""The two readings of a text with a never-closed code fence, tested together as one exact hypothesis.

A text whose code fence never closes (re-wrapping moved the closing fence into a line) is read two ways: the
strict reading, and the lenient one that also takes each never-closed fence marker for plain backticks. The
lenient reading is the strict one plus the tuples only it finds (``LexicalScheme.observe``: the strict tuples
are by construction those the lenient scan finds before the first fence it reads as plain text). Each reading
is one ``Strengths`` test; counting them as two Bonferroni hypotheses cost every such text a factor 2.

Here the statistic is Y = min_r q_r, the smaller of the two readings' exact p-values, and P0(Y <= y) is computed
exactly. Each q_r is non-decreasing in its reading's smallest chain p-value, which is non-decreasing in each
chain's statistic, so q_r <= y exactly when some chain c of reading r has T_c <= t_c(y), the largest attainable
statistic with q_r(p_c(T_c)) <= y, i.e. when some view of some chain reaches its critical count. Every view is
the union of (some of) four disjoint slot sets cut at a revision: strict level 1, strict level 2, lenient-only
level 1, lenient-only level 2. The hits each set gains at each revision are independent Poisson-binomial counts
(distinct tuples), so the probability that any view crosses is a first-passage sum over the revisions with a
four-dimensional state. P0(Y <= y) <= P0(q_strict <= y) + P0(q_lenient <= y) <= 2y: never above the Bonferroni
bound it replaces. Past the same size limits as ``Strengths`` (chosen from the text alone) it is that bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from watermark import lexical_views, stats
from watermark.lexical_views import Strengths


@dataclass(frozen=True, slots=True)
class Readings:
    """The strict and the lenient reading's tests, as one hypothesis (``log_p``)."""

    tests: tuple[Strengths, Strengths]  # strict, lenient (its tuples a superset of the strict ones)
    # per revision: log pmf of the hits each of the four slot sets adds
    steps: tuple[tuple[npt.NDArray[np.float64], ...], ...]
    # per test and chain: the slot sets its views are made of, and per revision the view it ends (-1: none)
    layout: tuple[tuple[tuple[tuple[int, ...], tuple[int, ...]], ...], ...]
    _memo: dict[float, float] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(cls, strict: Strengths, lenient: Strengths, strict_mask: npt.NDArray[np.bool_],
              low: npt.NDArray[np.bool_], since: npt.NDArray[np.int64], ks: npt.NDArray[np.uint64]) -> Readings:
        """``strict_mask``: the strict reading's tuples (the lenient reading is every tuple); ``low``: level-1
        tuples; ``since``: each tuple's revision."""
        parts = [strict_mask & low, strict_mask & ~low, ~strict_mask & low, ~strict_mask & ~low]
        revisions = sorted({1, *since.tolist()})
        steps = []
        prev = [np.zeros(len(ks), dtype=bool) for _ in parts]
        for r in revisions:
            cut = [part & (since <= r) for part in parts]
            steps.append(tuple(lexical_views._log_pmf(lexical_views._counts(ks[c & ~p]))
                               for c, p in zip(cut, prev, strict=True)))
            prev = cut
        layout = []
        for test in (strict, lenient):
            per_chain = []
            for chain in test.chains:
                mask = chain.views[-1]  # the last view is the whole chain (every revision)
                used = tuple(i for i, part in enumerate(parts) if bool((part & mask).any()))
                if not np.array_equal(np.logical_or.reduce([parts[i] for i in used]), mask):
                    raise ValueError("a chain's slots must be a union of the four slot sets")
                ends, previous = [], np.zeros(len(ks), dtype=bool)
                for r in revisions:
                    view = mask & (since <= r)
                    changed = view.any() and not np.array_equal(view, previous)
                    ends.append(next(j for j, v in enumerate(chain.views) if np.array_equal(v, view)) if changed
                                else -1)
                    previous = view
                per_chain.append((used, tuple(ends)))
            layout.append(tuple(per_chain))
        return cls((strict, lenient), tuple(steps), tuple(layout))

    def log_p(self, y: float) -> float:
        """log P0(Y <= y) for an observed Y = min over the two readings of their tests' log p-values."""
        got = self._memo.get(y)
        if got is not None:
            return got
        bound = min(y + math.log(2), 0.0)
        if self.cells() > lexical_views._MAX_CELLS or self.work() > lexical_views._MAX_WORK:
            self._memo[y] = bound
            return bound
        views: list[tuple[tuple[int, ...], tuple[int, ...], list[int]]] = []  # (sets, ends, critical counts)
        for test, per_chain in zip(self.tests, self.layout, strict=True):
            for chain, (used, ends) in zip(test.chains, per_chain, strict=True):
                views.append((used, ends, lexical_views.critical_counts(chain, y, test.log_p)))
        alive = np.zeros((1, 1, 1, 1), dtype=np.float64)  # log P0(hits per slot set, no view crossed yet)
        exits: list[float] = []
        for i, pmfs in enumerate(self.steps):
            for axis, pmf in enumerate(pmfs):
                alive = _log_convolve_axis(alive, pmf, axis)
            grids = np.ogrid[tuple(slice(0, n) for n in alive.shape)]
            cross = np.zeros(alive.shape, dtype=bool)
            for used, ends, crit in views:
                if ends[i] >= 0:
                    cross |= sum((grids[a] for a in used), np.zeros((1, 1, 1, 1), dtype=np.int64)) >= crit[ends[i]]
            if cross.any():
                exits.append(float(np.logaddexp.reduce(alive[cross])))
                alive = np.where(cross, stats.LOG_ZERO, alive)
            for used, ends, crit in views:  # cells past a crossed count are all crossed: drop them
                if ends[i] >= 0:
                    alive = alive[tuple(slice(0, crit[ends[i]]) if a in used else slice(None) for a in range(4))]
            if alive.size == 0:
                break
        out = float(np.logaddexp.reduce(np.array(exits))) if exits else stats.LOG_ZERO
        out = min(max(out, y), bound)  # exact arithmetic puts it in [y, y + log 2]
        self._memo[y] = out
        return out

    def cells(self) -> int:
        return math.prod(1 + sum(len(s[a]) - 1 for s in self.steps) for a in range(4))

    def work(self) -> int:
        """An upper bound on the cell updates of ``log_p`` (each axis convolution costs cells x pmf length)."""
        shape = [1, 1, 1, 1]
        total = 0
        for pmfs in self.steps:
            for a, pmf in enumerate(pmfs):
                total += math.prod(shape) * len(pmf)
                shape[a] += len(pmf) - 1
        return total


def _log_convolve_axis(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64], axis: int) -> npt.NDArray[np.float64]:
    """Convolve the N-D log table ``a`` along ``axis`` with the 1-D log pmf ``b`` (the 2-D routine on a view)."""
    if len(b) == 1:
        shifted: npt.NDArray[np.float64] = a + float(b[0])
        return shifted
    m = np.moveaxis(a, axis, -1)
    flat = m.reshape(-1, m.shape[-1])
    out = lexical_views._log_convolve_axis(flat, b, 1)
    moved: npt.NDArray[np.float64] = np.moveaxis(out.reshape(*m.shape[:-1], out.shape[1]), -1, axis)
    return moved
