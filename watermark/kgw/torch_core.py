"""The batched KGW green-list bias over ``(batch, vocab)`` logits (torch; the only place KGW uses torch).

One call handles a whole decoding step: each row has its own client key and its own context, and the green
mask is computed for every vocabulary id at once with elementwise integer ops on an ``arange(V)`` — no
Python loop over the vocabulary or over the rows, no per-row ``torch.Generator``, so it runs as a handful of
fused elementwise kernels on the logits' device. The PRF is ``watermark.kgw.prf``; detection evaluates the
same expressions with numpy, so a token that was biased here is exactly a token that scores green there.

Green-ness is defined per token id, not through a permutation of ``range(V)``: a model whose logits are
padded beyond the tokenizer's vocabulary (common) therefore needs no agreement on ``V`` with the detector.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from watermark.kgw import prf
from watermark.kgw.params import KgwParams


def keys_tensor(client_keys: Sequence[bytes], device: torch.device | str = "cpu") -> torch.Tensor:
    """``(B, 4)`` int64 tensor of the PRF subkeys of each row's client key."""
    return subkeys_tensor([prf.subkeys(k) for k in client_keys], device)


def subkeys_tensor(
    subkeys: Sequence[tuple[int, int, int, int]], device: torch.device | str = "cpu"
) -> torch.Tensor:
    return torch.tensor(list(subkeys), dtype=torch.int64, device=device).reshape(len(subkeys), 4)


@dataclass(frozen=True, slots=True)
class KeyTables:
    """The context-independent parts of the PRF for a batch of rows, each ``(B or 1, V)`` int64."""

    cand_hash: torch.Tensor  # th(t)
    anchor: torch.Tensor | None  # ah(t), selfhash only
    self_term: torch.Tensor | None  # mix(th(t) ^ ah(t)), the candidate's own term of the selfhash min


def key_tables(keys: torch.Tensor, vocab_size: int, params: KgwParams) -> KeyTables:
    """Compute the per-key tables for ``keys`` (``(B, 4)``) directly (no cache)."""
    vocab = torch.arange(vocab_size, dtype=torch.int64, device=keys.device).unsqueeze(0)  # (1, V)
    cand_hash = prf.token_hash(vocab, keys[:, 0:1])
    if params.seeding != "selfhash":
        return KeyTables(cand_hash, None, None)
    anchor = prf.anchor_hash(vocab, keys[:, 2:3])
    return KeyTables(cand_hash, anchor, prf.mix(cand_hash ^ anchor))


def green_mask(
    prev: torch.Tensor,
    keys: torch.Tensor,
    vocab_size: int,
    params: KgwParams,
    tables: KeyTables | None = None,
) -> torch.Tensor:
    """Boolean ``(B, V)``: which token ids are green for each row.

    ``prev`` is ``(B, params.prev_tokens)`` int64, the previous token ids of each row, oldest first;
    ``keys`` is ``(B, 4)`` from ``keys_tensor``; ``tables`` (optional) are ``key_tables(keys, ...)``
    computed earlier or taken from a ``TableCache`` — the result is the same either way.
    """
    p = params.prev_tokens
    if prev.dim() != 2 or prev.shape[1] != p:
        raise ValueError(f"prev must have shape (batch, {p}), got {tuple(prev.shape)}")
    if keys.shape != (prev.shape[0], 4):
        raise ValueError(f"keys must have shape ({prev.shape[0]}, 4), got {tuple(keys.shape)}")
    prev = prev.to(torch.int64)
    if tables is None:
        tables = key_tables(keys, vocab_size, params)
    k0, k1, k3 = keys[:, 0:1], keys[:, 1:2], keys[:, 3:4]  # (B, 1) each, broadcast over V
    window = [prf.token_hash(prev[:, j : j + 1], k0) for j in range(p)]  # p x (B, 1)
    if params.seeding == "lefthash":
        seed = prf.lefthash_seed(window, k1)  # (B, 1)
    elif params.seeding == "minhash":
        seed = prf.minhash_seed(window, k1, torch.minimum)  # (B, 1)
    else:
        assert tables.anchor is not None and tables.self_term is not None  # built for selfhash above
        seed = tables.self_term
        for wh in window:
            seed = torch.minimum(seed, prf.mix(wh ^ tables.anchor))  # (B, V)
    value: torch.Tensor = prf.green_value(seed, tables.cand_hash, k3)
    return value < params.threshold


