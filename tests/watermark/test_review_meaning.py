"""Meaning-and-grammar review of the substitutions on real text (tune split, 2026-11-26): each defect found.

Every case below is a sentence (or its pattern) read in a watermarked tune-split answer where the substitution
changed the meaning or broke the grammar, e.g. "Suppose λ = 3. Then D_KL = ..." -> "Next D_KL = ...", "I can help
you understand" -> "I can aid you understand", "subtract 80 from each side" -> "every side", "that is also fine" ->
"that is additionally fine", "per second, there are" -> "per secondly, there are", "the attention of Big Brother" ->
"Large Brother". The fix is always a guard on the context (group ids, variants and revisions unchanged); each
case asserts the phrase is no longer a slot, and a control asserts the group still works where it is safe.
"""

from __future__ import annotations

import random

import pytest

from tests.support.lexical import feed_in_pieces, slots
from watermark.keys import KeyRing
from watermark.lexical import LexicalScheme
from watermark.mix import choose, tuple_hash


def variants(text: str, level: int = 2) -> list[str]:
    return [v for _, v in slots(text, level)]


# (text, variant of the defective slot that must not be found)
REFUSED = [
    # "So" as a discourse marker in conversation: "Therefore let me know", "Hence, I do sometimes reflect"
    ("It sounds hard. So let me know if this makes sense.", "so"),
    ("I see. So maybe you're saying they should go back.", "so"),
    ("I hear you. So if I were you, I would talk to her first.", "so"),
    ("That was odd. So why did he leave the party?", "so"),
    # sentence-initial "Then" as a consequence: "Next D_KL = ...", "Next, we can find ε" misread it as a step
    ("Suppose that λ = 3 and μ = 4. Then D_KL = 3 · log(3/4) + 1.", "then"),
    ("Suppose, for the sake of contradiction, that b0 > b'. Then, we can find a positive ϵ.", "then"),
    ("Let x be the number of dolls. Then, 2 dolls equals an increase of 25%.", "then"),
    ("The bank replaced the tellers with machines. Then the tellers went to work elsewhere.", "then"),
    # "every" for one of a pair
    ("Subtracting 80 from each side of the equation, we see that x = 163.", "each"),
    ("He needs 1 contact for each eye and he has 180 contacts.", "each"),
    ("As each parent received an equal amount, she spent $60.", "each"),
    ("Her every word, smile, and gesture conjured a spell.", "every"),
    ("It rains almost every day in the spring.", "every"),
    ("Not every student passed the exam.", "every"),
    ("The campaign promises that even every friendly tavern hides secrets.", "every"),
    # the optative "may", and the second half of "may or may not"
    ("Goodbye, and may wisdom guide you from the darkness.", "may"),
    ("Goodbye, and may your days be bright.", "may"),
    # "also" meaning "too" after a copula: "that is additionally fine"
    ("Some people like to express it, and that is also fine.", "also"),
    ("Given the prior, the posterior for μ is also normal.", "also"),
    ("This is also the number of points she got.", "also"),
    ("However, it's also likely that the police won't search you.", "also"),
    ("I'm also worried that you might use my help.", "also"),
    ("It is not just the work of feeding a baby, but also the work of understanding a child.", "also"),
    # the noun "need": "the constant have to tell oneself", "a have to"
    ("The illusion is kept alive by the constant need to tell oneself that it is real.", "need to"),
    ("There is a need to protect the data.", "need to"),
    # "a few" as a pronoun: "but a number of might have side effects"
    ("Most people would be unaffected, but a few might have side effects.", "a few"),
    ("Several were lost in the move.", "several"),
    ("There are lots of ways to catch a cold, but many involve contact with a germ.", "many"),
    ("Many believe that the story is true.", "many"),
    # "help" + bare infinitive: "assist you understand", "aid improve", "assists prevent", "helped avert"
    ("I am happy to help you understand and work through this.", "help"),
    ("This can help the model learn more robust representations.", "help"),
    ("Comparing the images can help improve diagnostic accuracy.", "help"),
    ("Regular exercise helps prevent heart disease.", "helps"),
    ("Quick action helped avert a crisis.", "helped"),
    ("She is helping you learn the basics.", "helping"),
    ("Let me know how I can help, there are many tasks.", "help"),
    # predicative "specific" (precise) -> "particular" (fussy)
    ("If you can be more specific, I might be able to help you.", "specific"),
    ("Please be specific about the dates you need.", "specific"),
    # manner "normally" -> "usually"
    ("Those who are still able to function normally, like most people in their 80s.", "normally"),
    ("After the update the app works normally on Linux again.", "normally"),
    # "start" with an object (launch, found): "begin the Visual LISP Editor", "began the Festival Theatre"
    ("Open AutoCAD and start the Visual LISP Editor by typing VLIDE.", "start"),
    ("In 1869, he started the Festival Theatre in Bayreuth.", "started"),
    ("The script starts the server and waits.", "starts"),
    # a comma connective right after a plain word is an ordinal, an adverb or an adjective, not a connective
    ("With a speed of 20 kb per second, there are 1200 kb per minute.", "second"),
    ("She scored less in the first semester than the second, which is 30.", "second"),
    ("Use a match to burn the underbrush first, and this will create a fire.", "first"),
    ("Working in short, focused intervals increases productivity.", "in short"),
    ("Fusion reactions, however, combine light atoms to make heavier ones.", "however"),
    ("Most people prefer smoking it, however, because it is more convenient.", "however"),
    ("The cost will vary significantly, depending on the task.", "significantly"),
    ("A check verifies that its first, second, third, and fifth terms match.", "third"),
    ("A check verifies that its first, second, third, and fifth terms match.", "second"),
    # a rate right after a number, in the same clause only: "Per bottle is two half bottles", "per orange costs"
    ("She drinks 28 half bottles in four weeks. A bottle is two half bottles.", "a bottle"),
    ("If an apple and a pear is $120, and a pear costs $90, an orange costs $30.", "an orange"),
    # "no one" before a noun ("not a single")
    ("There is no one answer to why people behave the way they do.", "no one"),
    # the variable name "hi"
    ("It merges a from lo to mid and from mid to hi, respectively.", "hi"),
    # a name or title inside a sentence
    ("The novel explores the attention of Big Brother in a surveillance state.", "big"),
    ("The Unique Shapes Of Each Letter Can Help Prevent Confusion.", "help"),
    ("Keep in mind that running a large language model locally is costly.", "large"),
    ("It covers Java in big data and machine learning.", "big"),
    # "use" + an amount is "consume": "will employ 30 gallons of water"
    ("The three regular washes will use 10 * 3 = 30 gallons of water.", "use"),
    # a C#/C++ directive outside a code block: "utilizing System.IO;" breaks the code
    ("Example:\nusing System;\nusing System.Collections.Generic;\nusing UnityEngine;\n", "using"),
    ("#include <vector>\nusing namespace std;\n", "using"),
    # "Here's why" -> "Below is why"
    ("That does not follow. Here's why: the map is not onto.", "here's"),
    # "but" that "yet" cannot carry
    ("There are many reasons, but if you are starting out, focus on one.", "but"),
    ("You could talk to them, but otherwise I think you will look bad.", "but"),
    ("It may rain later, but for now the sky is clear.", "but"),
    ("Fields, like all things in life, have their own quirks.", "like"),
    ("The old radio behaves oddly, like a broken clock.", "like"),
    # strong tier (level 2): "vary importantly", "display the guests", "instantly after", "eventually comes down",
    # "whose extremely livelihood"
    ("The time to fine tune a model will vary significantly depending on the task.", "significantly"),
    ("Couples who did this had significantly less painful labors.", "significantly"),
    ("It is good to have pictures of the party to show the guests if needed.", "show"),
    ("The huge pit is the long gap immediately after the enemy platform.", "immediately"),
    ("Both have their strengths and it ultimately comes down to personal preference.", "ultimately"),
    ("Influencers whose very livelihood depends on the allure of fame.", "very"),
]


