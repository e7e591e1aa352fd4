"""The sim's response text: a small corpus of real assistant answers shipped in the package (see NOTICE).

Text is split into "tokens" the way a reader would count words: each token is a run of non-space characters
with the whitespace in front of it, so joining tokens gives the original text back exactly.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

_TOKEN_RE = re.compile(r"\s*\S+|\s+$")


@dataclass(frozen=True, slots=True)
class CorpusEntry:
    id: str
    source: str
    text: str
    tokens: tuple[str, ...]


@cache
def load_corpus() -> tuple[CorpusEntry, ...]:
    raw = resources.files("gateway.sim").joinpath("corpus.jsonl").read_text(encoding="utf-8")
    entries = []
    for line in raw.splitlines():
        if line.strip():
            rec = json.loads(line)
            text = rec["response"]
            entries.append(CorpusEntry(rec["id"], rec["source"], text, tuple(tokenize(text))))
    return tuple(entries)


def tokenize(text: str) -> list[str]:
    return _TOKEN_RE.findall(text)


def count_tokens(text: str) -> int:
    return len(_TOKEN_RE.findall(text))


def pick(prompt: str, index: int = 0) -> CorpusEntry:
    """The same prompt always gets the same answer (choice ``index`` gets the next entry)."""
    corpus = load_corpus()
    h = int.from_bytes(hashlib.blake2b(prompt.encode(), digest_size=8).digest(), "little")
    return corpus[(h + index) % len(corpus)]


def token_logprob(token: str, position: int) -> float:
    """A deterministic, plausible log-probability in (-6, 0] for a sampled token."""
    h = hashlib.blake2b(f"{position}:{token}".encode(), digest_size=4).digest()
    u = int.from_bytes(h, "little") / 2**32
    return round(math.log(0.02 + 0.98 * (1 - u) ** 3), 6)


def alternatives(token: str, position: int, k: int) -> list[tuple[str, float]]:
    """``k`` top candidates for a position, the sampled token first, probabilities summing below 1."""
    lp = token_logprob(token, position)
    out = [(token, lp)]
    stem = token.strip() or token
    for i in range(1, k):
        alt = (" " if token.startswith(" ") else "") + (stem[:-1] if len(stem) > 1 and i % 2 else stem + "s")
        alt = alt if alt not in {t for t, _ in out} else f"{alt}{i}"
        out.append((alt, round(lp - 0.7 * i - 0.1, 6)))
    return out
