"""The two readings of a text with a never-closed fence are one exact test (``watermark.lexical_readings``).

Checked against full enumeration of every hit pattern on small random cases (the strict reading nested in the
lenient one, level 1 and 2, several revisions), against the bounds (never below the smaller reading p-value,
never above the Bonferroni factor 2 the two hypotheses cost before), and end to end: a text without a lenient
reading is scored exactly as before, and a re-wrapped watermarked text is one hypothesis per key.
"""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from tests.support.lexical import rewrap
from watermark import lexical_views
from watermark.keys import ClientKey, KeyRing, scheme_key
from watermark.lexical import LexicalScheme, Observation
from watermark.lexical_readings import Readings
from watermark.lexical_views import Strengths
from watermark.mix import choose, tuple_hash, tuple_hasher


def _random_case(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = random.Random(seed)
    while True:
        n = rng.randint(2, 10)
        ks = np.array([rng.choice([2, 2, 3, 4, 5]) for _ in range(n)], dtype=np.uint64)
        low = np.array([rng.random() < 0.65 for _ in range(n)])
        since = np.array([rng.choice([1, 1, 2, 3]) for _ in range(n)], dtype=np.int64)
        strict = np.array([rng.random() < 0.5 for _ in range(n)])
        if strict.any() and not strict.all():
            return ks, low, since, strict


def _x(test: Strengths, hits: np.ndarray) -> float:
    return min(chain.log_p(min(float(tab[int((hits & v).sum())]) for v, tab in zip(chain.views, chain.tables,
                                                                                      strict=True)))
               for chain in test.chains)


def _enumerate(joint: Readings, ks: np.ndarray) -> dict[float, float]:
    """P0(Y = y), Y = min over the two readings of their tests' log p-values, listing every hit pattern."""
    dist: dict[float, float] = {}
    for pattern in itertools.product([0, 1], repeat=len(ks)):
        p = math.prod(1 / int(k) if h else 1 - 1 / int(k) for h, k in zip(pattern, ks, strict=True))
        hits = np.array(pattern, dtype=bool)
        y = min(test.log_p(_x(test, hits)) for test in joint.tests)
        dist[y] = dist.get(y, 0.0) + p
    return dist


def _build(ks: np.ndarray, low: np.ndarray, since: np.ndarray, strict: np.ndarray) -> Readings:
    s = Strengths.build(strict, low, since, ks)
    f = Strengths.build(np.ones(len(ks), dtype=bool), low, since, ks)
    assert s is not None and f is not None
    return Readings.build(s, f, strict, low, since, ks)


@pytest.mark.parametrize("seed", range(60))
def test_joint_reading_p_value_matches_full_enumeration(seed: int) -> None:
    ks, low, since, strict = _random_case(seed)
    joint = _build(ks, low, since, strict)
    dist = _enumerate(joint, ks)
    for y in dist:
        exact = sum(p for s, p in dist.items() if s <= y + 1e-12 * max(1.0, abs(y)))
        assert math.exp(joint.log_p(y)) == pytest.approx(exact, rel=1e-9, abs=1e-300)
        # never below the smaller reading p-value, never above the Bonferroni bound of the two hypotheses
        assert y - 1e-12 <= joint.log_p(y) <= min(0.0, y + math.log(2)) + 1e-12


@pytest.mark.parametrize("seed", range(8))
def test_joint_reading_test_is_valid_by_simulation(seed: int) -> None:
    """Under H0 (each slot a hit with probability 1/k), P(p <= a) <= a at every level, within sampling noise."""
    ks, low, since, strict = _random_case(100 + seed)
    joint = _build(ks, low, since, strict)
    rng = np.random.default_rng(seed)
    draws = rng.random((4000, len(ks))) < 1.0 / ks.astype(np.float64)[None, :]
    ps = np.array([math.exp(joint.log_p(min(t.log_p(_x(t, h)) for t in joint.tests))) for h in draws])
    for a in (0.01, 0.05, 0.2, 0.5):
        assert (ps <= a).mean() <= a + 4 * math.sqrt(a * (1 - a) / len(ps)) + 1e-9


def test_past_the_size_limit_it_is_the_bonferroni_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    ks, low, since, strict = _random_case(3)
    y = -3.0
    exact = _build(ks, low, since, strict).log_p(y)
    monkeypatch.setattr(lexical_views, "_MAX_CELLS", 0)
    assert _build(ks, low, since, strict).log_p(y) == pytest.approx(min(0.0, y + math.log(2)))
    assert exact <= y + math.log(2) + 1e-12


MASTER = b"m" * 32


def test_a_text_without_a_lenient_reading_keeps_its_old_p_value() -> None:
    """No lenient tuple: no joint test, the family is keys, and the score is the same whatever ``lenient``
    says (None or all False)."""
    scheme = LexicalScheme(MASTER, strength="strong")
    ring = KeyRing(MASTER)
    keys = [ring.key(f"c{i}") for i in range(20)]
    text = ("To find the total, we add the numbers. So that's the answer, and in addition we check it. "
            "However, the result is also correct because it matches.") * 4
    obs = scheme.observe(scheme.embed(text, keys[3]))
    assert obs.lenient is not None and not obs.lenient.any()
    assert scheme._readings(obs, scheme._tests(obs)) is None
    bare = Observation(obs.contexts, obs.groups, obs.observed, obs.level, None)
    a, b = scheme.score_observation(obs, keys), scheme.score_observation(bare, keys)
    assert (a.log10_p_value, a.client_id, a.family_size, a.hits, a.scored) == (
        b.log10_p_value, b.client_id, b.family_size, b.hits, b.scored)
    assert a.family_size == len(keys)


def test_a_rewrapped_text_is_one_hypothesis_per_key_and_never_above_the_old_bound() -> None:
    scheme = LexicalScheme(MASTER)
    ring = KeyRing(MASTER)
    keys = [ring.key(f"c{i}") for i in range(10)]
    prose = ("To find the total, we add the numbers. So that's the answer, and in addition we check it. "
             "However, the result is also correct because it matches the example above. ")
    text = "\n\n".join([prose * 3, "```python\nimport os\nprint(os.getcwd())\n```", prose * 3, prose * 2])
    marked = scheme.embed(text, keys[4])
    rewrapped = rewrap(marked)  # the closing fence lands mid-line: the fence never closes
    obs = scheme.observe(rewrapped)
    assert obs.lenient is not None and obs.lenient.any() and (~obs.lenient).any()
    tests = scheme._tests(obs)
    joint = scheme._readings(obs, tests)
    assert len(tests) == 2 and joint is not None
    s = scheme.score_observation(obs, keys)
    assert s.family_size == len(keys) and s.client_id == keys[4].client_id
    # the old score: the smaller reading p-value, times two readings, times the keys
    best = min(c.log10_p_value for c in s.candidates) * math.log(10)
    y = joint.log_p(best)
    assert best <= y <= best + math.log(2) + 1e-12
    own = scheme.score_observation(obs, [keys[4]])
    x = min(t.log_p(min(ch.log_p(v) for ch in t.chains for v in [_best_stat(scheme, obs, keys[4], ch)]))
            for t in tests)
    assert own.log10_p_value * math.log(10) == pytest.approx(joint.log_p(x), rel=1e-9)
    assert own.log10_p_value * math.log(10) <= min(0.0, x + math.log(2)) + 1e-12


def _best_stat(scheme: LexicalScheme, obs: Observation, key: ClientKey, chain: lexical_views.Chain) -> float:
    """The chain's statistic for one key, recomputed from the key's hits (independent of score_observation)."""
    base = tuple_hasher(scheme_key(MASTER, key.version, "lexical/tuple"))
    groups = scheme._lex.groups
    hits = np.array([choose(tuple_hash(base, c, groups[g].gid), key.seed64, groups[g].k) == o
                     for c, g, o in zip(obs.contexts, obs.groups.tolist(), obs.observed.tolist(), strict=True)])
    return min(float(tab[int((hits & v).sum())]) for v, tab in zip(chain.views, chain.tables, strict=True))
