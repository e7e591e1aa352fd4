"""Power round 3 (2026-11-27): the strength views of a reading are one exact test.

A text with level-2 slots is scored over two strength chains (level 1, for normal-strength text; levels 1+2,
for strong text). They share the level-1 slots and used to be two Bonferroni hypotheses, a factor 2 for every
such text. ``watermark.lexical_views.Strengths`` tests them jointly: the statistic is the smaller of the two
chains' exact p-values, and its null distribution is computed exactly over the independent hit counts the
level-1 and level-2 slots of each revision add. Checked here against full enumeration, against the bounds
(never below the smaller p-value, never above the Bonferroni bound) and by simulation under H0.
"""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from watermark import lexical_views
from watermark.keys import KeyRing
from watermark.lexical import LexicalScheme, Observation
from watermark.lexical_views import Chain, Strengths


def _random_case(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = random.Random(seed)
    n = rng.randint(2, 11)
    ks = np.array([rng.choice([2, 2, 3, 4, 5]) for _ in range(n)], dtype=np.uint64)
    low = np.array([rng.random() < 0.6 for _ in range(n)])
    since = np.array([rng.choice([1, 1, 2, 3]) for _ in range(n)], dtype=np.int64)
    reading = np.array([rng.random() < 0.85 for _ in range(n)])
    return ks, low, since, reading


def _enumerate(test: Strengths, ks: np.ndarray) -> dict[float, float]:
    """P0(X = x) for X = min over the test's chains of their log p-values, by listing every hit pattern."""
    dist: dict[float, float] = {}
    for pattern in itertools.product([0, 1], repeat=len(ks)):
        p = math.prod(1 / int(k) if h else 1 - 1 / int(k) for h, k in zip(pattern, ks, strict=True))
        hits = np.array(pattern, dtype=bool)
        x = min(chain.log_p(min(float(tab[int((hits & v).sum())]) for v, tab in zip(chain.views, chain.tables,
                                                                                       strict=True)))
                for chain in test.chains)
        dist[x] = dist.get(x, 0.0) + p
    return dist


@pytest.mark.parametrize("seed", range(80))
def test_joint_p_value_matches_full_enumeration(seed: int) -> None:
    ks, low, since, reading = _random_case(seed)
    test = Strengths.build(reading, low, since, ks)
    if test is None:
        assert not reading.any()
        return
    assert len(test.chains) == (1 if not (reading & low).any() or not (reading & ~low).any() else 2)
    dist = _enumerate(test, ks)
    for x in dist:
        exact = sum(p for s, p in dist.items() if s <= x + 1e-12 * max(1.0, abs(x)))
        assert math.exp(test.log_p(x)) == pytest.approx(exact, rel=1e-9, abs=1e-300)
        # never below the smaller chain p-value, never above the Bonferroni bound over the chains it replaces
        assert x - 1e-12 <= test.log_p(x) <= x + math.log(len(test.chains)) + 1e-12


# (slot levels, revisions, choice sizes): hand-picked shapes, including the ones a served text has most often
SHAPES = [
    ([1] * 8 + [2] * 2, [1] * 10, [2] * 10),  # a normal text with two strong-only slots
    ([1] * 6 + [2] * 4, [1] * 5 + [3] + [1] * 3 + [2], [2, 3, 2, 4, 2, 3, 2, 2, 5, 2]),  # revisions at both levels
    ([2] * 5 + [1], [1] * 6, [2] * 6),  # mostly level 2
    ([1] * 3 + [2] * 3, [3, 3, 3, 1, 1, 1], [3] * 6),  # level 1 only in a later revision
    ([1] * 10, [1] * 5 + [2] * 5, [2] * 10),  # no level-2 slot: one chain, its own p-value
    ([2] * 7, [1, 1, 1, 2, 2, 3, 3], [2, 3, 4, 2, 3, 4, 5]),  # level 2 only: one chain
]


@pytest.mark.parametrize(("levels", "revisions", "sizes"), SHAPES)
def test_joint_p_value_on_hand_picked_shapes(levels: list[int], revisions: list[int], sizes: list[int]) -> None:
    ks = np.array(sizes, dtype=np.uint64)
    low = np.array(levels) == 1
    test = Strengths.build(np.ones(len(ks), dtype=bool), low, np.array(revisions, dtype=np.int64), ks)
    assert test is not None
    assert len(test.chains) == (2 if 1 in levels and 2 in levels else 1)
    dist = _enumerate(test, ks)
    for x in dist:
        exact = sum(p for s, p in dist.items() if s <= x + 1e-12 * max(1.0, abs(x)))
        assert math.exp(test.log_p(x)) == pytest.approx(exact, rel=1e-9, abs=1e-300)
        if len(test.chains) == 1:
            assert test.log_p(x) == x  # one chain: exactly its own exact p-value, as before this round


@pytest.mark.parametrize("hits", [40, 36, 32, 28])
def test_joint_test_pays_much_less_than_bonferroni_for_a_normal_text(hits: int) -> None:
    """40 level-1 slots, 3 level-2 coin flips: the joint p-value is close to the level-1 chain's alone."""
    ks = np.array([2] * 43, dtype=np.uint64)
    low = np.arange(43) < 40
    test = Strengths.build(np.ones(43, dtype=bool), low, np.ones(43, dtype=np.int64), ks)
    assert test is not None and len(test.chains) == 2
    x = float(test.chains[0].tables[0][hits])  # log P0(S >= hits), S ~ Binomial(40, 1/2)
    joint = test.log_p(x)
    assert x <= joint < x + math.log(1.5) < x + math.log(2)  # the level-2 view rarely crosses alone


def test_very_large_tables_use_the_bonferroni_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    ks = np.array([2] * 12, dtype=np.uint64)
    low = np.arange(12) < 8
    test = Strengths.build(np.ones(12, dtype=bool), low, np.ones(12, dtype=np.int64), ks)
    assert test is not None
    x = float(test.chains[0].tables[0][7])
    exact = test.log_p(x)
    assert test.work() < 1000
    for limit in ("_MAX_WORK", "_MAX_CELLS"):
        with monkeypatch.context() as m:
            m.setattr(lexical_views, limit, 1)
            fresh = Strengths.build(np.ones(12, dtype=bool), low, np.ones(12, dtype=np.int64), ks)
            assert fresh is not None and fresh.log_p(x) == pytest.approx(x + math.log(2)) and fresh.log_p(x) >= exact


def test_a_reading_without_tuples_is_no_test() -> None:
    ks = np.array([2, 3], dtype=np.uint64)
    assert Strengths.build(np.zeros(2, dtype=bool), np.ones(2, dtype=bool), np.ones(2, dtype=np.int64), ks) is None


# --- in the scheme ----------------------------------------------------------------------------------------------

def _window(responses: list[str], words: int, rnd: random.Random) -> str:
    """``words`` consecutive words of real responses (blank line between responses), from a random start."""
    pool = "\n\n".join(responses * (1 + 4 * words // sum(len(r.split()) for r in responses))).split(" ")
    start = rnd.randrange(len(pool) - words)
    return " ".join(pool[start : start + words])


@pytest.mark.parametrize("strength", ["normal", "strong"])
def test_one_hypothesis_per_key_for_either_strength(scheme: LexicalScheme, ring: KeyRing, responses: list[str],
                                                    strength: str) -> None:
    keys = ring.candidates([f"client-{i}" for i in range(30)])
    text = "\n\n".join(responses[:40])
    marked = scheme.embed(text, keys[11], strength)
    obs = scheme.observe(marked)
    assert bool(np.any(obs.level > 1))  # the text has strong-only slots: both strength views are scored
    s = scheme.score_observation(obs, keys)
    assert s.family_size == len(keys) and s.client_id == keys[11].client_id and s.watermarked(1e-6)
    test = scheme._tests(obs)[0]
    assert len(test.chains) == 2


@pytest.mark.parametrize("strength", ["normal", "strong"])
def test_never_above_the_two_bonferroni_hypotheses(scheme: LexicalScheme, ring: KeyRing, responses: list[str],
                                                   strength: str, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = ring.candidates([f"client-{i}" for i in range(20)])
    rnd = random.Random(4)
    for i in range(12):
        obs = scheme.observe(scheme.embed(_window(responses, 300, rnd), keys[i], strength))
        joint = scheme.score_observation(obs, keys)
        with monkeypatch.context() as m:
            m.setattr(lexical_views, "_MAX_WORK", 0)  # every joint test falls back to the Bonferroni bound
            bonf = scheme.score_observation(obs, keys)
        # what two Bonferroni hypotheses per key gave, at most; never below half of it
        assert bonf.log10_p_value - math.log10(2) - 1e-9 <= joint.log10_p_value <= bonf.log10_p_value + 1e-12


def test_joint_test_matches_the_chains_when_there_is_no_level_2_slot(scheme: LexicalScheme, ring: KeyRing,
                                                                     responses: list[str]) -> None:
    obs = scheme.observe(scheme.embed("\n\n".join(responses[:40]), ring.key("alice"), "normal"))
    low = obs.level <= 1
    only_low = Observation(tuple(c for c, f in zip(obs.contexts, low.tolist(), strict=True) if f),
                           obs.groups[low], obs.observed[low], obs.level[low])
    (test,) = scheme._tests(only_low)
    assert len(test.chains) == 1 and test.log_p(-20.0) == -20.0


def test_unwatermarked_texts_with_strong_slots_stay_at_their_level(scheme: LexicalScheme, ring: KeyRing,
                                                                    responses: list[str]) -> None:
    """Under H0 (another key) the joint p-value is valid: P(p <= a) <= a, up to sampling noise."""
    rnd = random.Random(9)
    ps, joint = [], 0
    for i in range(300):
        text = _window(responses, 250, rnd)
        obs = scheme.observe(scheme.embed(text, ring.key(f"writer-{i}"), "strong"))
        joint += any(len(t.chains) == 2 for t in scheme._tests(obs))
        ps.append(scheme.score_observation(obs, [ring.key(f"reader-{i}")]).p_value)
    assert joint >= 100  # most of these texts exercise the joint test
    for a in (0.05, 0.2, 0.5):
        assert sum(p <= a for p in ps) <= a * len(ps) + 3 * math.sqrt(a * len(ps))


def test_joint_test_is_memoised_and_deterministic() -> None:
    ks = np.array([2, 3, 2, 2, 4, 2], dtype=np.uint64)
    low = np.array([True, True, True, False, False, True])
    build = lambda: Strengths.build(np.ones(6, dtype=bool), low, np.array([1, 1, 2, 1, 2, 1]), ks)  # noqa: E731
    a, b = build(), build()
    assert a is not None and b is not None
    x = float(a.chains[0].tables[-1][3])
    assert a.log_p(x) == a.log_p(x) == b.log_p(x)
    assert isinstance(a.chains[0], Chain)
