"""When a phrase the scanner found may be a choice point: the context guards of the lexical scheme.

``watermark.scanner`` finds each phrase of a ``Group`` in the text; these checks decide, from the words and
punctuation around it, whether every variant of the group reads the same there (``allowed`` and the
look-ahead checks), and whether the phrase's casing can be reproduced (``renderable``, ``in_title``,
``in_name``). Pure functions of the chunks the scanner has read, so embedding and detection, batch and
stream, decide alike.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from watermark.chunks import Chunk
from watermark.lexicon import ARTICLES, PARALLEL_REACH, Group

if TYPE_CHECKING:
    from watermark.scan_state import ScanState

MARKUP = "*_"
SENTENCE_END = frozenset(".!?:\n")
# Punctuation that closes a clause for ``before_punct`` groups. Not the comma: "the 10,000 year old, unspeakable
# horror" is an adjective in a list, where "year of age" would be wrong.
CLAUSE_END = (".", ";", ":", "!", "?")
# What may come right before an ``after_break`` group: a clause break, or a conjunction that opens a clause.
BREAK_CHARS = frozenset(",;—–")
BREAK_WORDS = frozenset({"and", "but", "or", "yet"})  # not "so": a slot of its own (so|therefore)
# a sentence end: repeated words on either side of it are no anaphora ("in each group. So each group takes")
PARALLEL_BREAK = frozenset(".!?:;")

# The word after a comma that closes a sentence-initial phrase, read through the comma against the group's
# ``next_not``: openers of a discourse "So," ("So, I don't have any evidence", "So, let's get started", "So, how
# do you ...") that never follow an inferential "Therefore,". Not "you", "if", "in", "when", "to" ("Therefore,
# you will pay $24", "Thus, in total", "Thus, if both work 20 hours"). Every variant's first word of a group that
# starts with one of these is listed too ("I'm"/"I am", "let's"/"let us"), so the detector, reading the variant
# the embedder wrote, reaches the same decision.
COMMA_DISCOURSE_NEXT = frozenset(str.split(
    "i i'm i'd i'll i've let let's how how's why well okay ok yeah um uh anyway anyhow please sorry yes"))


def renderable(part: list[Chunk]) -> bool:
    """Whether the phrase's capitalisation is one ``slots.render`` reproduces for every variant: all lower case,
    a capital first letter, or all capitals. A phrase with an emphasised word ("I do NOT", "it IS") or a
    title-cased heading ("Do Not Disturb") is not a slot: changing it would lose the emphasis or the casing."""
    letters = [ch for c in part for ch in c.word if ch.isalpha()]
    if len(letters) > 1 and all(ch.isupper() for ch in letters):
        return True
    if len(letters) == 1 and letters[0].isupper() and letters[0] != "I":
        return False  # one capital letter is a symbol or a name ("4 X 5", "matrix A"), not a capitalised word
    for i, c in enumerate(part):
        w = c.word
        rest = w[1:] if i == 0 or w == "I" or w.startswith(("I'", "I’")) else w
        if rest != rest.lower():
            return False
    return True


def in_title(grp: Group, part: list[Chunk], nxt: Chunk | None) -> bool:
    """Whether a capitalised phrase runs on into a capitalised word ("Let's Break It Down", "It's Time to
    Go"): a title, whose casing a variant with another number of words ("Let us", "It is") would break, since
    only the first letter of a rendered phrase is capitalised. All capitals render as such and are kept."""
    if len({len(v) for v in grp.variants}) == 1 or nxt is None or part[-1].trail:
        return False
    first = part[0].word
    if not (first[:1].isupper() and nxt.word[:1].isupper()) or first == "I" or first.startswith(("I'", "I’")):
        return False
    letters = [ch for c in (*part, nxt) for ch in c.word if ch.isalpha()]
    return not all(ch.isupper() for ch in letters)


def in_name(grp: Group, part: list[Chunk], nxt: Chunk | None, last_char: str) -> bool:
    """Whether a capitalised phrase inside a sentence runs on into a capitalised word: a name or a title ("the
    attention of Big Brother", "The Unique Shapes Of Each Letter Can Help"), where a synonym ("Large Brother")
    changes the name. Only for groups that read the next word anyway (``needs_next``), so that a phrase is decided
    from the same chunks however the text is streamed; all capitals and the pronoun "I" are kept."""
    if not grp.needs_next or nxt is None or part[-1].trail or last_char in SENTENCE_END:
        return False
    first = part[0].word
    if not (first[:1].isupper() and nxt.word[:1].isupper()) or first == "I" or first.startswith(("I'", "I’")):
        return False
    if nxt.word == "I" or nxt.word.startswith(("I'", "I’")):
        return False
    letters = [ch for c in (*part, nxt) for ch in c.word if ch.isalpha()]
    return not all(ch.isupper() for ch in letters)


def code_statement(chunk: str) -> bool:
    """Whether the chunk after a phrase ends a code statement outside a code block: a C#/C++ directive such as
    "using System.IO;", "using UnityEngine;", "using namespace std;" (answers that set code off with rules instead
    of fences), where "utilizing System.IO;" would break the code. A qualified name or a capitalised name right
    before the ";"; prose rarely puts either there."""
    if not chunk.endswith(";"):
        return False
    body = chunk[:-1]
    return "." in body or "::" in body or body[:1].isupper() or body in ("std", "namespace")


def clause_start(st: ScanState) -> bool:
    """Whether the next word opens a clause: the start of a sentence or line, after ; or a dash, or right after
    and/but/or/yet. Not after a comma: a connective set off inside a clause contrasts its topic ("Fusion
    reactions, however, combine light atoms", "Most people prefer smoking it, however, because ..."), which
    "nonetheless" does not."""
    return (st.last_char in SENTENCE_END or (st.last_char in BREAK_CHARS and st.last_char != ",")
            or (st.prev in BREAK_WORDS and st.last_char.isalpha()))


def allowed(grp: Group, st: ScanState, part: list[Chunk], nxt: Chunk | None) -> bool:
    prev, last_char = st.prev, st.last_char
    if prev in grp.prev_not or (grp.mixed_initial and prev in ARTICLES):
        return False
    if grp.sentence_start is not None and grp.sentence_start != (last_char in SENTENCE_END):
        return False
    # the quantity must come right before, in the same clause: "four weeks. A bottle is two half bottles" and "a
    # pear costs $90, an orange costs $30" hold no rate ("Per bottle is", "per orange costs" are wrong)
    if grp.after_quantity and (not (st.last_number or prev in grp.quantities) or last_char in CLAUSE_END
                               or last_char == ","):
        return False
    # the listed word must come directly before, in the same clause; in a group that follows a number it is the
    # last word before that number ("because 4 x 5": the word that makes the "x" a product)
    if grp.prev_in and (prev not in grp.prev_in or part[0].lead
                        or not (last_char.isalpha() or (grp.after_quantity and st.last_number))):
        return False
    if grp.after_comma and (last_char != "," or part[0].lead):
        return False
    if grp.after_break and not (last_char in BREAK_CHARS or (prev in BREAK_WORDS and last_char.isalpha())):
        return False
    # a connective before a comma opens a clause; right after a plain word the phrase is something else: an
    # ordinal or an adverb ("per second, there are", "than the second, which", "burn the underbrush first, and"),
    # an adjective ("Working in short, focused intervals"), a degree adverb ("vary significantly, depending")
    if grp.comma_after and grp.sentence_start is None and not clause_start(st):
        return False
    last = part[-1]
    trail = last.trail.lstrip(MARKUP)
    if grp.comma_after and not trail.startswith(","):
        return False
    if grp.before_punct and not trail.startswith(CLAUSE_END):
        return False
    if grp.need_next_word and (trail or nxt is None):
        return False
    if grp.next_number and (trail or nxt is None or not nxt.number):
        return False
    if grp.next_word_only and (trail or nxt is None or not nxt.word):
        return False
    nw = nxt.low if nxt is not None and not trail else ""
    if grp.next_in and nw not in grp.next_in:
        return False
    if nw and nw in grp.next_not:
        return False
    if (grp.sentence_start and not grp.comma_after and trail.startswith(",") and nxt is not None
            and nxt.low in COMMA_DISCOURSE_NEXT and nxt.low in grp.next_not):
        return False
    # narrative "So he took the kid to the park" (no number read in the paragraph); read through a comma too
    if (grp.next_needs_number and not st.para_number and nxt is not None and (not trail or trail.startswith(","))
            and nxt.low in grp.next_needs_number):
        return False
    if (grp.next_not_suffix and nw.endswith(grp.next_not_suffix) and nw not in grp.suffix_nouns
            and not (prev in grp.suffix_prev_ok and last_char.isalpha() and not part[0].lead)):
        return False
    return not (grp.next_not_participle and nw and (nw in grp.next_not_participle or nw.endswith("ed")))


def has_reading(grp: Group, part: list[Chunk], after: list[Chunk]) -> bool:
    """Whether 's may mean "has" here: an adverb, then a participle or another adverb ("he's just left", "it's
    also become clear", "that's always been true", "it's still never worked"). The word after the adverb is read
    once it has arrived (the scanner holds the phrase until then); at the end of the text or paragraph, or after
    punctuation, nothing follows and 's is "is"."""
    if len(after) < 2 or part[-1].trail.strip(MARKUP) or after[0].trail.strip(MARKUP):
        return False
    if after[0].low not in grp.adverb_lookahead:
        return False
    w = after[1].low
    if not w or after[1].lead.strip(MARKUP):
        return False
    if w in grp.adverb_participles or w in grp.adverb_chain:
        return True
    return w.endswith("ed") and w not in grp.adverb_adjectives


def parallel_follows(grp: Group, s: str, after: list[Chunk]) -> bool:
    """Whether a word of the group comes again within ``PARALLEL_REACH`` chunks after the phrase's next word, in
    the same sentence ("Every smile, every laugh", "every day and every night")."""
    for prev, c in itertools.pairwise(after[: 1 + PARALLEL_REACH]):
        if s[prev.end - 1] in PARALLEL_BREAK:
            return False
        if c.low in grp.parallel:
            return True
    return False


def relation_follows(grp: Group, s: str, after: list[Chunk]) -> bool:
    """Whether the number after the phrase is followed, in the same sentence, by one of the group's relations
    ("because 4 x 5", "4 x 5 = 20"); the relation is matched as the whole chunk ("X" and "x", not "x,")."""
    if len(after) < 2 or s[after[0].end - 1] in ",.;:!?":
        return False
    rel = after[1]
    return s[rel.start : rel.end].lower().replace("’", "'") in grp.next_relation
