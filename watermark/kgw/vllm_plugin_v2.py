"""vLLM Model Runner V2 logits processor: the same per-client KGW watermark as ``vllm_plugin``, for the engine
loop that recent vLLM releases run by default.

vLLM has two engine loops with two logits-processor interfaces. The V1 model runner's
(``vllm.v1.sample.logits_processor.LogitsProcessor``: ``update_state(BatchUpdate)``, ``apply(logits)``) is
what ``vllm_plugin.KgwLogitsProcessor`` implements. Model Runner V2 (the default when Triton is available and
the configuration has nothing V2 lacks, e.g. vLLM 0.33) loads only classes of its own interface
(``vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor``) and refuses every other one at start-up:

    vllm serve MODEL --logits-processors watermark.kgw.vllm_plugin:KgwLogitsProcessorV2     # Model Runner V2
    VLLM_USE_V2_MODEL_RUNNER=0 vllm serve MODEL \\
        --logits-processors watermark.kgw.vllm_plugin:KgwLogitsProcessor                    # the V1 runner

The V2 interface: ``add_request(slot, SamplingParams) -> bool`` when a request enters a (recycled) slot,
``apply(logits, ctx)`` once per step for the whole batch, where ``ctx.idx_mapping_np`` gives each row's slot
and ``ctx.seq_lens_upper_bound_np`` how many tokens precede the token being sampled; the token history stays
on the device (``req_states.all_token_ids``, slot x position). So this class keeps only each watermarked
slot's key and strength (``vllm_state.SlotState``), picks the rows on the host (``vllm_state.select_v2``)
and gathers their previous tokens on the device: the last one from ``ctx.input_ids`` (the token fed this
step, which async scheduling may not have committed yet), the older ones from ``all_token_ids``. The bias is
``torch_core.watermark_rows_``, the same function as the V1 path's, so both give bit-identical logits.

Validation (``validate_params``, in the API process) and the server configuration (``IPGATE_KGW_PARAMS``,
the master secret) are shared with ``vllm_plugin``. Speculative decoding is refused when the engine builds the
processor (a request then owns several rows per step whose drafts are not in the history): the engine does not
start, rather than serving unwatermarked text. vllm and torch are imported lazily, as in ``vllm_plugin``.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

from watermark.kgw import directives
from watermark.kgw.vllm_plugin import (
    _is_primary,
    _process_params,
    _process_secret,
    _register,
    cache_size,
    logprobs_mode_warning,
    use_compile,
    validate_extra_args,
)
from watermark.kgw.vllm_state import SlotState, select_v2

logger = logging.getLogger(__name__)

SPECULATIVE_REFUSAL = (
    "ipgate kgw: speculative decoding is not supported (a request's draft rows are not in the token history "
    "the green lists are computed from); serve without --speculative-config"
)


def slot_state(extra_args: Any, params: Any, master: bytes | None) -> SlotState | None:
    """The state of a request entering a slot, or None when it carries no ipgate directive. Raises
    ``ValueError`` for an invalid directive (``validate_params`` refuses those before they reach the engine)."""
    directive = directives.parse(extra_args, params)
    if directive is None:
        return None
    return SlotState(directive.resolve(master), directive.delta)


@cache
def _processor_class() -> type:
    import torch
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor

    from watermark.kgw.torch_core import FusedBias, TableCache, watermark_rows_

    class _KgwLogitsProcessorV2(LogitsProcessor):  # type: ignore[misc]  # vllm ships no stubs we check
        """Per-request KGW bias for Model Runner V2; rows of other requests are left as they are."""

        @classmethod
        def validate_params(cls, sampling_params: Any) -> None:
            # API process, at admission: a bad or forged directive, and the gateway's liveness probe, are a 400
            validate_extra_args(getattr(sampling_params, "extra_args", None), _process_params(), _process_secret())

        def __init__(self, vllm_config: Any, req_states: Any) -> None:
            if getattr(vllm_config, "speculative_config", None) is not None:
                raise ValueError(SPECULATIVE_REFUSAL)
            self.params = _process_params()
            self.master = _process_secret()
            self.req_states = req_states
            self.slots: dict[int, SlotState] = {}
            self._cache: TableCache | None = None
            self._cache_size = cache_size()
            self._fused: FusedBias | None = None
            self._compile = use_compile()
            self._rows_mismatch_logged = False
            self._vllm_config = vllm_config
            if _register(vllm_config, self):
                logger.warning("ipgate kgw processor loaded twice for one engine; only the first instance applies "
                               "the watermark")
            logger.info("ipgate kgw processor (model runner V2): %s, master secret %s",
                        directives.spec(self.params),
                        "present" if self.master else "absent (only key-mode directives accepted)")
            if (note := logprobs_mode_warning(vllm_config)) is not None:
                logger.info("%s", note)

        def add_request(self, req_idx: int, sampling_params: Any) -> bool:
            self.slots.pop(req_idx, None)  # a recycled slot: nothing of its previous occupant survives
            try:
                state = slot_state(getattr(sampling_params, "extra_args", None), self.params, self.master)
            except ValueError as e:
                # validate_params refuses these at admission; if one slips through (another environment in the
                # engine process), serving it unwatermarked beats stopping the engine, but never silently
                logger.error("ipgate kgw: request NOT watermarked, invalid directive: %s", e)
                return False
            if state is None:
                return False
            self.slots[req_idx] = state
            return True

        def apply(self, logits: torch.Tensor, ctx: Any) -> torch.Tensor:
            if not self.slots or not _is_primary(self._vllm_config, self):
                return logits
            idx_mapping = ctx.idx_mapping_np
            if logits.shape[0] != len(idx_mapping):  # several rows per request: drafts (refused at start-up)
                if not self._rows_mismatch_logged:
                    self._rows_mismatch_logged = True
                    logger.error("ipgate kgw: %d logits rows for %d requests; this step is NOT watermarked "
                                 "(logged once)", logits.shape[0], len(idx_mapping))
                return logits
            h = self.params.prev_tokens
            sel = select_v2(self.slots, idx_mapping.tolist(), ctx.seq_lens_upper_bound_np.tolist(), h)
            if not sel.rows:
                return logits
            dev = logits.device
            rows = torch.tensor(sel.rows, dtype=torch.long, device=dev)
            slots = torch.tensor(sel.slots, dtype=torch.long, device=dev)
            ends = torch.tensor(sel.ends, dtype=torch.long, device=dev)
            history = self.req_states.all_token_ids.gpu
            positions = ends.unsqueeze(1) + torch.arange(-h, 0, dtype=torch.long, device=dev)  # oldest first
            prev = history[slots.unsqueeze(1), positions].to(torch.int64)
            prev[:, -1] = ctx.input_ids.index_select(0, rows).to(torch.int64)
            vocab = logits.shape[1]
            if self._cache is None or self._cache.vocab_size != vocab or self._cache.device != dev:
                self._cache = TableCache(self.params, vocab, dev, self._cache_size)
            if self._compile and dev.type == "cuda" and (self._fused is None or self._fused.vocab_size != vocab):
                self._fused = FusedBias(self.params, vocab)
            fused = self._fused if dev.type == "cuda" else None
            return watermark_rows_(logits, sel.rows, prev, sel.subkeys, sel.delta, self.params, self._cache, fused)

    _KgwLogitsProcessorV2.__name__ = _KgwLogitsProcessorV2.__qualname__ = "KgwLogitsProcessorV2"
    return _KgwLogitsProcessorV2


def __getattr__(name: str) -> Any:
    # PEP 562, as in vllm_plugin: vLLM's "module:Class" loader resolves the class with getattr.
    if name == "KgwLogitsProcessorV2":
        return _processor_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
