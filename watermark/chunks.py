"""Whitespace-delimited chunks of text and the plain words inside them (the scanner's unit of reading).

A chunk is "plain" when it is opening marks + a word (letters with inner apostrophes) + closing marks; anything
else (numbers, URLs, e-mail addresses, identifiers, hyphenated words, markup with symbols) is never a slot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A plain chunk: opening marks, a word (letters with inner apostrophes), closing marks.
PLAIN = re.compile(r"([(\[\"'“‘*_]*)([A-Za-z]+(?:['’][A-Za-z]+)*)([.,;:!?)\]\"'”’*_]*)\Z")
WS = re.compile(r"[^\S\n]+")
CHUNK = re.compile(r"[^\s`]+")
NUMBER = re.compile(r"[(\[$€£~]*[0-9]")


@dataclass(frozen=True, slots=True)
class Chunk:
    start: int
    end: int
    lead: str
    word: str  # original spelling, "" when not a plain chunk
    trail: str
    number: bool = False  # a number (optionally after a currency sign or "~")

    @property
    def low(self) -> str:
        return self.word.lower().replace("’", "'")


def parse_chunk(s: str, start: int, end: int) -> Chunk:
    m = PLAIN.match(s, start, end)
    if m is None:
        return Chunk(start, end, "", "", "", NUMBER.match(s, start, end) is not None)
    return Chunk(start, end, m.group(1), m.group(2), m.group(3))


def collect(s: str, first: Chunk, ahead: int, final: bool) -> tuple[list[Chunk], bool]:
    """The first chunk and up to ``ahead`` following chunks in the same paragraph line run; complete=False
    when the buffer ends before that is known."""
    seq = [first]
    i, n = first.end, len(s)
    while len(seq) <= ahead:
        m = WS.match(s, i)
        j = m.end() if m else i
        if j == n:
            return seq, final
        if s[j] == "\n":
            # A soft line break (the next line starts with a letter: same paragraph, not a list item, heading,
            # fence or indented block) does not end a phrase, so re-wrapped text keeps its slots.
            if j + 1 == n:
                return seq, final
            if not ("a" <= s[j + 1].lower() <= "z"):
                return seq, True
            j += 1
        elif s[j] == "`":
            return seq, True
        cm = CHUNK.match(s, j)
        if cm is None:
            return seq, True
        if cm.end() == n and not final:
            return seq, False
        seq.append(parse_chunk(s, j, cm.end()))
        i = cm.end()
    return seq, True
