"""Review of table revision 2: readings the worked-step groups must refuse, and the revision views' family.

"since" before a number is a point in time far more often than a year or a clock time: a version ("since
3.6"), an hour ("since 5 pm", "since 9 o'clock"), a day ("since 5 May") or a clause ("since 3 people got
sick"). Likewise "N x M" after "so"/"then" is often a dimension ("so 3 x 3 filters"). Both groups therefore
need the number to be followed by an operator or a relation ("because 4 x 5 = 20", "so 4 x 5 = 20").
Also: "two times" after an adjective of order or in "think twice", "equals" as a noun, and the Bonferroni
family of a text whose revision-1 view is empty.
"""

from __future__ import annotations

import json
import random
from importlib import resources

import pytest

from tests.support.lexical import feed_in_pieces, slots
from watermark.keys import KeyRing
from watermark.lexical import LexicalScheme
from watermark.lexicon import Lexicon

NEW = {"because", "since", "twice", "two times", "equals", "is equal to", "x", "times"}


def new_slots(text: str) -> list[tuple[str, str]]:
    return [s for s in slots(text) if s[1] in NEW]


@pytest.mark.parametrize(
    "text",
    [
        # "since" + a number that is a point in time: "because" would change the meaning
        "Python has had f-strings since 3.6, so use them.",
        "This API has been deprecated since 2.0 and will be removed.",
        "The bug exists since 1.2.3 in every build.",
        "The store has been open since 9 o'clock this morning.",
        "She has been waiting since 5 pm yesterday.",
        "I have been awake since 4 in the morning.",
        "We have been married since 5 May last year.",
        "They have lived here since 12/05/2019 with us.",
        "The city has been inhabited since 500 BC at least.",
        "It's been two weeks since 3 people got sick.",
        "Prices have doubled since 2 new stores opened.",
        "The game has been tied since 2-2 at half time.",
        # "because" + a number that starts a clause: "since" would read as temporal
        "He has been sick because 2 of his kids were sick.",
        # "x" between dimensions after a word that usually introduces a product
        "The monitor is big, so 1920 x 1080 looks blurry on it.",
        "The layers are deep, so 3 x 3 filters are stacked.",
        "It was cut into a grid, so 8 x 8 squares remain.",
        "The frame is done, then 2 x 4 boards are added.",
        # the number ends a sentence: the "x" after it belongs to the next one
        "He has been here since 3. X marks the spot.",
        # "two times" as occasions after an adjective of order: "the next twice a customer calls" is wrong
        "The next two times a customer calls, answer politely.",
        "The past two times the team met, nothing happened.",
        "The previous two times the server crashed, we lost data.",
        "The same two times a week work for me.",
        # the idiom "think twice": "think two times the next time" is no English
        "You should think twice the next time you buy one.",
        "He thought twice a lot before answering.",
        # "equals" as a noun
        "He treated them as equals 100% of the time.",
        "She was first among equals 3 years in a row.",
    ],
)
def test_wrong_readings_are_no_slots(text: str) -> None:
    assert new_slots(text) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("It costs $20 because 10 x 2 = 20.", [("costs", "because"), ("because", "x")]),
        ("He left early, since 5 > 3.", [("early", "since")]),
        ("They used 10 tires because 2 times 5 equals 10.",
         [("tires", "because"), ("because", "times"), ("times", "equals")]),
        ("The total came to 18 because 3 x 6 is 18.", [("to", "because"), ("because", "x")]),
        ("He has 20 apples, so 4 x 5 = 20.", [("so", "x")]),
        ("So 2 x 3 x 4 = 24 in all.", [("so", "x")]),
        ("We get 6, since 2 + 4 = 6.", [("get", "since")]),
        ("The answer equals 2 x 3 x 4.", [("answer", "equals"), ("equals", "x")]),
    ],
)
def test_worked_steps_keep_their_slots(text: str, expected: list[tuple[str, str]]) -> None:
    assert new_slots(text) == expected
    assert expected


