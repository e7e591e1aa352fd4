"""Anchors: where a prompt's fixed text is, wherever it sits (winnowed token shingles), and the needle view.

A template fill wrapped in fresh random padding escapes the prompt-level sketches: its head and tail keys
are the padding's, and the content-word MinHash of ~25 template tokens among ~60 or more padding words
agrees with the template's on fewer than ``min_agree`` slots (40 words before and 20 after already did it;
``tests/detectors/test_padding.py``). What stays the same from fill to fill is the template's fixed runs
of tokens, at a different offset each time. Winnowing (Schleimer, Wilkerson and Aiken, SIGMOD 2003) finds
them by position-free fingerprints: hash every ``K``-token shingle and keep the smallest hash of every
window of ``W`` consecutive shingles. Any run of at least ``K + W - 1`` equal tokens in two prompts
yields at least one common fingerprint, wherever the runs sit, while the fingerprints of fresh padding
are fresh. ``extract`` computes them for prompts of ``MIN_TOKENS`` tokens or more (under that a fill is
most of the prompt and the usual sketches still match it: the padding that escaped them started at ~80
tokens a prompt, 30 words before the fill and 20 after); the template detector
keeps the last ``RING`` of them per client and, for a prompt that matches no cluster by its usual
sketches, reads the prompt by its *recurring* anchors only (``needle_view``): the fixed text, without the
padding around it.
"""

from __future__ import annotations

import numpy as np

K = 4  # tokens per shingle: "0 . how many" recurs in ordinary prompts far less than 3-grams do
W = 5  # shingles per window: any fixed run of K + W - 1 = 8 tokens is found (the MIN_SKELETON of a template)
MIN_TOKENS = 64  # prompts shorter than this are not winnowed (the usual sketches read them whole)
SCAN_HEAD, SCAN_TAIL = 768, 256  # tokens winnowed of a longer prompt: its first 768 and last 256
MAX_ANCHORS = 256  # anchors kept per prompt (the smallest; 1024 tokens give ~340)
RING = 512  # anchors remembered per client (of its last long prompts, oldest dropped first)
MIN_CONTENT = 2  # content words a chosen shingle holds (see ``winnow``)
NEEDLE_MIN = 2  # recurring anchors a needle needs: one shared 4-gram is a phrase, two are a fixed passage
_GOLD = np.uint64(0x9E3779B97F4A7C15)
_K1, _K2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S32 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(32)
_ONE = np.uint64(1)
_LOW32 = np.uint64(0xFFFFFFFF)
_NONE = 0xFFFFFFFF  # the fingerprint of a shingle that may not be chosen (larger than every other: odd values)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (uint64 arithmetic wraps modulo 2**64)."""
    x = (x ^ (x >> _S30)) * _K1
    x = (x ^ (x >> _S27)) * _K2
    out: np.ndarray = x ^ (x >> _S31)
    return out


def winnow(codes: np.ndarray) -> tuple[int, ...]:
    """The winnowed ``K``-shingle fingerprints of a prompt's token codes (``detectors.tokens``: the token's
    CRC32 in the low 32 bits, bit 32 set for a content word): sorted, distinct, odd 32-bit values, at most
    ``MAX_ANCHORS`` (the smallest).

    Shingles with fewer than ``MIN_CONTENT`` content words ("[ 0 , 0", "; } } }", "of the 0 .") are never
    chosen: every list of numbers and every brace-closing run of code has them, so they recurred between
    unrelated code prompts and read as a template's fixed text (11 of 30 code personas of the TRAIN split
    reached a template score over 0.3 on them).

    Plain numpy on shifted slices throughout (the window minimum as ``W - 1`` element-wise minima, the
    distinct values by one sort): ``sliding_window_view(...).min`` and ``np.unique`` cost 3-10x more at
    these sizes."""
    n = len(codes) - K + 1
    if n < 1:
        return ()
    h = codes & _LOW32
    content = codes >> _S32  # 1 for a content word
    s = h[:n].copy()
    words = content[:n].copy()
    for j in range(1, K):  # a polynomial hash of the K tokens: order matters ("a b" is not "b a")
        s *= _GOLD
        s += h[j : j + n]
        words += content[j : j + n]
    s *= _K1  # multiplicative hashing: the top 32 bits of an odd multiple depend on every bit of the shingle
    fp = s
    fp >>= _S32
    fp |= _ONE
    fp[words < MIN_CONTENT] = _NONE
    if n > W:
        m = np.minimum(fp[: n - W + 1], fp[1 : n - W + 2])
        for j in range(2, W):
            np.minimum(m, fp[j : n - W + 1 + j], out=m)
    else:
        m = fp.min(keepdims=True)
    m.sort()
    keep = np.empty(len(m), dtype=bool)
    keep[0] = m[0] != _NONE
    np.not_equal(m[1:], m[:-1], out=keep[1:])
    keep &= m != _NONE
    out: list[int] = m[keep][:MAX_ANCHORS].tolist()
    return tuple(out)


def needle_view(recurring: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A prompt read by its recurring anchors only: the shingle set to MinHash (uint64) and its stand-in
    for the bottom-k token sample (uint32). Each anchor stands for its ``K`` tokens (``K`` derived values),
    so that the template detector's skeleton test (``MIN_SKELETON`` fixed tokens) means what it means for
    an ordinary prompt: two anchors are 8 tokens, one is a phrase."""
    r = recurring.astype(np.uint64)
    toks = (_mix(r[:, None] * _GOLD + np.arange(1, K + 1, dtype=np.uint64)[None, :]) >> _S32).ravel()
    return r, np.unique(toks | _ONE).astype(np.uint32)
