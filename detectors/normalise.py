"""How a prompt's text is read before it is tokenised: folded (invisible characters dropped, look-alike and
compatibility letters read as the Latin ones) and, when long, cut to a head and a tail once whitespace runs
are squeezed. Both exist because the model reads through what the token hashes did not: a harvester who
knows the sketches can otherwise give every fill of one template its own tokens, or push the fill out of
the part that is read (review session 14b). Pure functions of the text, the same on every replica.
"""

from __future__ import annotations

import re
import unicodedata

#: Letters of other scripts that render like Latin ones (Cyrillic, Greek, a few Latin variants), read as those.
_CONFUSABLE = dict(zip(
    "аеорсухіјѕԁԛԝһӏкАВЕКМНОРСТХІЈЅҮονικρυχΑΒΕΖΗΙΚΜΝΟΡΤΥΧıɡ",
    "aeopcyxijsdqwhlkABEKMHOPCTXIJSYovikpuxABEZHIKMNOPTYXig", strict=True,
))
_DROP = frozenset(("Cf", "Mn", "Me"))  # format characters (zero-width, soft hyphen, bidi), combining marks
FOLD_CACHE = 8192  # distinct non-ASCII characters whose folding is memoised


class _Fold(dict[int, str]):
    """A ``str.translate`` table, filled on demand: what a character reads as for the sketches.

    The model reads through invisible characters and look-alike letters; the token hashes do not. A harvester
    that sprinkled zero-width spaces, soft hyphens, combining accents or full-width letters over its template
    fills (a different pattern per request) gave every fill its own tokens, and no template was ever found.
    So format characters and combining marks are dropped, a character whose compatibility decomposition is
    ASCII reads as that ("é" and "ｅ" as "e", "ﬁ" as "fi"), and Cyrillic/Greek look-alikes as the Latin
    letter. Any other character stays. Bounded like ``tokens._TokenCodes``."""

    __slots__ = ()

    def __missing__(self, cp: int) -> str:
        if len(self) >= FOLD_CACHE:
            self.clear()
        ch = chr(cp)
        if unicodedata.category(ch) in _DROP:
            out = ""
        else:
            d = "".join(c for c in unicodedata.normalize("NFKD", ch) if unicodedata.category(c) not in _DROP)
            out = d if d and d.isascii() else _CONFUSABLE.get(d, ch) if len(d) == 1 else ch
        self[cp] = out
        return out


_FOLD = _Fold()


def fold(text: str) -> str:
    """``text`` as the sketches read it (``_Fold``); ASCII text is returned as it is (``isascii`` is O(1))."""
    return text if text.isascii() else text.translate(_FOLD)


LONG_TEXT, HEAD_CHARS, TAIL_CHARS = 20_000, 16_000, 4_000  # a longer prompt is read by its head and tail
_CHUNK, _SCAN_CHARS = 32_768, 131_072  # ... found by squeezing chunks, at most this far in from either end
_WS_RUN = re.compile(r"\s{2,}")


def window(raw: str) -> str:
    """A long prompt as read: its first ``HEAD_CHARS`` and last ``TAIL_CHARS`` characters, folded, once runs
    of whitespace are squeezed to one space.

    Cut as sent, 16 000 spaces (a few hundred tokens to the model, whose tokenizer merges them), the fill, and
    4 000 spaces read as an empty prompt: a harvester padded that way was never scored on what it asked (and
    zero-width characters, dropped by the fold, did the same). Squeezing a chunk at a time from either end
    costs what the padding costs: one 32 kB chunk for an ordinary long document; never more than
    ``_SCAN_CHARS`` per end (padding past that costs the client thousands of prompt tokens per request)."""
    n = len(raw)
    head: list[str] = []
    got = pos = 0
    stop = min(n, _SCAN_CHARS)
    while got < HEAD_CHARS and pos < stop:
        piece = _WS_RUN.sub(" ", fold(raw[pos:pos + _CHUNK]))
        head.append(piece)
        got += len(piece)
        pos += _CHUNK
    tail: list[str] = []
    got, end = 0, n
    stop = max(pos, n - _SCAN_CHARS)
    while got < TAIL_CHARS and end > stop:
        start = max(stop, end - _CHUNK)
        piece = _WS_RUN.sub(" ", fold(raw[start:end]))
        tail.append(piece)
        got += len(piece)
        end = start
    if end <= pos:  # the two scans met: the whole text was squeezed
        whole = "".join(head) + "".join(reversed(tail))
        return whole if len(whole) <= LONG_TEXT else whole[:HEAD_CHARS] + " " + whole[-TAIL_CHARS:]
    return "".join(head)[:HEAD_CHARS] + " " + "".join(reversed(tail))[-TAIL_CHARS:]