ROUND_TRIP = ("The price is $20 because 4 x 5 equals 20, and the cost is equal to 12 since 3 x 4 is equal to 12. "
              "He has twice as many, so 6 times 2 = 12, because 12 / 2 = 6.\n\n"
              "It has been open since 9 o'clock, since 2 x 5 = 10. Python has had it since 3.6, so 3 x 3 filters "
              "stay, because 3 x 3 = 9.")


def test_round_trip_when_the_relation_is_rewritten() -> None:
    """The relation after the number is itself a slot ("x" -> "times", "equals" -> "is equal to"): the
    embedder decides on the input, the detector on the output, so both readings must admit the slot."""
    ring = KeyRing(b"review-master-secret-0123456789", current=1)
    scheme = LexicalScheme(ring.master)
    unmarked = scheme.observe(ROUND_TRIP).size
    for i in range(16):
        key = ring.key(f"client-{i}")
        marked = scheme.embed(ROUND_TRIP, key)
        score = scheme.score(marked, [key])
        assert score.scored == unmarked and score.hits == score.scored, marked


@pytest.mark.parametrize("seed", range(8))
def test_streaming_equals_batch_around_the_guards(seed: int) -> None:
    text = ("It lasted since 1958, since 2 x 5 = 10. Since 3.6 it works because 3 times 4 equals 12 and "
            "it has been open since 9:30, so 4 X 5 = 20 is equal to 20 because 10 x 2 = 20. So 3 x 3 filters "
            "are used since 3.\nx marks it, because 4\nx 5 = 20, so 2 x 2\n= 4 and A equals 5 since 5 > 4")
    ring = KeyRing(b"review-master-secret-0123456789", current=1)
    scheme = LexicalScheme(ring.master)
    key = ring.key(f"client-{seed}")
    assert feed_in_pieces(scheme.embedder(key), text, random.Random(seed), 3) == scheme.embed(text, key)


def test_a_text_with_only_newer_slots_is_one_hypothesis_per_key() -> None:
    """With no slot of revision 1, the revision-1 view is empty: a test that can never reject, which must not
    double the Bonferroni family."""
    ring = KeyRing(b"review-master-secret-0123456789", current=1)
    scheme = LexicalScheme(ring.master)
    text = "Total: 20, because 4 x 5 = 20."
    obs = scheme.observe(text)
    assert obs.size > 0 and all(scheme._lex.groups[g].since == 2 for g in obs.groups.tolist())
    keys = [ring.key("a"), ring.key("b"), ring.key("c")]
    assert scheme.score(text, keys).family_size == len(keys)
    assert scheme.score("", keys).family_size == len(keys)


def test_revision_numbers_may_skip() -> None:
    """A table whose revisions are 1 and 3 scores like one with 1 and 2: the views are cut at the revisions
    the text has slots of, whatever their numbers."""
    text = resources.files("watermark.data").joinpath("lexicon.json").read_text(encoding="utf-8")
    table = json.loads(text)
    for g in table["groups"]:
        if g.get("since") == 2:
            g["since"] = 3
    skipped = Lexicon.from_json(table)
    assert skipped.revision == 3
    ring = KeyRing(b"review-master-secret-0123456789", current=1)
    key, keys = ring.key("a"), [ring.key("a"), ring.key("b")]
    doc = ("The cost is easy to see: it is 20, because 4 x 5 = 20, and you don't need more. However, it is "
           "not that simple, so 2 x 3 = 6 and we can't stop.")
    current, old_numbers = LexicalScheme(ring.master), LexicalScheme(ring.master, skipped)
    served = current.embed(doc, key)
    a, b = current.score(served, keys), old_numbers.score(served, keys)
    assert a.family_size == b.family_size == len(keys)  # one chain of nested revision views per key
    # equal up to rounding: the current table also has revision 3, which only adds a view that never crosses here
    assert (a.hits, a.scored) == (b.hits, b.scored) and a.log10_p_value == pytest.approx(b.log10_p_value, rel=1e-9)
