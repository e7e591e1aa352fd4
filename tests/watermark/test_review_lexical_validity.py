"""Adversarial review of the lexical detector's p-values under H0 (the text was not watermarked with the key).

A false attribution is the worst failure of a forensic tool, so every p-value must be *valid*:
P0(p <= a) <= a for every a. These tests check that independently of the implementation's own arithmetic:

1. Exact tails and the nested revision views. The Poisson-binomial tail tables are compared with exact rational
   arithmetic (``fractions.Fraction``), and the exact first-passage p-value of a chain of nested views
   (``watermark.lexical_views.Chain``) is checked by enumerating every outcome of the per-revision hit counts:
   the p-value it reports for each outcome must satisfy P0(p <= p(x)) <= p(x) (validity) and equal
   P0(T <= T(x)) (exactness), over a randomized table of cases (up to 7 revisions, empty revisions, one
   revision holding everything, 40-slot revisions, hit counts at 0 and at the maximum, p from 1/2 to 1/1000).
2. The whole single-key test, end to end through ``LexicalScheme.score_observation``: for a synthetic
   observation with slots of several revisions, both strengths and both readings (a never-closed fence), the
   observed variants are set so that every hit pattern is realised; the reported p-value is collected for
   each pattern with its exact H0 probability, and validity is checked exactly. This covers whatever the
   detector min-s over within a key (views, strengths, readings), however it combines them.
3. Family-wise: scoring K keys must cost at least K times the best single key's p-value (everything min-ed
   over is counted), and a pooled corpus or a repeated text must not count a tuple twice.
4. Monte Carlo on real text (``../shared/data/responses.jsonl``, the hh-rlhf red-team source left out), plain
   and embedded with another client's key at strong strength with a never-closed fence, scored against
   random keys through the real PRF: the empirical P(p <= a) at a = 1e-1, 1e-2, 1e-3 stays within sampling
   error of a (100 000 key scores: a 2x excess at 1e-2 or at 1e-3 fails).
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from watermark import lexical_views, stats
from watermark.keys import ClientKey, KeyRing, scheme_key
from watermark.lexical import LexicalScheme, Observation
from watermark.lexicon import default_lexicon
from watermark.mix import choose, mix64_array, tuple_hash, tuple_hasher
from watermark.verify import verify

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "responses.jsonl"
MASTER = b"review-validity-master-secret-0123456789"
REL = 1e-9  # floating error allowed on a probability (relative)


# --- an independent exact implementation -----------------------------------------------------------------------

def pb_pmf(ks: Sequence[int]) -> list[Fraction]:
    """P(D = d), d = 0..n, for a sum of independent Bernoulli(1/k) draws: exact rationals."""
    pmf = [Fraction(1)]
    for k in ks:
        p = Fraction(1, k)
        nxt = [Fraction(0)] * (len(pmf) + 1)
        for d, q in enumerate(pmf):
            nxt[d] += q * (1 - p)
            nxt[d + 1] += q * p
        pmf = nxt
    return pmf


def tails(pmf: Sequence[Fraction]) -> list[Fraction]:
    """P(D >= h), h = 0..n."""
    out, acc = [Fraction(0)] * len(pmf), Fraction(0)
    for h in range(len(pmf) - 1, -1, -1):
        acc += pmf[h]
        out[h] = acc
    return out


def flog(x: Fraction) -> float:
    """Natural log of a positive rational of any size (math.log takes arbitrarily large ints)."""
    return math.log(x.numerator) - math.log(x.denominator)


def convolve(a: Sequence[Fraction], b: Sequence[Fraction]) -> list[Fraction]:
    out = [Fraction(0)] * (len(a) + len(b) - 1)
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            out[i + j] += x * y
    return out


def check_valid(outcomes: Sequence[tuple[float, float]], what: str) -> None:
    """``outcomes``: (log p reported, H0 probability) for every outcome of a test. Validity: for every
    attained level, P0(p <= level) <= level (up to floating error)."""
    total = math.fsum(q for _, q in outcomes)
    assert total == pytest.approx(1.0, abs=1e-9), what
    ordered = sorted(outcomes)
    acc: list[float] = []
    for i, (lp, q) in enumerate(ordered):
        acc.append(q)
        if i + 1 < len(ordered) and ordered[i + 1][0] == lp:
            continue
        mass = math.fsum(acc)
        level = math.exp(lp)
        assert mass <= level * (1 + REL) + 1e-300, f"{what}: P0(p <= {level:.6g}) = {mass:.6g} (anti-conservative)"


# --- 1. tail tables and the nested-view chain --------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(12))
def test_tail_tables_equal_exact_rational_tails(seed: int) -> None:
    rng = random.Random(seed)
    ks = [rng.choice([2, 2, 3, 4, 5, 7, 50, 1000]) for _ in range(rng.randint(0, 80))]
    counts: dict[float, int] = {}
    for k in ks:
        counts[1.0 / k] = counts.get(1.0 / k, 0) + 1
    table = stats.poisson_binomial_log_sf_table(counts)
    exact = tails(pb_pmf(ks))
    assert len(table) == len(exact)
    for h, (got, want) in enumerate(zip(table.tolist(), exact, strict=True)):
        assert got == pytest.approx(flog(want), abs=REL), (ks, h)


def _chain_cases() -> list[tuple[str, list[list[int]]]]:
    """Per case: the choice sizes k of the slots each revision adds (a revision may add none)."""
    rng = random.Random(20261127)
    cases: list[tuple[str, list[list[int]]]] = [
        ("one revision", [[2, 3, 2, 5]]),
        ("all slots in the first revision, later ones empty", [[2, 2, 3, 3, 4], [], []]),
        ("all slots in the last revision", [[], [], [2, 3, 2, 2, 3]]),
        ("a big first revision and one slot added", [[2] * 40, [3]]),
        ("one slot then a big revision", [[2], [2] * 30 + [3] * 10]),
        ("seven one-slot revisions", [[2], [3], [2], [5], [2], [4], [2]]),
        ("near-zero hit probability", [[1000, 1000, 50], [1000, 1000], [50, 1000]]),
        ("two big revisions", [[2] * 25 + [3] * 5, [2] * 20 + [5] * 4]),
    ]
    for i in range(40):
        m = rng.randint(1, 6)
        revs = [[rng.choice([2, 2, 2, 3, 3, 4, 5, 7, 50, 1000]) for _ in range(rng.choice([0, 1, 1, 2, 3, 4, 6]))]
                for _ in range(m)]
        cases.append((f"random {i}", revs))
    return cases


@pytest.mark.parametrize(("name", "revisions"), _chain_cases(), ids=[c[0] for c in _chain_cases()])
def test_nested_view_chain_p_value_is_valid_and_exact(name: str, revisions: list[list[int]]) -> None:
    ks = np.array([k for rev in revisions for k in rev], dtype=np.uint64)
    if len(ks) == 0:
        return
    # cumulative views, an empty revision repeating the previous view (the product drops those; the chain
    # must cope with them, and with an empty first view, all the same)
    bounds = list(itertools.accumulate(len(r) for r in revisions))
    views = [np.arange(len(ks)) < b for b in bounds]
    chain = lexical_views.Chain.build(views, ks)
    # the chain's tail tables are the exact tails of each view
    for b, table in zip(bounds, chain.tables, strict=True):
        exact = tails(pb_pmf([int(k) for k in ks[:b]]))
        assert np.allclose(table, [flog(x) for x in exact], rtol=0, atol=REL), name
    step_pmfs = [[float(x) for x in pb_pmf(rev)] for rev in revisions]
    outcomes: list[tuple[float, float, float]] = []  # (statistic, log p reported, probability)
    for ds in itertools.product(*(range(len(r) + 1) for r in revisions)):
        q = math.prod(pmf[d] for pmf, d in zip(step_pmfs, ds, strict=True))
        hs = list(itertools.accumulate(ds))
        t = min(float(table[h]) for table, h in zip(chain.tables, hs, strict=True))
        outcomes.append((t, chain.log_p(t), q))
    check_valid([(lp, q) for _, lp, q in outcomes], name)
    # exact, not merely valid: p(x) = P0(T <= T(x)), and between the single view's tail and Bonferroni's bound
    by_t = sorted(outcomes)
    acc = 0.0
    for i, (t, lp, q) in enumerate(by_t):
        acc += q
        if i + 1 < len(by_t) and by_t[i + 1][0] == t:
            continue
        assert math.exp(lp) == pytest.approx(min(acc, 1.0), rel=1e-8, abs=1e-300), (name, t)
        assert t - 1e-12 <= lp <= t + math.log(len(views)) + 1e-12


def _first_passage_exact(revisions: Sequence[Sequence[int]], crit: Sequence[int]) -> Fraction:
    """P(some view j reaches crit[j] hits), views nested by revision: an independent exact DP in rationals."""
    alive = {0: Fraction(1)}
    exit_mass = Fraction(0)
    for rev, c in zip(revisions, crit, strict=True):
        step = pb_pmf(rev)
        nxt: dict[int, Fraction] = {}
        for s, q in alive.items():
            for d, r in enumerate(step):
                nxt[s + d] = nxt.get(s + d, Fraction(0)) + q * r
        exit_mass += sum((q for s, q in nxt.items() if s >= c), Fraction(0))
        alive = {s: q for s, q in nxt.items() if s < c}
    return exit_mass


@pytest.mark.parametrize("hits_at", [(50, 70, 85), (60, 60, 60), (40, 75, 100), (58, 58, 95)])
def test_chain_deep_tail_matches_an_exact_rational_first_passage(hits_at: tuple[int, int, int]) -> None:
    """A corpus-sized chain (60 + 20 + 20 slots, 2-, 3- and 5-way) far in the tail (down to ~1e-40): the
    reported log p-value equals the exact first-passage probability computed in rationals."""
    revisions = [[2] * 40 + [3] * 20, [2] * 10 + [5] * 10, [3] * 20]
    ks = np.array([k for r in revisions for k in r], dtype=np.uint64)
    bounds = list(itertools.accumulate(len(r) for r in revisions))
    chain = lexical_views.Chain.build([np.arange(len(ks)) < b for b in bounds], ks)
    t = min(float(table[h]) for table, h in zip(chain.tables, hits_at, strict=True))
    exact_tails = [tails(pb_pmf([int(k) for k in ks[:b]])) for b in bounds]
    # the critical counts from the exact tails (a tie between views within float error would be ambiguous:
    # assert there is none near t)
    crit = []
    for et in exact_tails:
        logs = [flog(x) for x in et]
        assert not any(1e-13 <= abs(v - t) <= 1e-9 for v in logs)
        crit.append(next((h for h, v in enumerate(logs) if v <= t + 1e-12), len(logs)))
    exact = _first_passage_exact(revisions, crit)
    assert chain.log_p(t) == pytest.approx(flog(exact), abs=1e-9)
    assert chain.log_p(t) < -20


def test_chain_at_the_extremes() -> None:
    """No hit at all is p = 1; every hit of the whole chain is exactly its tail: no earlier view can reach a
    tail that small, so the joint test costs nothing there (Bonferroni would have doubled it)."""
    ks = np.array([2] * 10 + [3] * 3, dtype=np.uint64)
    views = [np.arange(13) < 10, np.ones(13, dtype=bool)]
    chain = lexical_views.Chain.build(views, ks)
    assert chain.log_p(min(float(tb[0]) for tb in chain.tables)) == pytest.approx(0.0, abs=1e-12)
    t_all = min(float(chain.tables[0][10]), float(chain.tables[1][13]))
    # T <= t_all = log(2^-10 3^-3) only when S_2 = 13: view 1's smallest tail is 2^-10
    assert math.exp(chain.log_p(t_all)) == pytest.approx(2.0**-10 / 27, rel=1e-9)
    # ten hits in view 1 and no hit among the three newer slots: T = log 2^-10, reached by S_1 = 10 or by any
    # S_2 with a tail at most 2^-10 (S_2 >= 12: which includes S_1 = 10 ...); exact value by enumeration
    t_ten = float(chain.tables[0][10])
    exact = Fraction(0)
    for s1, q1 in enumerate(pb_pmf([2] * 10)):
        for d, q2 in enumerate(pb_pmf([3] * 3)):
            if s1 == 10 or float(chain.tables[1][s1 + d]) <= t_ten:
                exact += q1 * q2
    assert math.exp(chain.log_p(t_ten)) == pytest.approx(float(exact), rel=1e-9)
    assert float(exact) > 2.0**-10  # the newer view adds outcomes: the joint p-value is above view 1's tail


# --- 2. the single-key test end to end, every hit pattern ---------------------------------------------------------

Cell = tuple[int, int, int, bool, int]  # (since, level, k, lenient, how many tuples)


def _groups_by_kind() -> dict[tuple[int, int, int], list[int]]:
    out: dict[tuple[int, int, int], list[int]] = {}
    for i, g in enumerate(default_lexicon().groups):
        out.setdefault((g.since, g.level, g.k), []).append(i)
    return out


def _key_choice(key: ClientKey, context: str, group: int) -> int:
    g = default_lexicon().groups[group]
    base = tuple_hasher(scheme_key(MASTER, key.version, "lexical/tuple"))
    return choose(tuple_hash(base, context, g.gid), key.seed64, g.k)


def _observation(cells: Sequence[Cell], hits: Sequence[int], key: ClientKey) -> Observation:
    """Tuples of the given kinds, the first ``hits[c]`` of cell c matching the key's choice, the others not."""
    kinds = _groups_by_kind()
    lex = default_lexicon()
    ctx: list[str] = []
    groups: list[int] = []
    observed: list[int] = []
    lenient: list[bool] = []
    for c, ((since, lv, k, len_, n), h) in enumerate(zip(cells, hits, strict=True)):
        pool = kinds[(since, lv, k)]
        for j in range(n):
            context = f"ctx{c}x{j}"
            group = pool[j % len(pool)]
            choice = _key_choice(key, context, group)
            groups.append(group)
            ctx.append(context)
            observed.append(choice if j < h else (choice + 1) % lex.groups[group].k)
            lenient.append(len_)
    level = [lex.groups[g].level for g in groups]
    return Observation(tuple(ctx), np.array(groups, dtype=np.int64), np.array(observed, dtype=np.int64),
                       np.array(level, dtype=np.int64), np.array(lenient, dtype=bool))


