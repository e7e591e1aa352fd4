"""Shared helpers for the lexical-watermark tests: what the read-only scan finds, and streamed embedding."""

from __future__ import annotations

import random

from watermark.lexical import LexicalEmbedder
from watermark.lexicon import default_lexicon
from watermark.scanner import Scanner


def slots(text: str, level: int = 2) -> list[tuple[str, str]]:
    """Every slot of the shipped table in ``text`` as (context word, matched variant); the scan must not change
    the text."""
    lex = default_lexicon()
    found: list[tuple[str, str]] = []

    def record(group: int, observed: int, context: str) -> int:
        found.append((context, " ".join(lex.groups[group].variants[observed])))
        return observed

    out, used = Scanner(lex, level).run(text, True, record)
    assert out == text and used == len(text)
    return found


def feed_in_pieces(emb: LexicalEmbedder, text: str, rnd: random.Random, max_piece: int) -> str:
    """Stream ``text`` through ``emb`` in random pieces of 1..max_piece characters; the whole output."""
    out: list[str] = []
    i = 0
    while i < len(text):
        j = i + rnd.randint(1, max_piece)
        out.append(emb.feed(text[i:j]))
        i = j
    out.append(emb.finish())
    return "".join(out)
