"""vLLM v1 logits-processor plugin: per-client KGW watermark inside ``vllm serve``.

Load it with either

    vllm serve MODEL --logits-processors watermark.kgw.vllm_plugin:KgwLogitsProcessor

or through the ``vllm.logits_processors`` entry point that ipgate's package declares (installing ipgate into
vLLM's environment is enough). It acts only on requests whose ``vllm_xargs`` carry an ipgate directive
(``watermark/kgw/directives.py``); every other request passes through untouched.

Server-side configuration (read when vLLM builds the processor, never at import):
``IPGATE_KGW_PARAMS`` = ``g0.25-h4-selfhash`` (the default); for "derive" directives, the master secret in
``IPGATE_WATERMARK_SECRET`` or the file named by ``IPGATE_WATERMARK_SECRET_FILE``; ``IPGATE_KGW_TABLE_CACHE``
= per-key tables kept on the device (default 64).

vllm is imported lazily: this module imports without vllm (and without torch) and builds the
``LogitsProcessor`` subclass the first time ``KgwLogitsProcessor`` is looked up, which is what vLLM's
``module:Class`` loader and its entry-point loader both do. The batching logic lives in ``vllm_state.py``
and is tested without vLLM. Interface followed: ``vllm.v1.sample.logits_processor.LogitsProcessor``
(``validate_params``, ``__init__(vllm_config, device, is_pin_memory)``, ``is_argmax_invariant``,
``update_state(BatchUpdate | None)``, ``apply(logits)``) — the legacy V1 model runner's interface.
Not supported by vLLM together with speculative decoding.
"""

from __future__ import annotations

import logging
import os
from functools import cache
from typing import Any

from watermark.keys import parse_master_secret
from watermark.kgw import directives
from watermark.kgw.params import KgwParams
from watermark.kgw.vllm_state import RowState

logger = logging.getLogger(__name__)

ENV_PARAMS = "IPGATE_KGW_PARAMS"
ENV_SECRET = "IPGATE_WATERMARK_SECRET"
ENV_SECRET_FILE = "IPGATE_WATERMARK_SECRET_FILE"
ENV_CACHE = "IPGATE_KGW_TABLE_CACHE"  # per-key tables kept on the GPU (see torch_core.TableCache)
ENV_COMPILE = "IPGATE_KGW_COMPILE"  # "0" turns off the fused (torch.compile) GPU kernel


def cache_size(environ: dict[str, str] | os._Environ[str] | None = None) -> int:
    env = os.environ if environ is None else environ
    raw = env.get(ENV_CACHE, "64")
    try:
        size = int(raw)
    except ValueError as e:
        raise ValueError(f"{ENV_CACHE} must be an integer, got {raw!r}") from e
    if size < 1:
        raise ValueError(f"{ENV_CACHE} must be >= 1, got {size}")
    return size


def use_compile(environ: dict[str, str] | os._Environ[str] | None = None) -> bool:
    """Fuse the bias into one compiled GPU kernel (default on; ``IPGATE_KGW_COMPILE=0`` turns it off)."""
    env = os.environ if environ is None else environ
    return env.get(ENV_COMPILE, "1").strip().lower() not in {"0", "false", "no", "off"}


def server_params(environ: dict[str, str] | os._Environ[str] | None = None) -> KgwParams:
    env = os.environ if environ is None else environ
    raw = env.get(ENV_PARAMS)
    return directives.parse_spec(raw) if raw else KgwParams()


def server_secret(environ: dict[str, str] | os._Environ[str] | None = None) -> bytes | None:
    env = os.environ if environ is None else environ
    if env.get(ENV_SECRET):
        return parse_master_secret(env[ENV_SECRET])
    path = env.get(ENV_SECRET_FILE)
    if path:
        with open(path, "rb") as f:
            return parse_master_secret(f.read())
    return None