E2E_CASES: list[tuple[str, list[Cell]]] = [
    ("revisions 1 and 3", [(1, 1, 2, False, 4), (3, 1, 3, False, 3)]),
    ("revisions 1, 2, 3", [(1, 1, 2, False, 3), (2, 1, 2, False, 2), (3, 1, 3, False, 2)]),
    ("strong slots only", [(1, 2, 2, False, 4)]),
    ("level 1 and 2", [(1, 1, 3, False, 3), (1, 2, 2, False, 3)]),
    ("level 2 and a newer revision", [(1, 1, 2, False, 3), (1, 2, 2, False, 2), (3, 1, 3, False, 2)]),
    ("a never-closed fence", [(1, 1, 2, False, 3), (1, 1, 5, True, 3)]),
    ("fence, strengths and revisions",
     [(1, 1, 2, False, 2), (1, 2, 2, False, 2), (3, 1, 3, False, 1), (1, 1, 2, True, 2), (3, 1, 2, True, 2)]),
    ("only the lenient reading has slots", [(1, 1, 2, True, 3), (1, 2, 3, True, 2), (2, 1, 2, True, 2)]),
    ("a newer revision only", [(3, 1, 3, False, 4), (2, 1, 2, False, 3)]),
    ("uneven cells", [(1, 1, 4, False, 1), (1, 2, 3, False, 1), (2, 1, 2, True, 5), (3, 1, 2, False, 3)]),
    ("level 2 of revision 1, level 1 only from revision 3", [(1, 2, 2, False, 3), (3, 1, 3, False, 3)]),
    ("level 2 only behind the fence", [(1, 1, 2, False, 3), (1, 2, 2, True, 3), (3, 1, 2, False, 2)]),
]


