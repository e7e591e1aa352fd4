"""Power round 2 (2026-11-27): table revision 3, two meaning fixes, and the nested revision views tested exactly.

- Revision 3 adds three-way negated copulas ("it's not" / "it isn't" / "it is not", likewise for that, there,
  he, she, and "you're not" / "you aren't" / "you are not" for you, we, they), "it would" / "it'd" and
  "compared to" / "compared with". Each fires where intended and never in code, URLs or numbers.
- Narrative "So he took this kid to the park" is no slot (a personal pronoun after "So" needs a number earlier
  in the paragraph: "So he pays 400*2=$800" stays one); anaphora ("Every smile, every laugh") is never broken.
- The views of one reading and strength, cut at each table revision, are one exact test
  (``watermark.lexical_views``), checked against full enumeration.
"""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from tests.support.lexical import feed_in_pieces, slots
from watermark.keys import KeyRing
from watermark.lexical import LexicalScheme
from watermark.lexical_views import Chain
from watermark.lexicon import default_lexicon
from watermark.mix import choose, tuple_hash


def variants(text: str) -> list[str]:
    return [v for _, v in slots(text)]


# (text, the variant found as a slot)
FIRES = [
    ("No, that’s not true.", "that's not"),  # tune text; the apostrophe style is the text's own
    ("It is not hard to verify that T is a closed operator.", "it is not"),
    ("I think it isn't worth the money.", "it isn't"),
    ("There's not much left in the tank.", "there's not"),
    ("He isn't at home today.", "he isn't"),
    ("She is not sure yet.", "she is not"),
    ("If you're not ready to end the conversation, just say so.", "you're not"),
    ("They aren't likely to want to make the case.", "they aren't"),
    ("We are not in Kansas anymore.", "we are not"),
    ("I think it would be interesting for you to read it.", "it would"),
    ("It'd take him 2400*3 = 7200 seconds to fold all boxes.", "it'd"),
    ("It offers more memory bandwidth compared to GDDR6.", "compared to"),
    ("Compared with Python, C is faster.", "compared with"),
    ("it's not.", "it's not"),  # at the end of a clause: "it isn't." and "it is not." are fine too
]


@pytest.mark.parametrize(("text", "variant"), FIRES)
def test_revision_3_groups_fire(text: str, variant: str) -> None:
    assert variant in variants(text)


# (text, variant that must not be a slot)
REFUSED = [
    ("He's not been there since May.", "he's not"),  # 's = has before a participle
    ("She's not got a car.", "she's not"),
    ("It's not always been easy.", "it's not"),  # an adverb that may come before a participle
    ("It's not ever been tried.", "it's not"),
    ("It’s Not Fair", "it's not"),  # a title: "It Isn't Fair" would break the casing
    # "there" of place: "the information out there's not illegal" (tune text, review)
    ("But most of the information out there isn’t actually illegal.", "there isn't"),
    ("the cost of it would be 8 * 5 = $40.", "it would"),  # "it" closes the subject: never "of it'd be"
    ("It'd better work.", "it'd"),  # "had better"
    ("It'd never happened before.", "it'd"),  # "had" + participle
    ("It would not work.", "it would"),  # the negation is "would not" / "wouldn't"
    ("The poem is compared to a rose.", "compared to"),  # passive: "compared to" likens
    ("They can be compared with each other.", "compared with"),
    # never inside code, URLs or other protected chunks
    ("Run `it's not` in the shell.", "it's not"),
    ("```\nit is not here\n```\nDone.", "it is not"),
    ("    it is not indented code\n", "it is not"),
    ("See https://example.com/it's-not-here for it.", "it's not"),
]


@pytest.mark.parametrize(("text", "variant"), REFUSED)
def test_revision_3_groups_are_guarded(text: str, variant: str) -> None:
    assert variant not in variants(text)


def test_revision_3_is_appended() -> None:
    lex = default_lexicon()
    rev3 = [i for i, g in enumerate(lex.groups) if g.since == 3]
    assert len(rev3) == 10 and lex.revision == 3
    assert rev3 == list(range(rev3[0], rev3[0] + len(rev3)))  # one block, after every older group
    assert all(g.since < 3 for g in lex.groups[: rev3[0]])
    assert {lex.groups[i].k for i in rev3} == {2, 3}


