"""Shared helpers for the lexical-watermark tests: what the read-only scan finds, and streamed embedding."""

from __future__ import annotations

import random
import re

from watermark.lexical import LexicalEmbedder
from watermark.lexicon import default_lexicon
from watermark.scanner import Scanner

# ~330 words of assistant prose with plenty of choice points (contractions, connectives, "that", ...).
ANSWER = (
    "Sure, here is what I think. It is not always easy to choose a laptop, but you do not need to spend a lot "
    "of money. For example, many students buy a used model, and it will often work well for years. However, "
    "you should check the battery, because it is the part that fails first. I am happy to help if you want to "
    "compare a few options. There is also the question of weight: if you are travelling, a light laptop is "
    "usually worth it. In summary, you will not go wrong with a mid-range machine, and you can always upgrade "
    "the memory later. Perhaps the most important thing is the keyboard, since you will use it every day. "
    "Additionally, it is a good idea to look for a warranty. They are often cheap, and they do not cost much "
    "compared with a repair. Finally, I would suggest that you read a few reviews. It is especially useful to "
    "see what people say after a year, because that is when problems appear. Someone who types a lot should "
    "try the keyboard in a shop. If you cannot do that, it is fine: most shops let you return a laptop. "
    "Here is a quick checklist. First, make sure it has enough memory. Second, check the screen. I think you "
    "will find that it is not hard. You are welcome to ask again if you have more questions, and I will do my "
    "best to help. They say it is better to buy once and buy well, and I think that is right. It does not "
    "matter which brand you pick as long as the support is good. We are all different, so it is worth trying "
    "a few models before you decide. Thanks for asking, and good luck with your purchase!"
)


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


def rewrap(text: str) -> str:
    """Join the lines of every paragraph and wrap them again at 72 columns (what pasting into a form does)."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        lines, cur = [], ""
        for w in para.split():
            if cur and len(cur) + 1 + len(w) > 72:
                lines.append(cur)
                cur = w
            else:
                cur = f"{cur} {w}" if cur else w
        lines.append(cur)
        out.append("\n".join(lines))
    return "\n\n".join(out)