def _random_e2e_cases(n: int) -> list[tuple[str, list[Cell]]]:
    kinds = sorted(_groups_by_kind())
    rng = random.Random(4242)
    out: list[tuple[str, list[Cell]]] = []
    while len(out) < n:
        cells: list[Cell] = []
        for _ in range(rng.randint(1, 5)):
            since, level, k = rng.choice(kinds)
            cells.append((since, level, k, rng.random() < 0.3, rng.randint(1, 4)))
        if math.prod(c[4] + 1 for c in cells) <= 160:
            out.append((f"random {len(out)}", cells))
    return out


E2E_CASES += _random_e2e_cases(12)


@pytest.mark.parametrize(("name", "cells"), E2E_CASES, ids=[c[0] for c in E2E_CASES])
def test_single_key_p_value_is_valid_over_every_hit_pattern(name: str, cells: list[Cell]) -> None:
    scheme = LexicalScheme(MASTER)
    key = KeyRing(MASTER).key("suspect")
    pmfs = [[float(x) for x in pb_pmf([k] * n)] for _, _, k, _, n in cells]
    outcomes: list[tuple[float, float]] = []
    for hits in itertools.product(*(range(c[4] + 1) for c in cells)):
        score = scheme.score_observation(_observation(cells, hits, key), [key])
        q = math.prod(pmf[h] for pmf, h in zip(pmfs, hits, strict=True))
        outcomes.append((score.log10_p_value * math.log(10), q))
        if all(h == c[4] for h, c in zip(hits, cells, strict=True)):
            assert score.hits == score.scored > 0  # the construction really realises the pattern
        if sum(hits) == 0:
            assert score.p_value == pytest.approx(1.0, abs=1e-12)
    check_valid(outcomes, name)