def test_old_slot_taken_over_by_a_three_way_group() -> None:
    """"it is not" was an "is not|isn't" slot (context "it"); revision 3 reads it as one three-way choice."""
    assert slots("Yes, it is not here.") == [("yes", "it is not")]
    assert slots("Yes, it isn't here.") == [("yes", "it isn't")]
    # where the new group refuses, the old slot is still there
    assert ("it", "is not") in slots("Yes, it is not done.")


# --- narrative "So he ..." --------------------------------------------------------------------------------

SO_REFUSED = [
    "So he took this kid to the park.",  # tune chat text (review 2's known residual)
    "So, she went home after the party.",  # read through the comma
    "So he'll come back tomorrow.",  # the pronoun's contraction class
    "So they stopped for the night.",
    "Therefore he took this kid to the park.",  # the variant the embedder may have written reads the same
    "He paid 5 dollars.\n\nSo he left.",  # the number is in another paragraph
]


@pytest.mark.parametrize("text", SO_REFUSED)
def test_narrative_so_before_a_pronoun_is_no_slot(text: str) -> None:
    assert not {"so", "therefore", "thus", "hence"} & set(variants(text))


SO_KEPT = [
    "He sees the doctor 12/6=2 times a year. So he pays 400*2=$800 for doctor visits.",
    "Each costs $4. So, she pays $8.",
    "They ran 5 laps. Hence they ran 10 miles.",
    "So the total is 5.",  # no pronoun: no number needed
    "So it is a polite answer.",  # "it" is not guarded
]


@pytest.mark.parametrize("text", SO_KEPT)
def test_inferential_so_stays_a_slot(text: str) -> None:
    assert {"so", "therefore", "thus", "hence"} & set(variants(text))


# --- anaphora with each / every -----------------------------------------------------------------------------

EVERY_REFUSED = [
    "Every smile, every laugh, and every tear is a gift.",  # review 2's known residual
    "Every smile and every laugh counts.",
    "Every single day, every night, she wrote.",
    "We talk each morning or each evening.",
    "3 foxes catch 4 weasels each every week.",  # "each each week" would be wrong
    "In every heartbeat, every laugh, every bold step that you take.",  # tune text
]


@pytest.mark.parametrize("text", EVERY_REFUSED)
def test_anaphora_is_never_broken(text: str) -> None:
    assert not {"each", "every"} & set(variants(text))


EVERY_KEPT = [
    "I go there every day.",
    "For each file, run the check.",
    "There are 6 students in each group. So each group takes 24 minutes.",  # a sentence end breaks the chain
    "Each student gets a book, and the teacher reads aloud for an hour.",
]


@pytest.mark.parametrize("text", EVERY_KEPT)
def test_each_every_elsewhere_stays_a_slot(text: str) -> None:
    assert {"each", "every"} & set(variants(text))


def test_a_slot_counts_as_one_chunk_whatever_its_variant() -> None:
    """The distance to the last each/every counts a slot as one chunk: "a lot of" and "lots of", "do not" and
    "don't" leave the same decision for the next each/every."""
    for lead in ("a lot of", "lots of"):
        assert "every" not in variants(f"Every {lead} laughs, every tear.")[1:]
    for neg in ("do not", "don't"):
        assert variants(f"We {neg} see every day the same way.")[-1] == "every"


# --- streaming, detection, round trips ----------------------------------------------------------------------

ALL_TEXTS = [t for t, _ in FIRES + REFUSED] + SO_REFUSED + SO_KEPT + EVERY_REFUSED + EVERY_KEPT


