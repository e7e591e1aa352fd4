"""Hugging Face ``transformers`` adapter: a ``LogitsProcessor`` that applies the KGW bias per row.

Usage::

    from watermark.keys import ...              # derive the client's key from the master secret
    proc = KgwLogitsProcessor(client_key, KgwParams())
    model.generate(**inputs, logits_processor=LogitsProcessorList([proc]), do_sample=True)

One processor serves one ``generate`` call. ``keys`` may be a single key (every row) or one key per
prompt row; with ``num_beams``/``num_return_sequences`` > 1 each key is repeated for the expanded rows.
Rows whose history is shorter than the PRF's window are left unbiased — detection skips the same
positions, so nothing is scored that was not watermarked.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LogitsProcessor

from watermark.kgw import prf
from watermark.kgw.params import KgwParams
from watermark.kgw.torch_core import TableCache, subkeys_tensor, watermark_logits_


class KgwLogitsProcessor(LogitsProcessor):  # type: ignore[misc]  # transformers ships no type stubs
    def __init__(
        self,
        keys: bytes | Sequence[bytes],
        params: KgwParams | None = None,
        delta: float | None = None,
    ) -> None:
        self.params = params or KgwParams()
        key_list = [keys] if isinstance(keys, bytes) else list(keys)
        if not key_list:
            raise ValueError("KgwLogitsProcessor needs at least one client key")
        self._subkeys = [prf.subkeys(k) for k in key_list]
        self.delta = self.params.delta if delta is None else float(delta)
        if not 0.0 <= self.delta <= 50.0:
            raise ValueError(f"kgw delta must be in [0, 50], got {self.delta}")
        self._cache: TableCache | None = None

    def _row_subkeys(self, rows: int) -> list[tuple[int, int, int, int]]:
        n = len(self._subkeys)
        if rows % n != 0:
            raise ValueError(f"batch of {rows} rows cannot be split among {n} client keys")
        # generate() expands each prompt row in place (beams / return sequences are contiguous).
        return [k for k in self._subkeys for _ in range(rows // n)]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        p = self.params.prev_tokens
        if input_ids.shape[1] < p or self.delta == 0.0:
            return scores
        subkeys = self._row_subkeys(scores.shape[0])
        keys = subkeys_tensor(subkeys, scores.device)
        vocab = scores.shape[1]
        cache = self._cache
        if cache is None or cache.vocab_size != vocab or cache.device != scores.device:
            cache = self._cache = TableCache(self.params, vocab, scores.device)
        # generate() treats the returned tensor as new scores; work on a copy so callers holding the input
        # (e.g. output_scores=True keeps raw scores) do not see it change.
        out = scores.clone()
        watermark_logits_(out, input_ids[:, -p:], keys, self.params, self.delta, cache.tables_for(subkeys))
        return out  # type: ignore[return-value]  # same dtype and shape as scores