StrengthCell = tuple[int, int, int, int]  # (since, level, k, how many tuples)
STRENGTH_CASES: list[tuple[str, list[StrengthCell]]] = [
    ("level 1 and 2 of revision 1, level 1 of revision 3", [(1, 1, 2, 12), (1, 2, 2, 6), (3, 1, 3, 5), (1, 1, 3, 4)]),
    ("level 2 only in a newer revision", [(1, 1, 2, 8), (2, 2, 2, 5), (3, 1, 3, 4)]),
    ("level 1 only from revision 2", [(1, 2, 3, 6), (2, 1, 2, 7), (3, 2, 2, 3)]),
    ("one level-2 slot", [(1, 1, 2, 20), (1, 2, 5, 1)]),
    ("mostly level 2", [(1, 1, 2, 1), (1, 2, 2, 25)]),
]


def _random_strength_cases(n: int) -> list[tuple[str, list[StrengthCell]]]:
    rng = random.Random(777)
    out: list[tuple[str, list[StrengthCell]]] = []
    while len(out) < n:
        cells = [(rng.randint(1, 4), rng.choice([1, 2]), rng.choice([2, 2, 3, 5, 50]), rng.randint(1, 9))
                 for _ in range(rng.randint(2, 4))]
        if {c[1] for c in cells} == {1, 2} and math.prod(c[3] + 1 for c in cells) <= 3000:
            out.append((f"random {len(out)}", cells))
    return out