class TableCache:
    """LRU cache of per-key tables on one device, so a decoding step recomputes only the context-dependent
    part of the PRF (one mix per (row, token) instead of two for lefthash/minhash, three fewer for
    selfhash). Memory: ``size`` entries of V int64 each, three per entry for selfhash — 1.2 MB per key at
    V = 50k, so the default 64 keys hold 77 MB; keys beyond that are recomputed (correct, only slower)."""

    def __init__(self, params: KgwParams, vocab_size: int, device: torch.device | str, size: int = 64) -> None:
        if size < 1:
            raise ValueError(f"TableCache size must be >= 1, got {size}")
        self._params = params
        self._vocab = vocab_size
        self._device = torch.device(device)
        self._size = size
        self._tables: OrderedDict[tuple[int, ...], KeyTables] = OrderedDict()

    @property
    def vocab_size(self) -> int:
        return self._vocab

    @property
    def device(self) -> torch.device:
        return self._device

    def _one(self, ident: tuple[int, int, int, int]) -> KeyTables:
        hit = self._tables.get(ident)
        if hit is not None:
            self._tables.move_to_end(ident)
            return hit
        row = torch.tensor([ident], dtype=torch.int64, device=self._device)
        made = key_tables(row, self._vocab, self._params)
        self._tables[ident] = made
        if len(self._tables) > self._size:
            self._tables.popitem(last=False)
        return made

    def tables_for(self, subkeys: Sequence[tuple[int, int, int, int]]) -> list[KeyTables]:
        """One ``(1, V)`` table set per row (cached objects, no copies; Python-int subkeys, so no device
        sync). ``watermark_logits_`` combines them per chunk of rows."""
        if not subkeys:
            raise ValueError("tables_for needs at least one row")
        return [self._one(k) for k in subkeys]


def combine(parts: Sequence[KeyTables]) -> KeyTables:
    """Stack per-row tables into ``(B, V)`` ones; rows that all share one key keep the ``(1, V)`` tables
    (broadcast, no copy)."""
    if all(t is parts[0] for t in parts):
        return parts[0]

    def cat(items: list[torch.Tensor | None]) -> torch.Tensor | None:
        return None if items[0] is None else torch.cat([i for i in items if i is not None])

    cand = torch.cat([t.cand_hash for t in parts])
    return KeyTables(cand, cat([t.anchor for t in parts]), cat([t.self_term for t in parts]))


