"""The worked-solution groups (because/since, twice, equals, x/times): what each guard admits and refuses.

Table-driven like ``test_scanner.py``: each case lists every slot the read-only scan finds as (context, matched
variant), so a case fails both when a guard lets a wrong reading through and when it refuses a good one.
The round-trip test checks that the embedder and the detector see the same slots when these groups change
the words that other slots read as their context.
"""

from __future__ import annotations

import random

import pytest

from tests.support.lexical import feed_in_pieces, slots
from watermark.keys import KeyRing
from watermark.lexical import LexicalScheme
from watermark.lexicon import default_lexicon
from watermark.slots import _DATE

LEX = default_lexicon()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # because / since before a number: a reason given by an equation or a quantity
        ("It costs $20 because 10 x 2 = 20.", [("costs", "because"), ("because", "x")]),
        ("He left early, since 5 > 3.", [("early", "since")]),
        ("It uses (3 x 2) because (3 x 2) = 6.", [("x", "because"), ("because", "x")]),
        # ... never before a point in time, where "since" is temporal
        ("He has lived there since 1958.", []),
        ("He has lived there since 1990s.", []),
        ("The shop has been open since 9:30 today.", []),
        ("It has been raining since 9am today.", [("", "it has been")]),
        ("She has played since 2nd grade.", []),
        # ... never where only "because" fits ("This is since" is wrong), or after "ever"
        ("This is because 4 x 5 = 20.", [("because", "x")]),
        ("It was not because 4 of them left.", [("it", "was not")]),
        ("They were here ever since 3 of them came.", []),
        # ... never opening a sentence ("Because ..., then" is not idiomatic), never before a word
        ("Since 1 foot is 12 inches, the rope is 48 inches long.", []),
        ("They stayed because he asked.", []),
        # twice / two times: a multiple
        ("She has twice as many apples.", [("has", "twice")]),
        ("It costs two times the price.", [("costs", "two times")]),
        ("He eats twice a day.", [("eats", "twice"), ("twice", "a day")]),
        # ... never a count of occasions or a range
        ("I went there two times last year.", []),
        ("It was one of the two times I went.", []),
        ("Take one or two times a day.", [("times", "a day")]),
        ("Think twice about it.", []),
        ("It is thirty two times the size.", [("", "it is")]),
        # equals / is equal to before a number
        ("The total equals 12 apples.", [("total", "equals")]),
        ("A dozen is equal to 12.", [("dozen", "is equal to")]),
        # ... not where "it is" / "that is" is a slot of its own, nor after an adverb, nor before a word
        ("It equals 12.", []),
        ("It is equal to 12.", [("", "it is")]),
        ("That is equal to 12.", [("", "that is")]),
        ("This also equals 12.", [("this", "also")]),
        ("The two sides are equal to each other.", [("to", "each other")]),
        ("The total is equal to or greater than 12.", []),
        # x / times between two numbers, after a word that introduces a calculation
        ("He has 20 apples, so 4 x 5 = 20.", [("so", "x")]),
        ("They used 10 tires because 2 times 5 equals 10.",
         [("tires", "because"), ("because", "times"), ("times", "equals")]),
        # ... never a dimension or a resolution, where "x" reads "by"
        ("She bought the 2 x 4s for $100.", [("she", "bought")]),
        ("Buy a Full HD (1920 x 1080) screen.", []),
        ("The room is 10 x 12 feet.", []),
        ("He solved it because x = 5.", []),
        ("She ate 20 because 4 X 5 = 20.", [("ate", "because")]),  # "4 Times 5" would be wrong
    ],
)
def test_worked_step_slots(text: str, expected: list[tuple[str, str]]) -> None:
    assert slots(text) == expected


@pytest.mark.parametrize(
    ("chunk", "is_date"),
    [("1958", True), ("1958,", True), ("1990s", True), ("1990's", True), ("(2010)", True), ("2019/20", True),
     ("5th", True), ("21st", True), ("2nd,", True), ("9:30", True), ("9am", True), ("10.30pm", True),
     ("9:30am.", True), ("9a.m.", True), ("4/7", False), ("2,000", False), ("12", False), ("$2000", False),
     ("80%", False), ("3.5", False), ("(4", False), ("3:2", False), ("12345", False), ("5amps", False)],
)
def test_date_numbers(chunk: str, is_date: bool) -> None:
    assert (_DATE.match(chunk, 0, len(chunk)) is not None) == is_date


def test_round_trip_through_the_new_groups() -> None:
    """Embedding rewrites "because"/"x"/"equals"/"twice", which later slots read as their context; the
    detector must find exactly the slots the embedder chose, every one a hit, for any key."""
    text = ("He drinks 20 ounces of water a day because 4 x 5 = 20. Jenna has twice as much money as Phil, "
            "since 2 times 10 equals 20. The 200 quarters is equal to $50 because 200 x 0.25 = 50.\n\n"
            "The lake is 20 miles across since 2 x 10 = 20, and each boat costs $5 because 5 x 1 = 5.")
    ring = KeyRing(b"test-master-secret-0123456789", current=1)
    scheme = LexicalScheme(ring.master)
    unmarked = scheme.observe(text).size
    changed = 0
    for i in range(12):
        key = ring.key(f"client-{i}")
        marked = scheme.embed(text, key)
        changed += marked != text
        score = scheme.score(marked, [key])
        assert score.scored == unmarked and score.hits == score.scored
    assert changed >= 10


@pytest.mark.parametrize("seed", range(6))
def test_streaming_equals_batch_on_worked_steps(seed: int) -> None:
    """The date guard and the product rule read the number after the slot: a delta that splits "1958" or
    "9:30" must not let the phrase be decided early."""
    text = ("It lasted since 1958, since 2 x 5 = 10. She has twice as many because 3 times 4 equals 12 and "
            "it has been open since 9:30 today, so 4 x 5 = 20 is equal to 20 because 10 x 2 = 20.")
    ring = KeyRing(b"test-master-secret-0123456789", current=1)
    scheme = LexicalScheme(ring.master)
    key = ring.key(f"client-{seed}")
    rnd = random.Random(seed)
    assert feed_in_pieces(scheme.embedder(key), text, rnd, 4) == scheme.embed(text, key)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The library provides a simple API.", [("library", "provides")]),
        ("It offers an easy way out.", [("it", "offers")]),
        # a recipient and "with" follow: "offers you with tools" would be wrong
        ("It provides you with tools.", []),
        ("It provides users with tools.", []),
        ("It provides the team with support.", []),
        # "offers to help" is no "provides to help"
        ("He offers to pay.", []),
    ],
)
def test_provides_offers_never_before_a_recipient(text: str, expected: list[tuple[str, str]]) -> None:
    assert [s for s in slots(text) if s[1] in ("provides", "offers")] == expected
