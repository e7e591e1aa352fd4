"""Segmentation: which words become choice points, and what is never touched (table-driven).

Each case runs the read-only scan and lists the slots found as (context, matched variant); a protected
region must yield none, and embedding must leave it byte-identical.
"""

from __future__ import annotations

import pytest

from tests.support.lexical import slots
from watermark.keys import KeyRing
from watermark.lexical import LexicalScheme
from watermark.lexicon import default_lexicon

LEX = default_lexicon()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("You do not need it.", [("you", "do not")]),
        ("You do\nnot need it.", [("you", "do not")]),  # a soft line break does not end a phrase
        ("You do\n\nnot need it.", []),  # a paragraph break does
        ("You do\n- not need it.", [("do", "-")]),  # so does a list item (whose marker is a choice)
        ("For example, it is fine.", [("", "for example"), ("example", "it is")]),
        ("Often it works.", [("", "often")]),
        ("I know who you are.", []),  # no contraction at the end of a clause
        ("Don't you think so?", []),  # no expansion before a subject: "Do not you" is wrong
        ("It's been a while.", [("", "it's been")]),  # 's = has before a participle: its own pair
        ("It's done.", []),  # "it is done" or "it has done": never a slot
        # "it is" never before "not": the negated copula is the slot (three-way since table revision 3)
        ("it is not here", [("", "it is not")]),
        ("a huge dog", []),  # "a enormous" would be wrong: mixed-initial groups never follow a/an
        ("the huge dog", [("the", "huge")]),
        ("However, we can.", [("", "however")]),
        ("However we try", []),  # the connective needs its comma
        ("It costs about 5 dollars", [("costs", "about")]),
        ("Talk about it", []),  # "about" only before a number
        ("to help you", []),  # "help you understand" -> "assist you understand" (review)
        ("the help desk", []),  # "help" only in verb position
        ("I think you are right", [("i", "think"), ("think", "you are")]),
        ("I think about it", []),
        ("dogs, but not cats", []),  # "but not" excluded
        ("cats, but dogs", []),  # but/yet is retired (a meaning review)
        # worked-arithmetic steps: 5-way, only after a step word and with a "work out" object
        ("First find the total cost.", [("first", "find the total")]),
        ("Then figure out how many are left.", [("", "then"), ("then", "figure out how")]),
        ("We need to calculate the number of apples.", [("we", "need to"), ("to", "calculate the number of")]),
        ("I find the total cost too high.", []),  # "find" = "consider": no step word before it
        ("You can find the price of tickets online.", []),  # "look up", not "calculate"
        ("to find how it works", []),  # only "how many/much/long/far/old"
        # ", which means" / ", meaning" only before a clause, never the noun "meaning"
        ("He bought 3 apples, which means he has 5 left.", [("he", "bought"), ("apples", "which means")]),
        ("The meaning of life, meaning and purpose.", []),
        # sentence-initial sums and assent; never the mid-sentence parenthetical
        ("In total, she spent 30 dollars.", [("", "in total")]),
        ("She stopped altogether, then left.", []),
        ("Of course, it depends.", [("", "of course")]),
        ("This is, of course, true.", []),
        ("To summarize, it works.", [("", "to summarize")]),
        # rates agree in article by sound: "an hour", "a unit" (never "a hour")
        ("She earns $20 an hour.", [("earns", "an hour")]),
        ("It costs $3 a unit.", [("costs", "a unit")]),
        ("She earns $20 a hour.", []),
        # "make sure"/"ensure" before a noun phrase too, never before "that" as a determiner
        ("Make sure the code runs.", [("", "make sure")]),
        ("make sure that button works.", []),
        # presenting what follows: 3-way at a sentence start, the contraction alone inside a sentence
        ("Below is a script:", [("", "below is")]),
        ("Here's a script:", [("", "here's")]),
        ("The problem here is that it fails.", [("problem", "here is")]),
        ("Here's to you!", []),
        ("Here is where it fails.", []),
        # additive openers: 5-way at a sentence start, 3-way as a parenthetical inside one
        ("Additionally, it works.", [("", "additionally")]),
        ("Also, we can.", [("", "also")]),
        ("It is cheap; moreover, it is fast.", [("", "it is"), ("cheap", "moreover"), ("moreover", "it is")]),
        ("We also know.", [("we", "also")]),
        # inside a sentence only after a clause break: "skilled in addition, subtraction, ..." is arithmetic
        ("Kids practice in addition, then subtraction.", []),
        ("Cheap and, moreover, fast.", [("and", "moreover")]),
        ("Cheap, and in addition, fast.", [("and", "in addition")]),
        # imperative "Let's" / "Let us" only at a sentence start and before a listed verb
        ("Let's break it down.", [("", "let's")]),
        ("Let us know if it works.", []),  # "allow us to know": never "Let's know"
        ("Please let us break it.", []),
        ("Let's see.", []),
        # ages and halves
        ("She is 5 years old.", [("", "she is"), ("is", "years old")]),
        ("The house is many years old.", []),  # only right after a number
        ("He ate half of the cake.", [("ate", "half of the")]),
        ("It took a half of the day.", []),
        ("Half of these will go home.", []),  # "these" as a pronoun: "Half these will go" is wrong
        ("When I was 7 years old. I tried.", [("was", "years old")]),
        ("the 10,000 year old, unspeakable horror", []),  # an adjective in a list, not a clause end
        ("My 3 year old brother jumped.", []),  # before a noun: "3 year of age brother" is wrong
        # a sum closing a clause right after a quantity; never "in all cases", never "stopped altogether"
        ("She spent $30 in total.", [("spent", "in total")]),
        ("I believe in all cases.", []),
        ("They stopped altogether.", []),
        ("Then add 5.", [("", "then")]),
        ("After that, add 5.", []),  # measured and not taken: "Then (by (3)) one must have" is no sequence
        # emphasis and title case are never rewritten (all capitals are: the whole phrase stays upper case)
        ("I do NOT want it.", []),
        ("Do Not Disturb", []),
        ("I DO NOT want it.", [("i", "do not")]),
        # a title-cased line: "Let us Break It Down" / "It is Time to Go" would break the casing
        ("**Let's Break It Down**", []),
        ("It's Time to Go", []),
        ("LET'S BREAK IT DOWN", [("", "let's")]),
        ("He would go.", [("", "he would")]),
        ("He'd gone home.", []),  # 'd = had before a participle
        ("You'd better hurry.", []),  # 'd = had: "you would better" is wrong
        # 'd / 's = had / has before an adverb and a participle: "I would never seen", "she is never seen"
        ("I'd never seen it.", []),
        ("She'd already left.", []),
        ("He'd just finished.", []),
        ("They'd always wanted it.", []),
        ("She's never seen it.", []),
        ("It's already been done.", []),
        ("There has been rain.", [("", "there has been")]),
        ("He paid $2 for each apple.", [("for", "each")]),
        ("Repeat for each in the list.", []),  # "each" as a pronoun: "for every in" is wrong
        # "half" as a noun after a determiner or a positional adjective: "the bottom half the page" is wrong
        ("The bottom half of the page is blank.", []),
        ("The remaining half of the money went to taxes.", []),
        ("The latter half of the year was slow.", []),
        ("Give this half of the cake to Tom.", []),
        ("My half of the bill is paid.", []),
        # "every" before a count or a frequency word: "each few minutes", "each 6 hours" are wrong
        ("Check every few minutes.", []),
        ("Water it every two weeks.", []),
        ("Take it every 6 hours.", []),
        ("Pay $1 for every 10 dollars spent.", []),
        ("He ate every last bite.", []),
        ("I visit every once in a while.", []),
        ("Use a for each loop here.", []),  # the programming construct: "a for every loop" is another thing
        # "each" as "apiece" after a quantity: "$2 every for adults", "$4 every = $8" are wrong
        ("Tickets are $2 each for adults.", []),
        ("He sold 5 hours each because he could.", []),
        ("He earns $4 each * 24 = $96.", []),
        ("Every second month Nina works.", []),  # "every other month", not "each second month"
        # "Let us" as "allow us to" before an object: "Let's call you back" changes who acts
        ("Let us call you back later.", []),
        ("Let us take care of it for you.", []),
        ("Let us walk you through it.", []),
        # 's = has after an adverb + a participle (the word after the adverb decides): "he is just left" is wrong
        ("He's just left.", []),
        ("That's always been true.", []),
        ("It's also become clear.", []),  # "also" after a copula is "too" (review)
        ("She's still got it.", []),
        ("He's just finished the report.", []),  # a regular "-ed" word: refused ("he's just finished" = has)
        ("It's also never worked.", []),  # a second adverb may precede a participle too
        ("That's just always been so.", []),
        ("It's really just paper.", [("", "it's"), ("it's", "really")]),
        ("He's *just* left.", []),  # emphasis markers do not hide the participle
        ("He's just tired.", [("", "he's")]),  # "is" + an adjective in "-ed"
        ("It's just a test.", [("", "it's")]),
        ("It's also fast.", [("", "it's")]),
        ("It's also, well, done.", [("", "it's")]),  # punctuation ends the look-ahead
        ("It's still running.", [("", "it's")]),
        ("She'd just finished.", []),  # 'd = had: 'd already refuses every adverb
        # "altogether" = "completely" after a number reached: "fell to 0 in total" is wrong
        ("It fell to 0 altogether.", []),
        ("Sales fell from 10 to 0 altogether.", []),
        ("It rose from 2 to 5 in all.", []),
        ("It stopped at 3 in total.", []),
        ("They stopped altogether.", []),
        ("Avoid it altogether.", []),
        ("It is a different thing altogether.", [("", "it is")]),
        ("She spent $30 in total.", [("spent", "in total")]),
        ("That makes 45 altogether.", [("makes", "altogether")]),
        ("It took 3 hours in all.", [("hours", "in all")]),
        # "half" after "in": "cut in half the time" is not "cut in half of the time"
        ("Cut it in half the long way.", []),
        ("It fits in half the space.", []),
        ("It takes half the time.", [("takes", "half the")]),
        # "each" as a pronoun before a verb: "every" cannot stand alone ("they also every sent")
        ("They also each sent a letter.", [("they", "also")]),
        ("They will each receive one.", [("", "they will")]),
        ("They ran (each appending a line).", []),
        ("Each sends a message.", []),
        ("Each went home.", []),
        ("Each student gets a book.", [("", "each")]),
        ("I check every morning.", [("check", "every")]),  # an "-ing" noun
        ("He saw each building.", [("saw", "each")]),
        ("Then each pod costs $1.", [("then", "each")]),  # "Then" only before a step verb
        ("Delete it for each matching file.", [("for", "each")]),  # a determiner after a preposition
        ("With each passing day it grew.", [("with", "each")]),
        ("Ship 20 bags, each weighing 60 pounds.", []),
    ],
)
def test_slots(text: str, expected: list[tuple[str, str]]) -> None:
    assert slots(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "```\nit is not often that you do not\n```",
        "~~~~python\n# it is often\n~~~~",
        "    it is often indented code",
        "\tit is often tab-indented",
        "use `it is often` here",
        "use ``it is ` often`` here",
        "see https://example.com/it-is/often and www.often.com",
        "mail often@example.com",
        "x_often often_x often-ish often/ok",
        "`unterminated it is often",
    ],
)
def test_protected_regions_have_no_slots(text: str) -> None:
    assert slots(text) == []


