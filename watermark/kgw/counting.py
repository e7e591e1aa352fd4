"""Per-key green counts of KGW detection on uint32 lanes: the PRF of every scored tuple under up to 10⁵
candidate keys, and the second dedup level (each distinct (seed, token) pair once per key; why:
``green_counts`` and ``watermark/kgw/detect.py``). numpy only, no torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from watermark.kgw import prf
from watermark.kgw.params import KgwParams
from watermark.kgw.tuples import IntArray, Tuples

# Keys per chunk in green_counts: about 128 k uint32 lanes (512 KB) per work array. Measured on this
# machine (800 tokens, 100 000 keys): one thread is flat from 32 k to 128 k lanes; with two threads, fewer
# and larger numpy calls mean fewer GIL hand-offs, and 128 k beat 32 k, 64 k, 256 k and 512 k.
_CHUNK_LANES = 1 << 17
_THREADS = min(2, os.cpu_count() or 1)  # the target machine has 2 cores
_BUCKET = 64  # slots per sorted bucket of token groups (wider when one token has more tuples)


def keys_array(keys: Sequence[bytes]) -> IntArray:
    """``(K, 4)`` int64 PRF subkeys (same derivation as the torch side)."""
    return prf.subkeys_array(keys).astype(np.int64)


def green_bits(tuples: Tuples, subkeys: npt.NDArray[np.integer], params: KgwParams) -> npt.NDArray[np.bool_]:
    """``(K, n)``: is tuple j green under key i. The same PRF as ``torch_core.green_mask``, bit for bit
    (tested against the torch core for every seeding scheme)."""
    out = np.zeros((subkeys.shape[0], tuples.n), dtype=bool)
    if tuples.n == 0 or subkeys.shape[0] == 0:
        return out
    layout = _Layout.of(tuples, params)
    sk = np.ascontiguousarray(subkeys, dtype=np.uint32)
    step = max(1, _CHUNK_LANES // layout.stream.shape[0])
    bufs = _Buffers(min(step, sk.shape[0]), layout)
    for lo in range(0, sk.shape[0], step):
        _, val = _prf_chunk(layout, sk[lo : lo + step], params, bufs)
        out[lo : lo + step] = np.take(val, layout.cols, axis=1) < params.threshold
    return out


def green_counts(
    tuples: Tuples, subkeys: npt.NDArray[np.integer], params: KgwParams, *, threads: int | None = None
) -> tuple[IntArray, IntArray]:
    """``(scored, hits)`` per key, each ``(K,)``: distinct (seed, token) pairs and how many are green.

    Second dedup level, per key: min-hash seeds (``minhash``, ``selfhash``) map many different windows to
    the *same* seed by design — a frequent token whose keyed hash is small wins the min in most windows it
    appears in — so distinct windows can still be one PRF draw. The green value is a function of
    (seed, token) only, so each distinct pair is scored once. Which pairs coincide depends on the subkeys
    k0..k2, never on k3, the subkey that decides green-ness (``green = mix(mix(seed ^ k3) ^ th(t)) < T``), so
    the selection is still independent of the green bits under H0.

    Computed on uint32 lanes in cache-sized chunks of keys, on ``threads`` threads (default: up to 2);
    see ``_Layout`` and ``_count_chunk`` for how the per-text work is hoisted out of the per-key loop.
    """
    k = subkeys.shape[0]
    scored = np.zeros(k, dtype=np.int64)
    hits = np.zeros(k, dtype=np.int64)
    if tuples.n == 0 or k == 0:
        return scored, hits
    layout = _Layout.of(tuples, params)
    sk = np.ascontiguousarray(subkeys, dtype=np.uint32)
    step = max(1, _CHUNK_LANES // layout.stream.shape[0])
    chunks = [(lo, min(k, lo + step)) for lo in range(0, k, step)]
    workers = min(threads or _THREADS, max(1, len(chunks) // 2))

    # One shared iterator: each thread takes the next chunk when it is done with one (``next`` on a list
    # iterator is one call under the GIL), so a thread slowed by other load on its core does not leave the
    # other idle at the end, as a fixed split did. Every chunk writes only its own slice of the outputs.
    todo = iter(chunks)

    def run() -> None:
        bufs = _Buffers(min(step, k), layout)
        for lo, hi in todo:
            _count_chunk(layout, sk[lo:hi], params, bufs, scored[lo:hi], hits[lo:hi])

    if workers <= 1:
        run()
    else:  # numpy releases the GIL inside each large ufunc loop and sort, so chunks overlap on 2 cores
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for f in [pool.submit(run) for _ in range(workers)]:
                f.result()  # re-raises a worker's exception
    return scored, hits


@dataclass(frozen=True, slots=True)
class _Layout:
    """The key-independent part of counting, computed once per text (or pooled corpus).

    The tuples are laid out as a token *stream* in which every tuple's window is the ``p`` tokens before
    its candidate: consecutive tuples from running text share ``p`` tokens, so the stream is about as long
    as the text and each key hashes each token once (``th``), reading windows as shifted slices instead of
    gathering them. A tuple that does not continue the previous one (text boundary, first-level dedup drop)
    starts a new segment with its full window; those context-only positions are computed and ignored.

    Counting distinct (seed, token) pairs only needs care where a token is the candidate of two or more
    tuples: pairs with different tokens always differ. ``single`` marks the columns whose candidate occurs
    once (counted by their green bits alone); the others (``multi``) are deduplicated per key by sorting
    ``value << 32 | group << 1``, where ``value`` is the green value: for one key and one token it is a
    bijection of the seed (xor a subkey, mix, xor th(t), mix — each step invertible), so equal (seed,
    token) pairs are exactly equal (value, token) pairs, and ``value < threshold`` is the green bit, read
    back from the sorted high half. Since only pairs of one token's group can be equal, the groups are
    packed into buckets of ``width`` columns (first fit, largest group first) and each bucket is sorted on
    its own: many short sorts are about twice as fast as one sort of the whole row. Padding slots get
    group numbers of their own (never equal to anything) and an all-ones high half (never green).
    """

    stream: npt.NDArray[np.uint32]  # (S,) token ids; column c of the per-key arrays is position c + p
    single: npt.NDArray[np.bool_]  # (S - p,) column is a scored tuple whose token occurs in no other tuple
    n_single: int
    single_cols: IntArray  # (n_single,) the True columns of ``single``
    multi: IntArray  # (buckets * width,) columns of tuples whose token occurs in several tuples, by bucket
    multi_rank: npt.NDArray[np.uint64]  # same shape: group number << 1 (padding: unique numbers >= groups)
    multi_real: npt.NDArray[np.bool_]  # same shape: False for padding slots
    multi_tag: npt.NDArray[np.uint64]  # same shape: multi_rank, padding slots with the high 32 bits set
    n_multi: int
    width: int
    cols: IntArray  # (n,) column of each tuple, in tuple order
    uniq: npt.NDArray[np.uint32]  # (U,) the distinct tokens of the stream (U ≈ 0.4 S for running text)
    stream_idx: IntArray  # (S,) index in ``uniq`` of every stream token
    cand_idx: IntArray  # (S - p,) index in ``uniq`` of every column's candidate token

    @classmethod
    def of(cls, tuples: Tuples, params: KgwParams) -> _Layout:
        p, n = params.prev_tokens, tuples.n
        rows = np.concatenate([tuples.prev, tuples.cand[:, None]], axis=1)  # (n, p + 1)
        take = np.ones(rows.shape, dtype=bool)  # which tokens of each row enter the stream
        if n > 1 and p > 0:  # row j continues row j - 1: its window is row j - 1 shifted by one token
            take[1:, :p] = ~(rows[1:, :p] == rows[:-1, 1:]).all(axis=1)[:, None]
        stream = rows[take].astype(np.uint32)
        uniq, stream_idx = np.unique(stream, return_inverse=True)
        cols = np.cumsum(take.sum(axis=1)) - 1 - p  # column of each tuple's candidate
        _, inverse, counts = np.unique(tuples.cand, return_inverse=True, return_counts=True)
        once = counts[inverse] == 1
        single = np.zeros(stream.shape[0] - p, dtype=bool)
        single[cols[once]] = True
        multi, rank, real, width = _buckets(cols[~once], inverse[~once])
        stream_idx = stream_idx.reshape(-1).astype(np.int64)
        tag = rank | np.where(real, np.uint64(0), np.uint64(0xFFFFFFFF << 32))
        return cls(stream, single, int(once.sum()), np.flatnonzero(single), multi, rank, real, tag,
                   int((~once).sum()), width, cols, uniq, stream_idx, np.ascontiguousarray(stream_idx[p:]))


def _buckets(cols: IntArray, group: IntArray) -> tuple[IntArray, npt.NDArray[np.uint64], npt.NDArray[np.bool_], int]:
    """Pack the columns of each token group into buckets of ``width`` slots (a group never spans two)."""
    order = np.argsort(group, kind="stable")
    _, start, size = np.unique(group[order], return_index=True, return_counts=True)
    width = -(-max(_BUCKET, int(size.max(initial=0))) // 8) * 8  # a multiple of 8 (see _count_rows)
    bins: list[list[int]] = []
    fill: list[int] = []
    for g in np.argsort(-size, kind="stable").tolist():  # first fit among the last 8 open buckets
        for b in range(max(0, len(bins) - 8), len(bins)):
            if fill[b] + size[g] <= width:
                bins[b].append(g)
                fill[b] += int(size[g])
                break
        else:
            bins.append([g])
            fill.append(int(size[g]))
    total = len(bins) * width
    multi = np.zeros(total, dtype=np.int64)  # padding reads column 0; its rank and green bit are overridden
    rank = np.arange(size.shape[0], size.shape[0] + total, dtype=np.uint64)  # unique padding numbers
    real = np.zeros(total, dtype=bool)
    sorted_cols = cols[order]
    for b, groups in enumerate(bins):
        pos = b * width
        for g in groups:
            k = int(size[g])
            multi[pos : pos + k] = sorted_cols[start[g] : start[g] + k]
            rank[pos : pos + k] = g
            real[pos : pos + k] = True
            pos += k
    return multi, rank << np.uint64(1), real, width  # group numbers < 2^31: bits 1..31


class _Buffers:
    """Per-thread scratch arrays for up to ``rows`` keys (reused across chunks: no allocation per chunk)."""

    def __init__(self, rows: int, layout: _Layout) -> None:
        s, n = layout.stream.shape[0], layout.single.shape[0]  # stream positions, columns
        self.th = np.empty((rows, s), dtype=np.uint32)
        u = layout.uniq.shape[0]  # per distinct token: th(u), and for selfhash ah(u) and mix(th(u) ^ ah(u))
        self.th_u, self.anchor_u, self.self_u, self.tmp_u = (np.empty((rows, u), dtype=np.uint32) for _ in range(4))
        self.seed, self.anchor, self.val, self.tmp = (np.empty((rows, n), dtype=np.uint32) for _ in range(4))
        self.val_s = np.empty((rows, layout.n_single), dtype=np.uint32)
        self.bits = np.zeros((rows, -(-layout.n_single // 8) * 8), dtype=bool)  # padded to whole uint64 words
        m = layout.multi.shape[0]  # a multiple of 8: whole uint64 words for _count_rows
        self.green_m = np.empty((rows, m), dtype=bool)
        self.val_m = np.empty((rows, m), dtype=np.uint32)
        self.packed = np.empty((rows, m), dtype=np.uint64)
        self.dup = np.zeros((rows, m), dtype=bool)  # the last column is never written: stays False


def _prf_chunk(
    layout: _Layout, sk: npt.NDArray[np.uint32], params: KgwParams, b: _Buffers
) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint32]]:
    """``(seed, green value)`` of every column under a chunk of keys, each ``(c, columns)`` (views of
    ``b``): the PRF of ``prf.py`` on uint32 lanes, bit for bit (``seed`` may be a fixed bijection of the
    seed — ``lefthash`` skips its last ``xs16`` — which changes no equality, so no dedup count).

    Written with ``mix = xs16 ∘ core ∘ xs16`` (see ``prf.py``): with ``X = xs16(th)`` of every token,
    ``mix(th(u) ^ ah(t)) = xs16(core(X(u) ^ xs16(ah(t))))`` and the green value
    ``mix(mix(s ^ k3) ^ th(t)) = xs16(core(core(xs16(s ^ k3)) ^ X(t)))``, so a chained pair of mixes costs
    two ``core``s and one ``xs16`` fewer, and token-only terms are computed once per distinct token
    (a gather costs about one pass, a mix eight, and running text repeats tokens: U ≈ 0.4 S).
    """
    c, p = sk.shape[0], params.prev_tokens
    n = layout.single.shape[0]
    k0, k1, k2, k3 = (sk[:, i : i + 1] for i in range(4))
    tmp, tmp_u = b.tmp[:c], b.tmp_u[:c]
    # X(u) = xs16(th(u)) = core(xs16(u ^ k0)) per distinct token (th's trailing xs16 cancels)
    x_u = np.bitwise_xor(layout.uniq[None, :], k0, out=b.th_u[:c])
    prf.core_u32_(prf.xs16_u32_(x_u, tmp_u), tmp_u)
    # np.take with mode="clip" (indices valid) writes to ``out`` unbuffered and keeps rows C-contiguous
    seed, val = b.seed[:c], b.val[:c]
    if params.seeding == "minhash":  # s = mix(min_j th(xj) ^ k1): the min needs th itself, th = xs16(X)
        th_u = b.anchor_u[:c]
        np.copyto(th_u, x_u)
        prf.xs16_u32_(th_u, tmp_u)
        th = np.take(th_u, layout.stream_idx, axis=1, out=b.th[:c], mode="clip")
        x_cand = np.take(x_u, layout.cand_idx, axis=1, out=b.anchor[:c], mode="clip")
        np.copyto(seed, th[:, 0:n])
        for j in range(1, p):
            np.minimum(seed, th[:, j : j + n], out=seed)
        np.bitwise_xor(seed, k1, out=seed)
        prf.mix_u32_(seed, tmp)
        np.bitwise_xor(seed, k3, out=val)
        prf.xs16_u32_(val, tmp)
    else:
        x = np.take(x_u, layout.stream_idx, axis=1, out=b.th[:c], mode="clip")  # X of every stream token
        x_cand = x[:, p:]
        if params.seeding == "lefthash":  # s = mix(...mix(mix(k1 ^ th(x1)) ^ th(x2))... ^ th(xh))
            # y_1 = core(xs16(k1) ^ X(x1)), y_j = core(y_{j-1} ^ X(xj)), s = xs16(y_h); seed := y_h
            np.bitwise_xor(x[:, 0:n], prf.xs16_u32_(k1.copy(), np.empty_like(k1)), out=seed)
            prf.core_u32_(seed, tmp)
            for j in range(1, p):
                np.bitwise_xor(seed, x[:, j : j + n], out=seed)
                prf.core_u32_(seed, tmp)
            # xs16(s ^ k3) = xs16(s) ^ xs16(k3) (xs16 is linear) = y_h ^ xs16(k3)
            np.bitwise_xor(seed, prf.xs16_u32_(k3.copy(), np.empty_like(k3)), out=val)
        else:  # selfhash: s(t) = min over u in window ∪ {t} of mix(th(u) ^ ah(t))
            xa_u = np.bitwise_xor(layout.uniq[None, :], k2, out=b.anchor_u[:c])  # xs16(ah) = core(xs16(t ^ k2))
            prf.core_u32_(prf.xs16_u32_(xa_u, tmp_u), tmp_u)
            self_u = np.bitwise_xor(x_u, xa_u, out=b.self_u[:c])  # the candidate's own term, per token
            prf.xs16_u32_(prf.core_u32_(self_u, tmp_u), tmp_u)
            xa = np.take(xa_u, layout.cand_idx, axis=1, out=b.anchor[:c], mode="clip")
            np.take(self_u, layout.cand_idx, axis=1, out=seed, mode="clip")
            for j in range(p):
                np.bitwise_xor(x[:, j : j + n], xa, out=val)
                prf.xs16_u32_(prf.core_u32_(val, tmp), tmp)
                np.minimum(seed, val, out=seed)
            np.bitwise_xor(seed, k3, out=val)
            prf.xs16_u32_(val, tmp)
    # green value xs16(core(core(xs16(s ^ k3)) ^ X(t))); ``val`` holds xs16(s ^ k3)
    prf.core_u32_(val, tmp)
    np.bitwise_xor(val, x_cand, out=val)
    prf.core_u32_(val, tmp)
    prf.xs16_u32_(val, tmp)
    return seed, val


def _count_chunk(
    layout: _Layout, sk: npt.NDArray[np.uint32], params: KgwParams, b: _Buffers, scored: IntArray, hits: IntArray
) -> None:
    """``(scored, hits)`` for one chunk of keys: the PRF (``_prf_chunk``), then the second-level dedup."""
    c = sk.shape[0]
    _, val = _prf_chunk(layout, sk, params, b)
    # tuples whose token occurs once: every one is its own (seed, token) pair
    val_s = np.take(val, layout.single_cols, axis=1, out=b.val_s[:c], mode="clip")
    np.less(val_s, np.uint32(params.threshold), out=b.bits[:c, : layout.n_single])
    hits[:] = _count_rows(b.bits[:c])  # the padding columns of b.bits are False
    scored[:] = layout.n_single
    if layout.n_multi == 0:
        return
    w = layout.width
    size = layout.multi.shape[0]
    # np.take (mode="clip": the indices are valid, and it writes to ``out`` unbuffered), not val[:, cols]:
    # fancy indexing along axis 1 returns F order, which would make the row sorts strided
    val_m = np.take(val, layout.multi, axis=1, out=b.val_m[:c], mode="clip")
    packed = np.left_shift(val_m, np.uint64(32), out=b.packed[:c], dtype=np.uint64)  # value in the high bits:
    packed |= layout.multi_tag  # random leading bits sort about twice as fast as the group number would
    packed.reshape(c, size // w, w).sort(axis=2)  # each bucket on its own
    # adjacent equal values are repeats of a (token, seed) pair; across a bucket boundary the groups differ
    dup = np.equal(packed[:, 1:], packed[:, :-1], out=b.dup[:c, : size - 1])
    scored += layout.n_multi - _count_rows(b.dup[:c])  # the padding of b.dup stays False
    green_m = np.less(packed, np.uint64(params.threshold << 32), out=b.green_m[:c])  # padding: never
    np.bitwise_and(dup, green_m[:, 1:], out=dup)  # green repeats
    hits += _count_rows(green_m) - _count_rows(b.dup[:c])


_BITWISE_COUNT = getattr(np, "bitwise_count", None)  # numpy >= 2.0


def _count_rows(bits: npt.NDArray[np.bool_]) -> IntArray:
    """True values per row of a C-contiguous ``(rows, 8·k)`` bool array: one popcount per 8 columns."""
    if _BITWISE_COUNT is None:
        counts: IntArray = np.count_nonzero(bits, axis=1).astype(np.int64)
        return counts
    out: IntArray = _BITWISE_COUNT(bits.view(np.uint64)).sum(axis=1, dtype=np.int64)
    return out