@pytest.mark.parametrize(("text", "variant"), REFUSED)
def test_defective_reading_is_no_slot(text: str, variant: str) -> None:
    assert variant not in variants(text)


# (text, variant that must stay a slot): the guards keep each group where it is safe
KEPT = [
    ("The total is 5 + 3 = 8. So the answer is 8.", "so"),
    ("Then find the total number of stitches: 800 + 540 = 1340.", "then"),
    ("In the second store, each apple costs $0.4.", "each"),
    ("You may need to manually update its drivers.", "may"),
    ("You can also use the from keyword to import items.", "also"),
    ("Here are a few tips for the trip.", "a few"),
    ("There are many different kinds of pranks.", "many"),
    ("I can help with that if you like.", "help"),
    ("It depends on your specific strategy and card choices.", "specific"),
    ("The garbage collector is usually good enough.", "usually"),
    ("You might want to start with the resume project.", "start"),
    ("He started to cry when he heard it.", "started"),
    ("First, find the total amount of stuffing.", "first"),
    ("This is fine. Second, check the screen.", "second"),
    ("The answer is simple; finally, subtract the cost.", "finally"),
    ("It is complex. However, I can provide a simple example.", "however"),
    ("Add the costs, and finally, subtract the discount.", "finally"),
    ("Wait for a moment when no one is around.", "no one"),
    ("Customer: Hi, Joe. I was hoping you could help.", "hi"),
    ("He lives in a big house near the park.", "big"),
    ("You can use the library in combination with Beautiful Soup.", "use"),
    ("I am using Python for this; it works.", "using"),
    ("The gas is $3.00 a gallon and they buy 10 gallons.", "a gallon"),
    ("He gets 5 miles per gallon because 20 / 4 = 5.", "per gallon"),
    ("Here's a script that does it:", "here's"),
    ("Significantly, the study found no effect at all.", "significantly"),
    ("The viewer will display documents by date.", "display"),
]


