"""What the scanner remembers of the text it has read: ``ScanState``, and how reading a chunk updates it.

The block state (inside a fence, inline code, a protected line, at a line start) is what ``Scanner.run``
branches on; the context (the previous plain word, the last character, a number just read, the apostrophe
style, the language of the last words, the distance to the last parallel word) is what the guards
(``watermark.guards``) read to decide a slot. ``absorb`` updates the context from a stretch copied verbatim in
one pass, exactly as reading it chunk by chunk would (``count_chunk``): the fast path and the careful path
leave the same state, so streaming equals batch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from watermark import language
from watermark.chunks import NUMBER, PLAIN
from watermark.guards import PARALLEL_BREAK

_PLAIN_MARKS = "([\"'“‘*_.,;:!?)]”’"  # the marks ``chunks.PLAIN`` allows around a word (a cheap first test)
# a chunk that starts with a number (``chunks.NUMBER``), anywhere in a stretch
_NUMBER_CHUNK = re.compile(r"(?<!\S)[(\[$€£~]*[0-9]")


@dataclass(slots=True)
class ScanState:
    at_line_start: bool = True
    protect_line: bool = False  # rest of this line is verbatim (indented code, fence opener)
    fence: str = ""  # inside a fenced block: its marker ("```", "~~~~", ...)
    fence_line: str = ""  # the fenced line read so far (to recognise the closing fence)
    fence_opener: bool = False  # the current fenced line is the opener (never closes)
    fence_at: int = -1  # offset, in the text of the ``run`` that opened it, of the current fence's marker
    inline: int = 0  # inside inline code: length of the opening backtick run
    prev: str = ""  # the last plain word (lower case): the context of the next slot
    last_char: str = "\n"  # last character of the previous chunk ("\n" at a line start)
    last_number: bool = False  # the previous chunk was a number ("$5 a day")
    apostrophe: str = "'"  # the apostrophe style of the text so far (’ is sticky once seen)
    lang: str = ""  # classes of the last language.WINDOW words outside code and slots ("E", "F", "O")
    para_number: bool = False  # a number was read in this paragraph (``Group.next_needs_number``)
    # chunks read since the last word of a ``Group.parallel`` class (a slot counts as one chunk, whatever its
    # variant, so embedding never changes the count)
    parallel_gap: int = 1 << 30

    def absorb(self, s: str, i: int, j: int, parallel: frozenset[str]) -> None:
        """Update the context from a stretch copied verbatim (as the token-by-token path would)."""
        chunks = s[i:j].split()
        if not chunks:
            return
        if "’" in s[i:j]:
            self.apostrophe = "’"
        self.last_char = chunks[-1][-1]
        self.last_number = NUMBER.match(chunks[-1]) is not None
        if not self.para_number:
            self.para_number = _NUMBER_CHUNK.search(s[i:j]) is not None
        self.count_stretch(chunks, parallel)
        glued = j < len(s) and s[j] == "`" and not s[j - 1].isspace()
        self.lang = language.note(self.lang, chunks[:-1] if glued else chunks)
        for k in range(len(chunks) - 1, -1, -1):
            if k == len(chunks) - 1 and glued:
                continue  # a chunk glued to inline code is never a word
            pm = PLAIN.match(chunks[k])
            if pm is not None:
                self.prev = pm.group(2).lower().replace("’", "'")
                return

    def count_chunk(self, low: str, last: str, parallel: frozenset[str]) -> None:
        """One more chunk read (``low``: its plain word, "" when none; ``last``: its last character): the
        distance to the last parallel word, which a sentence end breaks ("in each group. So each group takes")."""
        self.parallel_gap = 0 if low in parallel else self.parallel_gap + 1
        if last in PARALLEL_BREAK:
            self.parallel_gap = 1 << 30

    def count_stretch(self, chunks: list[str], parallel: frozenset[str]) -> None:
        """``count_chunk`` over chunks copied verbatim, in one backward pass: only the last parallel word or
        sentence end decides the distance."""
        for back, c in enumerate(reversed(chunks)):
            if c[-1] in PARALLEL_BREAK:
                self.parallel_gap = 1 << 30
                return
            if c.strip(_PLAIN_MARKS).lower().replace("’", "'") in parallel:
                pm = PLAIN.match(c)  # the exact test, as the token-by-token path reads the chunk
                if pm is not None and pm.group(2).lower().replace("’", "'") in parallel:
                    self.parallel_gap = back
                    return
        self.parallel_gap += len(chunks)
