"""Which phrase the scanner found is a slot, and how the chosen variant is written: the lexical scheme's
choice points within ``Scanner.run``.

``decided`` tells whether the chunks read so far settle every candidate starting at a word (else the scanner
holds the phrase until more text arrives: streaming equals batch); ``match`` picks the first candidate, longest
first, that the context guards (``watermark.guards``) allow; ``render`` writes a variant in the phrase's own
casing and apostrophe. Pure functions of the lexicon, the scan state and the chunks read.
"""

from __future__ import annotations

import re

from watermark import language
from watermark.chunks import Chunk
from watermark.guards import (
    allowed,
    code_statement,
    has_reading,
    in_name,
    in_title,
    parallel_follows,
    relation_follows,
    renderable,
)
from watermark.lexicon import PARALLEL_REACH, Candidate, Group, Lexicon
from watermark.scan_state import ScanState

# A number that may be a point in time, for ``Group.next_not_date``: a year ("1958", "1990s", "2019/20"), an
# ordinal ("5th grade", "1st of May") or a clock time ("9:30", "9am", "10.30pm"). Fractions, sums and amounts
# ("4/7", "2,000", "80%") are no dates; a 4-digit amount is refused with the years, on the safe side.
_DATE = re.compile(r"[(\[~]*(?:[12][0-9]{3}(?![0-9])|[0-9]+(?:st|nd|rd|th)\b|[0-9]{1,2}(?::[0-5][0-9])+"
                   r"|[0-9]{1,2}(?:[.:][0-5][0-9])?[ap]\.?m\b)", re.IGNORECASE)


def decided(lex: Lexicon, seq: list[Chunk]) -> bool:
    """Whether the complete chunks read so far decide every candidate: all but the word after an adverb
    have arrived, and no phrase is followed by an adverb whose next word may make 's "has". What this
    leaves unread is never consulted (``has_reading`` reads past an adverb only), so the outcome is the
    one-piece outcome."""
    low = seq[0].low
    if len(seq) - 1 < lex.base_lookahead[low] and len(seq) - 1 < _still_needed(lex, seq):
        return False
    for cand in lex.by_first[low]:
        m = len(cand.words)
        adverbs = lex.groups[cand.group].adverb_lookahead
        if adverbs and len(seq) > m and seq[m].low in adverbs:
            return False
    return True


def _still_needed(lex: Lexicon, seq: list[Chunk]) -> int:
    """The chunks after the first that the candidates still possible after ``seq`` need: a longer phrase
    whose words the chunks read so far already contradict ("it is nice": not "it is not") needs none, so
    the shorter ones are decided as soon as their own look-ahead has arrived."""
    need = 0
    for cand in lex.by_first[seq[0].low]:
        words = cand.words
        if any(seq[k].low != words[k] for k in range(1, min(len(words), len(seq)))):
            continue
        grp = lex.groups[cand.group]
        need = max(need, len(words) - 1 + (1 if grp.needs_next else 0) + (1 if grp.next_relation else 0)
                   + (PARALLEL_REACH if grp.parallel else 0))
    return need


def match(lex: Lexicon, max_level: int, st: ScanState, s: str, seq: list[Chunk]
          ) -> tuple[Candidate, Group, list[Chunk]] | None:
    """The first candidate phrase (longest first) that starts ``seq`` and is a slot here: its group is within
    ``max_level``, its words are ``seq``'s with no punctuation inside, and every guard passes (casing it can
    reproduce, not in a title or a name, not before code or a date where the group says so, the relation or
    reading the group needs, no parallel word near). None in a foreign-language stretch."""
    if language.foreign(st.lang):
        return None
    for cand in lex.by_first[seq[0].low]:
        grp = lex.groups[cand.group]
        m = len(cand.words)
        if grp.level > max_level or len(seq) < m:
            continue
        part = seq[:m]
        if tuple(c.low for c in part) != cand.words:
            continue
        if m > 1 and (part[0].trail or part[-1].lead or any(c.lead or c.trail for c in part[1:-1])):
            continue
        nxt = seq[m] if len(seq) > m else None
        if (not renderable(part) or in_title(grp, part, nxt) or in_name(grp, part, nxt, st.last_char)
                or (grp.needs_next and nxt is not None and code_statement(s[nxt.start : nxt.end]))
                or not allowed(grp, st, part, nxt)):
            continue
        if grp.next_not_date and nxt is not None and _DATE.match(s, nxt.start, nxt.end):
            continue
        if grp.next_relation and not relation_follows(grp, s, seq[m:]):
            continue
        if grp.adverb_lookahead and has_reading(grp, part, seq[m:]):
            continue
        if grp.parallel and (st.parallel_gap <= PARALLEL_REACH or parallel_follows(grp, s, seq[m:])):
            continue
        return cand, grp, part
    return None


def render(grp: Group, chosen: int, part: list[Chunk], apostrophe: str) -> str:
    """The chosen variant written as the phrase was: its case pattern (all capitals, a capital first letter)
    and its apostrophe (the phrase's own, else the text's style so far)."""
    text = grp.display[chosen]
    letters = "".join(c.word for c in part)
    alpha = [ch for ch in letters if ch.isalpha()]
    if len(alpha) > 1 and all(ch.isupper() for ch in alpha):
        text = text.upper()
    elif part[0].word[0].isupper():
        text = text[0].upper() + text[1:]
    apos = "’" if any("’" in c.word for c in part) else apostrophe
    return text.replace("'", apos) if apos != "'" else text