def test_numbers_are_never_changed_but_may_follow_a_slot() -> None:
    assert slots("it is 2pm, about 3.5 kg") == [("", "it is"), ("is", "about")]


def test_code_block_then_text() -> None:
    text = "```\nit is often\n```\nIt is often true.\n"
    assert slots(text) == [("", "it is"), ("is", "often")]


def test_fence_needs_matching_closer() -> None:
    text = "````\n```\nit is often\n````\nit is often\n"
    assert slots(text) == [("", "it is"), ("is", "often")]


def test_inline_code_ends_at_blank_line() -> None:
    assert slots("a `b\n\nit is often so") == [("a", "it is"), ("is", "often")]


def test_embedding_preserves_case_punctuation_and_protected_text() -> None:
    ring = KeyRing(b"0123456789abcdef0123")
    scheme = LexicalScheme(ring.master)
    text = ("**Do not** panic: IT IS FINE, \"for example\" (often).\n\n```py\ndo_not = 'it is'\n```\n"
            "    do not touch\nSee `do not` and https://x.org/do-not 42.\n")
    for client in ("a", "b", "c", "d", "e", "f"):
        out = scheme.embed(text, ring.key(client))
        assert out.count("```py\ndo_not = 'it is'\n```\n") == 1
        assert "    do not touch\n" in out and "`do not`" in out and "https://x.org/do-not 42." in out
        assert out.startswith("**Do not** panic") or out.startswith("**Don't** panic")
        assert "IT IS FINE," in out or "IT'S FINE," in out
        assert '"for example"' in out or '"for instance"' in out
        assert "(often)." in out or "(frequently)." in out


def test_emphasis_is_never_rewritten() -> None:
    ring = KeyRing(b"0123456789abcdef0123")
    scheme = LexicalScheme(ring.master)
    text = "I do NOT agree. It IS true. Do Not Disturb. You do not say."
    seen = set()
    for client in "abcdefgh":
        out = scheme.embed(text, ring.key(client))
        assert out.startswith("I do NOT agree. It IS true. Do Not Disturb. You ")
        seen.add(out)
    assert len(seen) == 2  # the unemphasised "do not" is still a choice


def test_curly_apostrophe_style_is_kept() -> None:
    ring = KeyRing(b"0123456789abcdef0123")
    scheme = LexicalScheme(ring.master)
    text = "I don’t know. You do not care. It is late now."
    outs = {scheme.embed(text, ring.key(str(i))) for i in range(20)}
    assert all("'" not in o for o in outs)  # once ’ is seen, new contractions use it
    assert any("don’t" not in o for o in outs) and any("do not care" not in o for o in outs)
