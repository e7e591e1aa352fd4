"""The text the lexical detector reads: invisible characters and Latin lookalike letters undone (sans-IO).

A leaked text can lose every lexical slot without a visible change. A zero-width space or soft hyphen inside
each word, or Cyrillic "а", "е", "о" for the Latin letters (a one-line script, no knowledge of the table or of
any key), breaks every slot phrase apart or makes it a word of another alphabet, and the detector scored
nothing: "not watermarked" for a text that reads exactly like the one served. Before scanning, the detector
therefore

- removes the default-ignorable code points (zero-width spaces and joiners, soft hyphens, bidi marks, word
  joiners, variation selectors, tag characters, Hangul fillers): they render as nothing;
- in a text whose letters are mostly Latin, maps the Cyrillic, Greek and Armenian letters (and the
  modifier-letter apostrophe) that look like Latin ones to those. A text in Russian, Greek or Armenian (more
  letters of its own alphabet without a Latin lookalike than Latin letters) is left as it is: it has no
  English slots to recover, and mapping would only garble it.

Validity is unaffected: the normalised text is a function of the observed text alone, so the tuples read
from it are still chosen without the key (``watermark.stats``). A served answer the backend wrote with such
characters itself (rare) loses at most the slots next to them, as with any other edit.
"""

from __future__ import annotations

import re

# Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt), less the unassigned ranges: each renders
# as nothing, so inserting one is an invisible edit.
_IGNORABLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f"
    "\u3164\ufe00-\ufe0f\ufeff\uffa0\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff]")

# Cyrillic, Greek, Armenian and non-ASCII Latin letters that look like an ASCII letter in common fonts.
_LOOKALIKES = {
    "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "у": "y", "х": "x", "і": "i", "ј": "j", "ѕ": "s",
    "ԁ": "d", "ԛ": "q", "ԝ": "w", "һ": "h", "ӏ": "l", "ү": "y",
    "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C", "Т": "T",
    "У": "Y", "Х": "X", "І": "I", "Ј": "J", "Ѕ": "S", "Ү": "Y", "Ԛ": "Q", "Ԝ": "W", "Һ": "H", "Ӏ": "I",
    "ο": "o", "ϲ": "c", "ϳ": "j", "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K",
    "Μ": "M", "Ν": "N", "Ο": "O", "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X", "Ϲ": "C",
    "ı": "i", "ɑ": "a", "ɡ": "g", "ɩ": "i", "ʏ": "y",
    "օ": "o", "ս": "u", "ո": "n", "հ": "h", "ց": "g", "զ": "q",  # Armenian
    "ʼ": "'",  # the modifier-letter apostrophe: contractions are slots (not the prime: a′ is math)
}
_TO_LATIN = str.maketrans(_LOOKALIKES)
_LOOKALIKE = re.compile("[" + "".join(_LOOKALIKES) + "]")
_LATIN = re.compile("[A-Za-z]")
# letters of the Greek, Cyrillic and Armenian blocks without a Latin lookalike: the text is in that alphabet
_OWN_ALPHABET = re.compile("[^\\W\\d_" + "".join(_LOOKALIKES) + "](?<=[\u0370-\u058f])")


def detection_text(text: str) -> str:
    """``text`` as the lexical detector scores it (see the module docstring)."""
    text = _IGNORABLE.sub("", text)
    if _LOOKALIKE.search(text) is None:  # nearly every text: nothing more to do
        return text
    if len(_LATIN.findall(text)) > len(_OWN_ALPHABET.findall(text)):
        return text.translate(_TO_LATIN)
    return text