def watermark_logits_(
    logits: torch.Tensor,
    prev: torch.Tensor,
    keys: torch.Tensor,
    params: KgwParams,
    delta: torch.Tensor | float | None = None,
    tables: KeyTables | Sequence[KeyTables] | None = None,
) -> torch.Tensor:
    """Add δ to the green logits of every row, in place; returns ``logits``.

    ``tables`` (optional, same result either way): ``key_tables(keys, ...)`` or the per-row list from
    ``TableCache.tables_for``.

    ``delta`` is a scalar or a ``(B,)`` tensor (per-request strength, e.g. stronger for a suspicious
    tier); it defaults to ``params.delta``. Rows with δ = 0 are left numerically unchanged.
    """
    if logits.dim() != 2 or logits.shape[0] != prev.shape[0]:
        raise ValueError(f"logits must be (batch, vocab) with batch {prev.shape[0]}, got {tuple(logits.shape)}")
    dev, b, vocab = logits.device, logits.shape[0], logits.shape[1]
    prev, keys = prev.to(dev), keys.to(dev)
    d = params.delta if delta is None else delta
    d_rows = d.to(device=dev, dtype=logits.dtype) if isinstance(d, torch.Tensor) else None
    # The mask is a chain of elementwise int64 ops with (rows, V) temporaries. On a GPU one pass over the
    # whole batch is best; on a CPU the temporaries of a whole batch fall out of cache and each op becomes
    # memory-bound, so rows go through in cache-sized chunks (about 2x faster at B = 8, V = 50k).
    step = b if dev.type != "cpu" else max(1, _CPU_CHUNK_LANES // max(1, vocab))
    for lo in range(0, b, step):
        hi = min(b, lo + step)
        sub_tables = None if tables is None else _rows(tables, lo, hi)
        mask = green_mask(prev[lo:hi], keys[lo:hi], vocab, params, sub_tables).to(logits.dtype)
        if d_rows is not None:
            mask.mul_(d_rows[lo:hi].unsqueeze(1))
        else:
            mask.mul_(float(d))
        logits[lo:hi].add_(mask)
    return logits


_CPU_CHUNK_LANES = 1 << 16


def _rows(tables: KeyTables | Sequence[KeyTables], lo: int, hi: int) -> KeyTables:
    """The tables of rows ``lo:hi`` (shared ``(1, V)`` tables broadcast and are kept as they are)."""
    if not isinstance(tables, KeyTables):
        return combine(tables[lo:hi])
    if tables.cand_hash.shape[0] == 1:
        return tables

    def cut(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t[lo:hi]

    return KeyTables(tables.cand_hash[lo:hi], cut(tables.anchor), cut(tables.self_term))


class FusedBias:
    """The whole mask-and-add as one ``torch.compile``d function, for GPUs.

    Eagerly, the mask is a chain of a few dozen small elementwise int64 kernels, so on a GPU a decoding step
    is launch-bound: about 1 ms per step at V = 128k on an H100 whatever the batch size. Compiled, the chain
    fuses into one kernel: 65–140 µs for the kernel alone, 180–430 µs for the plugin's whole path at
    B = 1–64 (eager: 1.3–4.4 ms), bit-identical to the eager result (``bench/kgw_gpu_check.py``,
    BENCHMARKS.md). It recomputes the per-key tables inside the kernel, which
    is cheaper than reading cached ones. The first call per batch shape compiles (seconds); the batch
    dimension becomes dynamic after the second shape, so a serving engine does not recompile per step.
    """

    def __init__(self, params: KgwParams, vocab_size: int, *, backend: str = "inductor") -> None:
        self.params = params
        self.vocab_size = vocab_size

        def biased(logits: torch.Tensor, prev: torch.Tensor, keys: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
            mask = green_mask(prev, keys, vocab_size, params)
            return logits + mask.to(logits.dtype) * delta.to(logits.dtype).unsqueeze(1)

        self._fn = torch.compile(biased, backend=backend)

    def __call__(
        self, logits: torch.Tensor, prev: torch.Tensor, keys: torch.Tensor, delta: torch.Tensor
    ) -> torch.Tensor:
        """Return ``logits`` with ``delta[i]`` added to row i's green ids (a new tensor)."""
        out: torch.Tensor = self._fn(logits, prev, keys, delta)
        return out


def watermark_rows_(
    logits: torch.Tensor,
    rows: Sequence[int],
    prev: Sequence[Sequence[int]] | torch.Tensor,
    subkeys: Sequence[tuple[int, int, int, int]],
    delta: Sequence[float],
    params: KgwParams,
    cache: TableCache,
    fused: FusedBias | None = None,
) -> torch.Tensor:
    """Bias only the listed ``rows`` of a ``(num_reqs, V)`` logits tensor in place (the vLLM path: the
    persistent batch mixes watermarked requests, other clients' requests and unwatermarked ones).
    ``prev``: each row's previous token ids, oldest first, as lists (the V1 plugin reads them from the
    engine's host-side lists) or as an ``(R, prev_tokens)`` int64 tensor already on the logits' device (the
    V2 plugin gathers them there, without a device-to-host copy).
    With ``fused`` (GPU engines), the rows go through the compiled kernel instead of the eager chain."""
    if not rows:
        return logits
    dev = logits.device
    idx = torch.tensor(list(rows), dtype=torch.long, device=dev)
    prev_t = prev.to(dev) if isinstance(prev, torch.Tensor) else \
        torch.tensor([list(p) for p in prev], dtype=torch.int64, device=dev)
    sub = logits.index_select(0, idx)
    if fused is not None:
        deltas = torch.tensor(list(delta), dtype=torch.float32, device=dev)
        biased = fused(sub, prev_t, subkeys_tensor(subkeys, dev), deltas)
        logits.index_copy_(0, idx, biased)
        return logits
    watermark_logits_(
        sub,
        prev_t,
        subkeys_tensor(subkeys, dev),
        params,
        torch.tensor(list(delta), dtype=logits.dtype, device=dev),
        cache.tables_for(subkeys),
    )
    logits.index_copy_(0, idx, sub)
    return logits
