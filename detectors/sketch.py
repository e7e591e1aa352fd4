"""Sketches of a prompt's token hashes: MinHash of content-word bigrams, a bottom-k sample, the embedding.

numpy throughout: the splitmix64 finaliser spreads the 32-bit token hashes over 64 bits, vectorised. The
embedding is feature hashing of content-word unigrams and bigrams into ``EMBED_DIM`` signed buckets, which
is a sparse random projection of the n-gram count vector (fixed by the hash, so every replica agrees),
L2-normalised.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from detectors.tokens import _token_hashes

EMBED_DIM = 64
MINHASHES = 16
BOTTOM_K = 32
# Odd 64-bit multipliers: one independent-enough hash permutation per MinHash slot.
_SEEDS = np.array(
    [((0x9E3779B97F4A7C15 + 2 * i * 0x632BE59BD9B4E019) | 1) & (2**64 - 1) for i in range(MINHASHES)], dtype=np.uint64
)
_S30, _S27, _S31, _S32 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(32)
_K1, _K2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)
_BIT20, _DIM_MASK = np.uint64(1 << 20), np.uint64(EMBED_DIM - 1)  # EMBED_DIM is a power of two: h % DIM == h & mask


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, vectorised: spreads 32-bit token hashes over 64 bits.

    uint64 array arithmetic wraps modulo 2**64 silently (numpy only warns on scalar overflow)."""
    x = (x ^ (x >> _S30)) * _K1
    x = (x ^ (x >> _S27)) * _K2
    out: np.ndarray = x ^ (x >> _S31)
    return out


def _mix64_inplace(x: np.ndarray) -> np.ndarray:
    """``_mix64`` computed in place on ``x`` (which it returns): the same arithmetic, no temporaries."""
    tmp = np.empty_like(x)
    for shift, k in ((_S30, _K1), (_S27, _K2)):
        np.right_shift(x, shift, out=tmp)
        x ^= tmp
        x *= k
    np.right_shift(x, _S31, out=tmp)
    x ^= tmp
    return x


def _minhash(h: np.ndarray) -> tuple[int, ...]:
    """MinHash of the shingle set: slot i keeps the minimum of the i-th permutation (32 bits kept).

    The splitmix64 finaliser runs in place on the (shingles x slots) matrix: the same arithmetic as
    ``_mix64`` without its five temporaries of that size."""
    if len(h) == 0:
        return ()
    x = _mix64_inplace(h[:, None] * _SEEDS[None, :])
    out: list[int] = (np.minimum.reduce(x, axis=0) >> _S32).tolist()
    return tuple(out)


def minhash_of(shingles: np.ndarray) -> tuple[int, ...]:
    """The 16-slot MinHash of a set of 64-bit shingle hashes (what ``extract`` computes of content bigrams)."""
    return _minhash(shingles)


def _content(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The content words' hashes and those of their bigrams."""
    if len(words) < 2:
        return words, words[:0]
    bigrams = words[:-1] * _GOLD
    bigrams += words[1:]
    return words, _mix64_inplace(bigrams)


def _bottom(hashes: np.ndarray, k: int = BOTTOM_K) -> tuple[int, ...]:
    """The k smallest distinct token hashes (a bottom-k sample of the token set, stopwords included).

    Intersected over the fills of one template it converges to the template's fixed tokens (its skeleton):
    a token with a small hash is in every fill's sample or in none."""
    if not len(hashes):
        return ()
    a = np.sort(hashes)
    keep = np.empty(len(a), dtype=bool)
    keep[0] = True
    np.not_equal(a[1:], a[:-1], out=keep[1:])
    out: list[int] = a[keep][:k].tolist()
    return tuple(out)


def embed(tokens: Sequence[str]) -> np.ndarray:
    """Hashed content-word uni+bigram embedding, L2-normalised (zeros for no content words)."""
    return _embed(*_content(_token_hashes(tokens)[1]))


def _embed(words: np.ndarray, bigrams: np.ndarray) -> np.ndarray:
    if not len(words):
        return np.zeros(EMBED_DIM)
    h = np.concatenate([words, bigrams])
    idx = (h & _DIM_MASK).astype(np.intp)
    sign = np.where(h & _BIT20, 1.0, -1.0)  # bit 20 of the hash: +1 / -1, exactly
    vec: np.ndarray = np.bincount(idx, weights=sign, minlength=EMBED_DIM)  # float64 (weights given)
    norm = math.sqrt(float(vec @ vec))
    return vec / norm if norm > 0 else vec
