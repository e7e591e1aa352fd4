"""A prompt's tokens: masking, tokenising, and each token's memoised code (the unit every sketch reads).

One regex pass to mask, one to tokenise, CRC32 token hashes (deterministic across processes and replicas,
unlike ``hash()``; memoised per token, since prompts reuse a small vocabulary).

Masking replaces the parts a template pipeline varies (numbers, quoted strings, URLs, e-mail addresses,
code blocks) so that two fills of one template hash alike.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import numpy as np

from detectors.patterns import STOPWORDS

_MASK_RE = re.compile(
    r"(?P<code>```.*?```)|(?P<url>https?://\S+)|(?P<mail>[^\s@]{1,64}@[^\s@]{1,255}\.\w+)"
    r"|(?P<quote>\"[^\"\n]{1,200}\")|(?P<num>\d+(?:[.,:/]\d+)*)",
    re.S,
)
# The mail alternative is bounded (RFC 5321: local part <= 64, domain <= 255 characters, neither holding an
# "@"). The unbounded ``\S+@\S+\.\w+`` it replaces backtracked cubically: a 1.6 kB run of "a@a@..." took
# 0.7 s and a 20 kB one (the longest prompt masked) about 20 minutes of CPU on the event loop. Wherever every
# "@"-holding word has one "@" within those bounds both patterns match exactly the same spans
# (tests/detectors/test_review_fuzz.py checks it against the old pattern).
_NUM_RE = re.compile(r"\d+(?:[.,:/]\d+)*")
_TOKEN_RE = re.compile(r"[a-z_']+|0|[^\sa-z0-9_']")
_MASKS = {"code": " ᶜ ", "url": " ᵘ ", "mail": " ᵉ ", "quote": " ᵠ ", "num": " 0 "}
TOKEN_CACHE = 65_536  # distinct tokens whose hash / content flag is memoised (both caches full: ~10 MB)


def _mask(m: re.Match[str]) -> str:
    return _MASKS[m.lastgroup or "num"]


def _crc(s: str) -> int:
    return zlib.crc32(s.encode("utf-8", "surrogatepass"))


class _TokenCodes(dict[str, int]):
    """A token's code, memoised: its ``_crc`` in the low 32 bits, and bit 32 set for a content word (longer
    than two characters, not a stopword). Prompts reuse a small vocabulary, so nearly every lookup is a hit
    and costs one C-level dict access instead of a Python call, an encode and a CRC (about 5x less per
    token); one table for both facts halves the lookups. The values are a pure function of the token, so
    the cache changes no result; it is bounded by being cleared when full (cheaper than LRU bookkeeping on
    every hit, and refilled within a few requests)."""

    __slots__ = ()

    def __missing__(self, tok: str) -> int:
        if len(self) >= TOKEN_CACHE:
            self.clear()
        code = self[tok] = _crc(tok) | (_CONTENT_BIT if len(tok) > 2 and tok not in STOPWORDS else 0)
        return code


_CONTENT_BIT = 1 << 32
_CODES = _TokenCodes()
_LOW32 = np.uint64(0xFFFFFFFF)  # a code's hash; a code above it is a content word's


def tokens_of(text: str) -> list[str]:
    """Masked, lower-cased tokens (the unit every sketch and the embedding are built from)."""
    return _tokens_of_lower(text.lower())


def _tokens_of_lower(low: str) -> list[str]:
    if "`" in low or "http" in low or "@" in low or '"' in low:
        low = _MASK_RE.sub(_mask, low)
    else:  # the common case: only numbers to mask, and a plain regex is 3x faster than the alternation
        low = _NUM_RE.sub(" 0 ", low)
    return _TOKEN_RE.findall(low)


def _token_hashes(tokens: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``_crc`` of every token (uint64), and the same for the content words only (no stopwords, masks or
    punctuation), in order: one memoised lookup per token."""
    return _split(_codes(tokens))


def _codes(tokens: Sequence[str]) -> np.ndarray:
    return np.fromiter(map(_CODES.__getitem__, tokens), dtype=np.uint64, count=len(tokens))


def _split(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Token codes -> (every token's hash, the content words' hashes)."""
    return codes & _LOW32, codes[codes > _LOW32] & _LOW32