def make_row_state(
    extra_args: Any, prompt_ids: list[int] | None, output_ids: list[int], params: KgwParams, master: bytes | None
) -> RowState | None:
    """The state of one newly added request, or None when it carries no ipgate directive."""
    directive = directives.parse(extra_args, params)
    if directive is None:
        return None
    tail = list(prompt_ids[-params.prev_tokens :]) if prompt_ids else []
    return RowState(directive.resolve(master), directive.delta, tail, output_ids)


@cache
def _process_params() -> KgwParams:
    return server_params()


@cache
def _process_secret() -> bytes | None:
    return server_secret()


@cache
def _processor_class() -> type:
    import torch
    from vllm.v1.sample.logits_processor import LogitsProcessor

    from watermark.kgw.torch_core import FusedBias, TableCache, watermark_rows_
    from watermark.kgw.vllm_state import apply_batch_update, gather

    class _KgwLogitsProcessor(LogitsProcessor):  # type: ignore[misc]  # vllm ships no stubs we check
        """Per-request KGW bias; rows without an ipgate directive are left as they are."""

        @classmethod
        def validate_params(cls, sampling_params: Any) -> None:
            # Runs in the API process before the request is queued: a bad directive is a 400 there, so
            # update_state (in the engine loop, where an exception would stop the engine) never sees one.
            d = directives.parse(getattr(sampling_params, "extra_args", None), _process_params())
            if d is not None and d.subkeys is None and _process_secret() is None:
                raise ValueError(
                    f"{directives.F_CLIENT} given but this server has no {ENV_SECRET} / {ENV_SECRET_FILE}"
                )

        def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
            self.params = _process_params()
            self.master = _process_secret()
            self.device = device
            self.rows: dict[int, RowState] = {}
            self._cache: TableCache | None = None
            self._cache_size = cache_size()
            self._fused: FusedBias | None = None
            self._compile = use_compile()
            logger.info(
                "ipgate kgw processor: %s, master secret %s",
                directives.spec(self.params),
                "present" if self.master else "absent (only key-mode directives accepted)",
            )

        def is_argmax_invariant(self) -> bool:
            # Adding δ to green logits changes which token is the argmax, so greedy requests need it too.
            return False

        def _new_row(self, sp: Any, prompt: list[int] | None, out: list[int]) -> RowState | None:
            try:
                return make_row_state(getattr(sp, "extra_args", None), prompt, out, self.params, self.master)
            except ValueError as e:
                # validate_params rejects these before they reach the engine; if one slips through (a
                # different environment in the engine process), serving it unwatermarked beats stopping
                # the engine for every request, but it is never silent.
                logger.error("ipgate kgw: request NOT watermarked, invalid directive: %s", e)
                return None

        def update_state(self, batch_update: Any) -> None:
            apply_batch_update(self.rows, batch_update, self._new_row)

        def apply(self, logits: torch.Tensor) -> torch.Tensor:
            if not self.rows:
                return logits
            g = gather(self.rows, self.params.prev_tokens, logits.shape[0])
            if not g.rows:
                return logits
            vocab = logits.shape[1]
            if self._cache is None or self._cache.vocab_size != vocab or self._cache.device != logits.device:
                self._cache = TableCache(self.params, vocab, logits.device, self._cache_size)
            if self._compile and logits.device.type == "cuda" and (
                self._fused is None or self._fused.vocab_size != vocab
            ):
                self._fused = FusedBias(self.params, vocab)
            fused = self._fused if logits.device.type == "cuda" else None
            return watermark_rows_(logits, g.rows, g.prev, g.subkeys, g.delta, self.params, self._cache, fused)

    _KgwLogitsProcessor.__name__ = _KgwLogitsProcessor.__qualname__ = "KgwLogitsProcessor"
    return _KgwLogitsProcessor


def __getattr__(name: str) -> Any:
    # PEP 562: vLLM resolves "watermark.kgw.vllm_plugin:KgwLogitsProcessor" with getattr, which lands here.
    if name == "KgwLogitsProcessor":
        return _processor_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