@pytest.mark.parametrize(("text", "variant"), KEPT)
def test_safe_reading_stays_a_slot(text: str, variant: str) -> None:
    assert variant in variants(text)


def test_copula_guard_reads_both_contraction_variants() -> None:
    # the word before "also" may be a contraction slot's variant: "it is" ends in "is", "it's" is itself listed,
    # so whichever the embedder wrote, the detector refuses the same "also"
    for text in ("It is also fast.", "It's also fast.", "It’s also fast.", "They are also here.",
                 "They're also here."):
        assert "also" not in variants(text)


def test_guarded_text_streams_like_batch() -> None:
    """The new name guard reads the word after the phrase: streamed in random pieces the output is the batch
    output, and the detector sees every slot the embedder wrote as a hit."""
    ring = KeyRing(b"review-meaning-master-secret-0123")
    scheme = LexicalScheme(ring.master)
    text = " ".join(t for t, _ in REFUSED + KEPT)
    rnd = random.Random(5)
    for client in range(4):
        key = ring.key(f"client-{client}")
        whole = scheme.embed(text, key)
        for _ in range(5):
            assert feed_in_pieces(scheme.embedder(key), text, rnd, 9) == whole
        obs = scheme.observe(whole)
        groups = [scheme._lex.groups[g] for g in obs.groups.tolist()]
        assert len(groups) > 20
        assert all(choose(tuple_hash(scheme._base(key.version), c, g.gid), key.seed64, g.k) == o
                   for c, g, o in zip(obs.contexts, groups, obs.observed.tolist(), strict=True) if g.level <= 1)


def test_a_retired_group_is_never_a_slot_but_keeps_its_place() -> None:
    """but/yet is retired: still in the table (ids, indices and revisions unchanged), never matched again, not
    even where "yet" would have been right ("It is slow, but it works.")."""
    import json
    from importlib import resources

    from tests.support.lexical import slots
    from watermark.lexicon import default_lexicon

    table = json.loads(resources.files("watermark").joinpath("data/lexicon.json").read_text(encoding="utf-8"))
    retired = [g for g in table["groups"] if g.get("retired")]
    assert [g["id"] for g in retired] == ["but|yet"]
    assert "but|yet" in [g.gid for g in default_lexicon().groups]
    found = slots("I tried, but it failed. He came, yet he left. The car is slow, but it works.")
    assert not [v for _, v in found if v in ("but", "yet")], found
