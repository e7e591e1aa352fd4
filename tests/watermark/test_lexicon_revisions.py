"""Table revisions: a text served before the table grew keeps its power under the grown table.

The table is append-only and every group records the revision that added it (``since``). Verification scores
each text over the groups of every revision it has slots of (one Bonferroni view each), so the newer groups'
slots, which carry no watermark in a text served under an older table, do not dilute its evidence.
"""

from __future__ import annotations

import json
import math
import random
from importlib import resources
from typing import Any

import pytest

from watermark.keys import KeyRing
from watermark.lexical import LexicalScheme
from watermark.lexicon import Lexicon, default_lexicon

NAMES = ["Anna", "Ben", "Carla", "Dev", "Emma", "Farid", "Gita", "Hugo", "Ines", "Jon", "Kemal", "Lena", "Milo"]
ITEMS = ["apples", "books", "coins", "pens", "cards", "shells", "stamps", "marbles", "stickers", "plums"]


def table() -> dict[str, Any]:
    text = resources.files("watermark.data").joinpath("lexicon.json").read_text(encoding="utf-8")
    out: dict[str, Any] = json.loads(text)
    return out


def lexicon(keep: str) -> Lexicon:
    """``first``: the table as revision 1 shipped it; ``flat``: every group, all marked revision 1 (the
    scoring before revisions existed)."""
    t = table()
    if keep == "first":
        t["groups"] = [g for g in t["groups"] if g.get("since", 1) == 1]
    else:
        t["groups"] = [{k: v for k, v in g.items() if k != "since"} for g in t["groups"]]
    return Lexicon.from_json(t)


def worked(seed: int, n: int = 12) -> str:
    """Worked-solution prose with slots of both revisions (about 40 % of them added in revision 2)."""
    r = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = r.randint(2, 19), r.randint(2, 19)
        nm, ot = r.sample(NAMES, 2)
        it = r.choice(ITEMS)
        out.append(f"{nm} has twice as many {it} as {ot}. We know that {nm} bought {a} boxes, because {a} x {b} = "
                   f"{a * b}. So {ot} doesn't have more than {a * b} {it}, and it is easy to see that the total "
                   f"equals {a * b + a}. However, {nm} can't keep all of them.")
    return " ".join(out)


@pytest.fixture(scope="module")
def ring() -> KeyRing:
    return KeyRing(b"revision-test-master-0123456789")


def test_the_shipped_table_has_three_revisions() -> None:
    lex = default_lexicon()
    assert lex.revision == 3
    assert {g.since for g in lex.groups} == {1, 2, 3}
    # markdown choice points belong to the first revision
    assert lex.groups[lex.bullet_group].since == lex.groups[lex.ordered_group].since == 1


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_text_served_under_revision_1_keeps_its_power(ring: KeyRing, seed: int) -> None:
    key = ring.key("alice")
    first, flat, current = (LexicalScheme(ring.master, lexicon("first")), LexicalScheme(ring.master, lexicon("flat")),
                            LexicalScheme(ring.master))
    served = first.embed(worked(seed), key)
    then, diluted, now = first.score(served, [key]), flat.score(served, [key]), current.score(served, [key])
    # the nested views (revision 1, revisions 1 + 2) are one exact test (``watermark.lexical_views``): the
    # revision-1 view is the test the old table made, paid for with at most the old Bonferroni factor of 2
    assert now.family_size == then.family_size
    assert now.log10_p_value <= then.log10_p_value + math.log10(2) + 1e-9
    assert now.client_id == "alice" and now.p_value < 1e-6
    # scoring every group at once (no revision views) loses much of it to the newer groups' coin flips
    assert now.log10_p_value < diluted.log10_p_value - 2


@pytest.mark.parametrize("seed", [4, 5])
def test_text_served_under_revision_2_is_scored_with_every_group(ring: KeyRing, seed: int) -> None:
    key = ring.key("bob")
    flat, current = LexicalScheme(ring.master, lexicon("flat")), LexicalScheme(ring.master)
    served = current.embed(worked(seed), key)
    full, now = flat.score(served, [key]), current.score(served, [key])
    assert now.scored == full.scored  # the best view is the whole table
    # the exact test of the nested views costs less than the Bonferroni factor 2 of two separate views
    assert full.log10_p_value <= now.log10_p_value < full.log10_p_value + math.log10(2)


def test_text_without_newer_slots_is_scored_as_before(ring: KeyRing) -> None:
    key = ring.key("carol")
    text = ("I think it is not that simple. You don't need to buy a big car; however, it is important to "
            "consider the cost, and you can't always wait for a sale. It is easy to see why.")
    flat, current = LexicalScheme(ring.master, lexicon("flat")), LexicalScheme(ring.master)
    served = current.embed(text, key)
    a, b = flat.score(served, [key, ring.key("dave")]), current.score(served, [key, ring.key("dave")])
    assert b.scored > 0
    assert (b.family_size, b.log10_p_value, b.hits, b.client_id) == (a.family_size, a.log10_p_value, a.hits,
                                                                      a.client_id)


def test_unwatermarked_text_is_not_attributed(ring: KeyRing) -> None:
    keys = [ring.key(f"c{i}") for i in range(300)]
    res = LexicalScheme(ring.master).score(worked(9), keys)
    assert res.family_size == len(keys)
    assert res.p_value > 1e-3


@pytest.mark.parametrize("bad", [0, -1, "2", 1.5, True])
def test_a_bad_revision_is_refused_with_the_group_named(bad: object) -> None:
    t = table()
    t["groups"][0]["since"] = bad
    with pytest.raises(ValueError, match=rf"{t['groups'][0]['id']!r}.*'since'"):
        Lexicon.from_json(t)


@pytest.mark.parametrize("bad", [True, 1, ["why"]])
def test_a_retirement_needs_a_reason(bad: object) -> None:
    t = table()
    t["groups"][0]["retired"] = bad
    with pytest.raises(ValueError, match=rf"{t['groups'][0]['id']!r}.*'retired'"):
        Lexicon.from_json(t)


def test_retiring_a_group_keeps_every_index_and_removes_only_its_slots() -> None:
    t = table()
    idx = next(i for i, g in enumerate(t["groups"]) if g["id"] == "do not|don't")
    t["groups"][idx]["retired"] = "test"
    retired, shipped = Lexicon.from_json(t), default_lexicon()
    assert [g.gid for g in retired.groups] == [g.gid for g in shipped.groups]
    assert all(c.group != idx for cands in retired.by_first.values() for c in cands)
    assert any(c.group == idx for cands in shipped.by_first.values() for c in cands)
