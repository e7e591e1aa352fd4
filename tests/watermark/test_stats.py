"""Exact tails against an independent computation with fractions and math.comb."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from watermark import stats


def exact_binom_sf(h: int, n: int, p: Fraction) -> Fraction:
    return sum((Fraction(math.comb(n, i)) * p**i * (1 - p) ** (n - i) for i in range(h, n + 1)), Fraction(0))


def exact_pb_sf(h: int, ps: list[Fraction]) -> Fraction:
    dist = [Fraction(1)]
    for p in ps:
        new = [Fraction(0)] * (len(dist) + 1)
        for i, q in enumerate(dist):
            new[i] += q * (1 - p)
            new[i + 1] += q * p
        dist = new
    return sum(dist[h:], Fraction(0))


def log_of(f: Fraction) -> float:
    return math.log(f.numerator) - math.log(f.denominator)


@pytest.mark.parametrize(
    ("h", "n", "p"),
    [(0, 10, Fraction(1, 2)), (1, 1, Fraction(1, 2)), (7, 10, Fraction(1, 3)), (20, 20, Fraction(1, 2)),
     (60, 200, Fraction(1, 4)), (150, 200, Fraction(1, 4)), (95, 100, Fraction(1, 2)), (5, 400, Fraction(1, 2))],
)
def test_binomial_tail_matches_exact(h: int, n: int, p: Fraction) -> None:
    want = exact_binom_sf(h, n, p)
    got = stats.binom_log_sf(h, n, float(p))
    assert got == pytest.approx(log_of(want), rel=1e-9, abs=1e-12)


def test_tiny_pvalues_do_not_underflow() -> None:
    # (1/2)^2000 = 10^-602: far below float's range, fine in log space
    got = stats.binom_log_sf(2000, 2000, 0.5)
    assert got == pytest.approx(2000 * math.log(0.5), rel=1e-12)
    assert stats.log_to_log10(got) == pytest.approx(-602.06, abs=0.01)
    assert stats.log_to_p(got) == 0.0


def test_binomial_edges() -> None:
    assert stats.binom_log_sf(0, 5, 0.3) == 0.0
    assert stats.binom_log_sf(-3, 5, 0.3) == 0.0
    assert stats.binom_log_sf(6, 5, 0.3) == -math.inf
    table = stats.binom_log_sf_table(30, 0.25)
    assert table[0] == 0.0 and np.all(np.diff(table) <= 0)
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError):
            stats.binom_log_sf(1, 3, bad)


@pytest.mark.parametrize(
    "counts", [{0.5: 7, 1 / 3: 5}, {0.5: 1}, {0.25: 9, 0.5: 3, 1 / 3: 4}, {1 / 3: 12}, {}]
)
def test_poisson_binomial_matches_exact(counts: dict[float, int]) -> None:
    ps = [Fraction(p).limit_denominator(10) for p, c in counts.items() for _ in range(c)]
    table = stats.poisson_binomial_log_sf_table(counts)
    assert len(table) == len(ps) + 1
    for h in range(len(ps) + 1):
        assert table[h] == pytest.approx(log_of(exact_pb_sf(h, ps)), rel=1e-9, abs=1e-12)


def test_poisson_binomial_equals_binomial_for_one_p() -> None:
    a = stats.poisson_binomial_log_sf_table({0.5: 40})
    b = stats.binom_log_sf_table(40, 0.5)
    assert np.allclose(a, b, rtol=1e-12, atol=1e-14)


def test_bonferroni() -> None:
    assert float(stats.bonferroni_log(math.log(1e-9), 1000)) == pytest.approx(math.log(1e-6))
    assert float(stats.bonferroni_log(math.log(0.01), 1000)) == 0.0  # capped at probability 1
    with pytest.raises(ValueError):
        stats.bonferroni_log(0.0, 0)


@pytest.mark.parametrize("counts", [{0.25: 9}, {1 / 3: 4}, {1 / 3: 4, 0.25: 3}, {0.5: 9}, {0.5: 0}])
def test_at_least_zero_hits_is_exactly_probability_one(counts: dict[float, int]) -> None:
    """A text with no hit reports p = 1.0, not 0.9999999999999994 (the pmf's sum rounds a hair below 1)."""
    assert stats.poisson_binomial_log_sf_table(counts)[0] == 0.0
    n = sum(counts.values())
    assert stats.binom_log_sf_table(n, 0.5)[0] == 0.0