def test_round_trip_streams_like_batch_and_every_slot_is_a_hit() -> None:
    ring = KeyRing(b"power-round-2-master-secret-0123")
    scheme = LexicalScheme(ring.master)
    text = " ".join(ALL_TEXTS)
    rnd = random.Random(3)
    for client in range(6):
        key = ring.key(f"client-{client}")
        whole = scheme.embed(text, key)
        for _ in range(4):
            assert feed_in_pieces(scheme.embedder(key), text, rnd, 7) == whole
        assert scheme.embed(whole, key) == whole  # idempotent
        obs = scheme.observe(whole)
        groups = [scheme._lex.groups[g] for g in obs.groups.tolist()]
        assert sum(g.since == 3 for g in groups) >= 8
        # every normal-strength tuple of the strict reading is a hit (the text joins a fence into a line, so a
        # lenient reading of the never-closed fence also scores text the embedder took for code: coin flips)
        lenient = obs.lenient.tolist() if obs.lenient is not None else [False] * obs.size
        assert all(choose(tuple_hash(scheme._base(key.version), c, g.gid), key.seed64, g.k) == o
                   for c, g, o, extra in zip(obs.contexts, groups, obs.observed.tolist(), lenient, strict=True)
                   if g.level <= 1 and not extra)
        assert scheme.score(whole, [key, ring.key("other")]).client_id == key.client_id


def test_streaming_holds_a_negated_copula_until_it_is_decided() -> None:
    scheme = LexicalScheme(b"power-round-2-master-secret-0123")
    emb = scheme.embedder(KeyRing(b"power-round-2-master-secret-0123").key("a"))
    assert emb.feed("Well, it is") == "Well, "
    assert emb.feed(" nice and") in ("it is nice ", "it's nice ")  # "it is not" is ruled out by "nice"
    assert emb.feed(" it is not") == "and "  # the phrase waits for the word after it
    rest = emb.feed(" here.") + emb.finish()
    assert rest in {f"{v} here." for v in ("it is not", "it isn't", "it's not")}


# --- the exact test of nested views --------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(40))
def test_chain_p_value_matches_full_enumeration(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(1, 9)
    ks = np.array([rng.choice([2, 3, 4, 5]) for _ in range(n)], dtype=np.uint64)
    since = np.array([rng.choice([1, 1, 2, 3]) for _ in range(n)])
    views: list[np.ndarray] = []
    for r in (1, 2, 3):
        v = since <= r
        if v.any() and not (views and np.array_equal(v, views[-1])):
            views.append(v)
    if not views:
        return
    chain = Chain.build(views, ks)
    dist: dict[float, float] = {}
    for pattern in itertools.product([0, 1], repeat=n):
        p = math.prod(1 / int(k) if h else 1 - 1 / int(k) for h, k in zip(pattern, ks, strict=True))
        stat = min(float(tab[sum(h for h, m in zip(pattern, v, strict=True) if m)])
                   for v, tab in zip(views, chain.tables, strict=True))
        dist[stat] = dist.get(stat, 0.0) + p
    for t in dist:
        exact = sum(p for s, p in dist.items() if s <= t)
        assert math.exp(chain.log_p(t)) == pytest.approx(exact, rel=1e-9)
        # never below the single view's tail, never above the Bonferroni bound it replaces
        assert t - 1e-12 <= chain.log_p(t) <= t + math.log(len(views)) + 1e-12


def test_chain_views_must_be_nested() -> None:
    ks = np.array([2, 2, 3], dtype=np.uint64)
    with pytest.raises(ValueError, match="nested"):
        Chain.build([np.array([True, False, False]), np.array([False, True, True])], ks)


def test_unwatermarked_texts_stay_at_their_level() -> None:
    """Under H0 (another key) the chain p-value is valid: P(p <= a) <= a, up to sampling noise."""
    ring = KeyRing(b"power-round-2-master-secret-0123")
    scheme = LexicalScheme(ring.master)
    rnd = random.Random(8)
    text = " ".join(ALL_TEXTS)
    ps = []
    for i in range(300):
        words = text.split(" ")
        rnd.shuffle(words)
        marked = scheme.embed(" ".join(words[:120]), ring.key(f"writer-{i}"))
        ps.append(scheme.score(marked, [ring.key(f"reader-{i}")]).p_value)
    for a in (0.05, 0.2, 0.5):
        assert sum(p <= a for p in ps) <= a * len(ps) + 3 * math.sqrt(a * len(ps))