STRENGTH_CASES += _random_strength_cases(10)


@pytest.mark.parametrize("cap", [None, 1])
@pytest.mark.parametrize(("name", "cells"), STRENGTH_CASES, ids=[c[0] for c in STRENGTH_CASES])
def test_strength_joint_test_is_valid_and_exact(name: str, cells: list[StrengthCell], cap: int | None,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The joint test of the two strength chains (``lexical_views.Strengths``, when present) on cells too big
    for the end-to-end enumeration, with level-2 slots in any revision: every outcome of the per-cell hit
    counts enumerated; valid, exact (p(x) = P0(X <= X(x))) and within [x, 2x]. With ``cap`` the state-size
    limit is forced down, so the Bonferroni fallback (for pooled corpora too big for the exact table) is what
    is checked, for validity only."""
    strengths = getattr(lexical_views, "Strengths", None)
    if strengths is None:
        pytest.skip("no joint strength test in this tree (strengths are separate Bonferroni hypotheses)")
    if cap is not None:
        monkeypatch.setattr(lexical_views, "_MAX_CELLS", cap)
    ks = np.array([k for _, _, k, n in cells for _ in range(n)], dtype=np.uint64)
    since = np.array([s for s, _, _, n in cells for _ in range(n)], dtype=np.int64)
    level = np.array([lv for _, lv, _, n in cells for _ in range(n)], dtype=np.int64)
    test = strengths.build(np.ones(len(ks), dtype=bool), level <= 1, since, ks)
    assert test is not None and len(test.chains) == 2
    owner = np.repeat(np.arange(len(cells)), [n for *_, n in cells])
    # per chain and view: how many of each cell's tuples it holds (the views must be unions of cells)
    holds = []
    for chain in test.chains:
        per_view = []
        for v in chain.views:
            inside = [int(v[owner == c].sum()) for c in range(len(cells))]
            assert all(i in (0, n) for i, (*_, n) in zip(inside, cells, strict=True))
            per_view.append([i > 0 for i in inside])
        holds.append(per_view)
    pmfs = [[float(x) for x in pb_pmf([k] * n)] for _, _, k, n in cells]
    outcomes: list[tuple[float, float, float]] = []
    for hits in itertools.product(*(range(n + 1) for *_, n in cells)):
        x = min(
            chain.log_p(min(float(tb[sum(h for h, a in zip(hits, inside, strict=True) if a)])
                            for inside, tb in zip(per_view, chain.tables, strict=True)))
            for chain, per_view in zip(test.chains, holds, strict=True))
        q = math.prod(pmf[h] for pmf, h in zip(pmfs, hits, strict=True))
        lp = test.log_p(x)
        assert x - 1e-12 <= lp <= x + math.log(2) + 1e-12
        outcomes.append((x, lp, q))
    check_valid([(lp, q) for _, lp, q in outcomes], name)
    if cap is not None:
        return
    by_x = sorted(outcomes)
    acc = 0.0
    for i, (x, lp, q) in enumerate(by_x):
        acc += q
        if i + 1 < len(by_x) and by_x[i + 1][0] == x:
            continue
        assert math.exp(lp) == pytest.approx(min(acc, 1.0), rel=1e-8), (name, x)


# --- 3. the family and each tuple once -------------------------------------------------------------------------

def test_k_keys_cost_k_times_the_best_single_key() -> None:
    """Bonferroni over keys of valid single-key p-values: the family p-value must be at least K x the smallest
    single-key one (so everything the detector min-s over across keys is counted)."""
    scheme = LexicalScheme(MASTER)
    ring = KeyRing(MASTER, current=2, retained=(1,))  # two key versions: each (client, version) is a hypothesis
    writer = ring.key("writer", 1)
    cells: list[Cell] = [(1, 1, 2, False, 6), (1, 2, 2, False, 3), (3, 1, 3, False, 3), (1, 1, 2, True, 3)]
    obs = _observation(cells, [4, 2, 2, 2], writer)  # strongly favours no key but the writer's partly
    keys = [*ring.candidates([f"reader-{i}" for i in range(20)]), writer]
    singles = [scheme.score_observation(obs, [k]) for k in keys]
    family = scheme.score_observation(obs, keys, top=len(keys))
    assert family.family_size == len(keys) * singles[0].family_size
    assert scheme.score_observation(obs, keys).log10_p_value == family.log10_p_value  # whatever ``top`` is
    best = min(s.log10_p_value for s in singles)
    assert family.log10_p_value >= min(0.0, best + math.log10(len(keys))) - 1e-9
    assert family.log10_p_value == pytest.approx(min(0.0, best + math.log10(len(keys))), abs=1e-9)
    # every candidate's own p-value is its single-key test's before the single-key family factor
    own = {(s.client_id, s.key_version): s.log10_p_value for s in singles}
    assert len(own) == len(keys)
    for c in family.candidates:
        assert min(0.0, c.log10_p_value + math.log10(singles[0].family_size)) == pytest.approx(
            own[(c.client_id, c.key_version)], abs=1e-9)


def test_a_repeated_text_or_pooled_copy_counts_each_tuple_once(responses: list[str]) -> None:
    scheme = LexicalScheme(MASTER)
    ring = KeyRing(MASTER)
    text = scheme.embed("\n\n".join(responses[:4]), ring.key("writer"), "strong")
    fenced = text + "\n\n```\n" + text  # a never-closed fence over a verbatim copy: the lenient reading repeats
    one, pooled = scheme.observe(text), scheme.observe([text, text, text])
    doubled = scheme.observe(text + "\n\n" + text)
    keyset = set(zip(one.contexts, one.groups.tolist(), strict=True))
    assert len(keyset) == one.size > 10
    assert set(zip(pooled.contexts, pooled.groups.tolist(), strict=True)) == keyset and pooled.size == one.size
    for obs in (scheme.observe(fenced), doubled):
        assert len(set(zip(obs.contexts, obs.groups.tolist(), strict=True))) == obs.size
    keys = ring.derive(1, ["writer", "other-1", "other-2"])
    for k in keys:
        assert scheme.score([text, text], [k]).log10_p_value == pytest.approx(
            scheme.score(text, [k]).log10_p_value, abs=1e-12)
    # a verbatim copy adds (almost) no scored tuple: the copy window skips its slots
    assert doubled.size <= one.size + 2


# --- 4. Monte Carlo on real text through the keyed PRF -------------------------------------------------------------

def _real_documents(n: int, words: int, seed: int) -> list[str]:
    if not DATA.exists():
        pytest.skip("../shared/data/responses.jsonl is not beside the repository")
    with DATA.open(encoding="utf-8") as f:
        pool = [r["response"] for r in map(json.loads, f) if r["source"] != "hh-rlhf-harmless-base"]
    rng = random.Random(seed)
    rng.shuffle(pool)
    docs: list[str] = []
    i = 0
    while len(docs) < n:
        parts: list[str] = []
        count = 0
        while count < words:
            parts.append(pool[i])
            count += len(pool[i].split())
            i += 1
        docs.append("\n\n".join(parts))
    return docs


def _observations(docs: Sequence[str], scheme: LexicalScheme, ring: KeyRing) -> list[Observation]:
    """Each document as is, and embedded with another client's key at strong strength with a never-closed
    fence inserted at a paragraph break mid-way (several readings and both strengths)."""
    lex = default_lexicon()
    out: list[Observation] = []
    for i, doc in enumerate(docs):
        marked = scheme.embed(doc, ring.key(f"writer-{i}"), "strong")
        cut = marked.find("\n\n", len(marked) // 2)
        marked = marked[:cut] + "\n\n```\n" + marked[cut:] if cut > 0 else marked + "\n```\n"
        for obs in (scheme.observe(doc), scheme.observe(marked)):
            out.append(obs)
    for o in out:  # each PRF input once: distinct tuples are independent draws only if their inputs differ
        pairs = {(c, lex.groups[g].gid) for c, g in zip(o.contexts, o.groups.tolist(), strict=True)}
        assert len(pairs) == o.size
    # the sample must exercise the joint tests, or it checks nothing new
    newer = [bool(any(lex.groups[g].since > 1 for g in o.groups.tolist())) for o in out]
    strong = [bool((o.level > 1).any()) for o in out]
    fence = [o.lenient is not None and bool(o.lenient.any()) for o in out]
    assert sum(newer) >= len(out) // 4 and sum(strong) >= len(out) // 4 and sum(fence) >= len(out) // 4
    assert any(a and b and c for a, b, c in zip(newer, strong, fence, strict=True))
    return out


def _single_key_log10_ps(scheme: LexicalScheme, obs: Observation, keys: list[ClientKey]) -> npt.NDArray[np.float64]:
    """Each key's single-key p-value (log10), from one batched call: the candidates' own p-values times the
    single-key family (checked against real single-key calls for a few keys)."""
    one = scheme.score_observation(obs, keys[:1])
    batch = scheme.score_observation(obs, keys, top=len(keys))
    assert batch.family_size == len(keys) * one.family_size
    got = {c.client_id: min(0.0, c.log10_p_value + math.log10(one.family_size)) for c in batch.candidates}
    assert len(got) == len(keys)
    for k in keys[:3]:
        assert got[k.client_id] == pytest.approx(scheme.score_observation(obs, [k]).log10_p_value, abs=1e-9)
    return np.array([got[k.client_id] for k in keys])


def _check_super_uniform(log10_ps: npt.NDArray[np.float64], alphas: Sequence[float]) -> None:
    n = len(log10_ps)
    for a in alphas:
        count = int(np.sum(log10_ps <= math.log10(a)))
        limit = a * n + 4.0 * math.sqrt(a * n) + 2.0
        assert count <= limit, f"P(p <= {a:g}) = {count}/{n} = {count / n:.3g} (limit {limit:.0f}): anti-conservative"


def test_real_text_p_values_are_super_uniform_under_wrong_keys() -> None:
    """100 000 (text, key) scores: 6 real ~1 200-word documents, plain and embedded with another key (strong,
    never-closed fence), each against ~8 300 random keys. Given the text, different keys' hits are independent
    draws, so the p-values of one text are i.i.d. and each must be valid on its own."""
    scheme = LexicalScheme(MASTER)
    ring = KeyRing(MASTER)
    obs = _observations(_real_documents(6, 1200, seed=4), scheme, ring)
    per = 100_000 // len(obs) + 1
    ps = np.concatenate([
        _single_key_log10_ps(scheme, o, ring.derive(1, [f"reader-{j}-{i}" for i in range(per)]))
        for j, o in enumerate(obs)
    ])
    _check_super_uniform(ps, (1e-1, 1e-2, 1e-3))


def test_hit_counts_under_wrong_keys_follow_the_exact_poisson_binomial() -> None:
    """Per real observation, the number of tuples on which a random key agrees with the text is
    Poisson-binomial(1/k_i) under H0 -- the one assumption the exact tests above take as given. 12 observations
    (plain; another key's strong embedding with a never-closed fence) x 20 000 keys through the real PRF:
    the mean, the variance (one-sided: positive dependence between tuples -- a PRF input scored twice, a mixer
    bias shared across tuples, the embedder's choices leaking into another key's -- inflates it) and the upper
    tail at the counts whose exact tail is just below 1e-1, 1e-2, 1e-3 (observed exceedances against the exact
    expectation: no discreteness slack, so a 1.5x excess at 1e-2 fails)."""
    scheme = LexicalScheme(MASTER)
    ring = KeyRing(MASTER)
    lex = default_lexicon()
    base = tuple_hasher(scheme_key(MASTER, 1, "lexical/tuple"))
    z_mean: list[float] = []
    z_var: list[float] = []
    alphas = (1e-1, 1e-2, 1e-3)
    expected = dict.fromkeys(alphas, 0.0)
    seen = dict.fromkeys(alphas, 0)
    for j, o in enumerate(_observations(_real_documents(6, 1200, seed=5), scheme, ring)):
        ks = np.array([lex.groups[g].k for g in o.groups.tolist()], dtype=np.uint64)
        t = np.array([tuple_hash(base, c, lex.groups[g].gid) for c, g in zip(o.contexts, o.groups.tolist(),
                                                                             strict=True)], dtype=np.uint64)
        seeds = np.array([k.seed64 for k in ring.derive(1, [f"v-{j}-{i}" for i in range(20000)])], dtype=np.uint64)
        hits = ((mix64_array(t[None, :] ^ seeds[:, None]) % ks[None, :]) == o.observed.astype(np.uint64)).sum(1)
        p = 1.0 / ks.astype(np.float64)
        mean, var = float(p.sum()), float((p * (1 - p)).sum())
        fourth = float((p * (1 - p) * (1 - 3 * p * (1 - p))).sum()) + 3 * var**2  # 4th central moment
        n = len(hits)
        z_mean.append((float(hits.mean()) - mean) / math.sqrt(var / n))
        z_var.append((float(hits.var(ddof=1)) - var) / math.sqrt((fourth - var**2) / n))
        exact = [float(x) for x in tails(pb_pmf([int(k) for k in ks]))]
        for a in alphas:
            h = next(h for h, x in enumerate([*exact, 0.0]) if x <= a)
            expected[a] += n * (exact[h] if h < len(exact) else 0.0)
            seen[a] += int((hits >= h).sum())
    assert abs(sum(z_mean)) / math.sqrt(len(z_mean)) < 4.0, z_mean
    assert sum(z_var) / math.sqrt(len(z_var)) < 4.0, z_var
    for a in alphas:
        assert seen[a] <= expected[a] + 4 * math.sqrt(expected[a]) + 2, (a, seen[a], expected[a])


def test_verify_api_on_unwatermarked_and_foreign_text() -> None:
    """The public ``verify``: a document embedded for one client is not attributed to any of 1 000 others, and
    the verdict's p-value is the scheme's family-wise one."""
    scheme = LexicalScheme(MASTER)
    ring = KeyRing(MASTER)
    docs = _real_documents(2, 800, seed=9)
    keys = ring.derive(1, [f"client-{i}" for i in range(1000)])
    for i, doc in enumerate(docs):
        marked = scheme.embed(doc, ring.key(f"outsider-{i}"), "strong")
        for text in (doc, marked):
            verdict = verify(text, keys, [scheme])
            assert not verdict.watermarked
            assert verdict.log10_p_value == pytest.approx(scheme.score(text, keys).log10_p_value, abs=1e-12)


@pytest.mark.slow
def test_real_text_p_values_are_super_uniform_many_texts_and_family_wise() -> None:
    """Heavier: 24 documents (48 observations) x ~8 400 keys = 400 000 single-key scores (a 1.5x excess at
    1e-3 fails), 4 pooled corpora x 25 000 keys, and 4 000 family-wise verdicts among 100 keys each."""
    scheme = LexicalScheme(MASTER)
    ring = KeyRing(MASTER)
    obs = _observations(_real_documents(24, 1000, seed=11), scheme, ring)
    per = 400_000 // len(obs) + 1
    ps = np.concatenate([
        _single_key_log10_ps(scheme, o, ring.derive(1, [f"r-{j}-{i}" for i in range(per)]))
        for j, o in enumerate(obs)
    ])
    _check_super_uniform(ps, (1e-1, 1e-2, 1e-3, 1e-4))
    # corpus mode: 4 pooled corpora of 10 texts, each text embedded by its own other client, 25 000 keys each
    docs = _real_documents(40, 300, seed=12)
    corpora = [scheme.observe([scheme.embed(d, ring.key(f"w-{c}-{i}"), "strong") for i, d in
                               enumerate(docs[10 * c : 10 * c + 10])]) for c in range(4)]
    pooled = np.concatenate([
        _single_key_log10_ps(scheme, o, ring.derive(1, [f"c-{j}-{i}" for i in range(25_000)]))
        for j, o in enumerate(corpora)
    ])
    _check_super_uniform(pooled, (1e-1, 1e-2, 1e-3))
    fam: list[float] = []
    for j, o in enumerate(obs):
        for b in range(4000 // len(obs) + 1):
            keys = ring.derive(1, [f"f-{j}-{b}-{i}" for i in range(100)])
            fam.append(scheme.score_observation(o, keys).log10_p_value)
    _check_super_uniform(np.array(fam), (1e-1, 1e-2))
