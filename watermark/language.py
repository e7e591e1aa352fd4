"""Which language a paragraph is in, as far as the lexical watermark needs to know (sans-IO, no model).

Text in another language is never a slot: "So schritt sie weiter" -> "Hence schritt", "Ông cỏ may ơi" -> "might",
"en particular el orden" -> "en specific". Each word read outside code is classed (English function word, a
function word of another language, a word with letters of another alphabet or with diacritics, any other
word); a slot is refused when, among the last WINDOW words of the paragraph, the foreign ones are at
least two and three times the English ones. The window starts empty after a blank line, so an English
paragraph after one in another language is read on its own. Only text before the slot is read, and slot
phrases are not counted (their variants differ between the embedder's input and its output), so embedder and
detector, streamed or not, see the same window. Words English shares with those languages ("in", "a", "die",
"was", "so", "per", "con", "Dan") are in neither list; particles of names ("Los Angeles", "de Gaulle", "et
al.") count as foreign but are outweighed by the English around them; single letters (math variables, "y",
"a") count as nothing.
"""

from __future__ import annotations

import re

WINDOW = 12
EN_FUNCTION = frozenset(str.split(
    "the of and to is are that this with for you it be have has not by from we they she can would which what if "
    "but its their there these those been my your our his how"))
FOREIGN_FUNCTION = frozenset(str.split(
    # German, Spanish, French, Portuguese, Italian, Dutch, Indonesian/Tagalog: frequent words no English text uses
    "der und nicht ist ich sie ein eine einen auf dem sich auch wie noch wir mir mich dich sind wurde werden oder "
    "aber nur bei nach aus dass wenn schon hat haben kann ihr ihre zum zur vom im dann doch durch einer eines einem "
    "el la los las de en se que del es por para una su como pero muy esta este sus entre sobre tiene fue ser cuando "
    "donde le les et est des du une qui pour dans pas ce sur avec je vous nous il elle mais ou sont au aux cette ces "
    "leur comme os em uma com ele ela seu sua pelo pela muito di che della sono questo anche molto gli nel alla "
    "het een niet ik dat zijn wat voor maar ook deze yang ini itu dengan untuk tidak dari ng mga"))
PUNCT = "\"'“”‘’«»„()[]{}<>*_.,;:!?¡¿…–—-"
# Latin letters with diacritics (Latin-1, Extended-A/B, Vietnamese), Cyrillic, Hebrew, Arabic, Indic, Thai, Lao,
# kana, CJK, Hangul. Not Greek, sub/superscript or letter-like symbols: math writes "λⱼ", "xₙ", "ℓ²".
NON_ENGLISH_LETTER = re.compile("[\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u0400-\u052f\u0590-\u06ff"
                                 "\u0900-\u0eff\u1e00-\u1eff\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")


def word_class(chunk: str) -> str:
    """"E" an English function word, "F" a word of another language, "O" any other word of 2+ letters, "" not a
    word (numbers, symbols, code, single letters)."""
    w = chunk.strip(PUNCT)
    if len(w) < 2:
        return ""
    w = w.replace("’", "'")
    if not w.replace("'", "").isalpha():
        return ""
    if not w.isascii():
        return "F" if NON_ENGLISH_LETTER.search(w) else ""
    low = w.lower()
    return "E" if low in EN_FUNCTION else "F" if low in FOREIGN_FUNCTION else "O"


def note(window: str, chunks: tuple[str, ...] | list[str]) -> str:
    """``window`` with the classes of whitespace-delimited chunks read verbatim appended (only the last
    WINDOW words can matter: read backwards until that many are found)."""
    classes: list[str] = []
    for chunk in reversed(chunks):
        c = word_class(chunk)
        if c:
            classes.append(c)
            if len(classes) == WINDOW:
                break
    if not classes:
        return window
    return (window + "".join(reversed(classes)))[-WINDOW:]


def foreign(lang: str) -> bool:
    """Whether the window reads as another language: two or more foreign words, and at least three times as many
    as the English ones (English that quotes a phrase, "„Ich weiß es nicht“ means that you do not know", stays
    English; a Polish paragraph with one "to" does not)."""
    f = lang.count("F")
    return f >= 2 and f >= 3 * lang.count("E")
