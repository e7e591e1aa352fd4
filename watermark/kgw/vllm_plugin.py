"""vLLM logits-processor plugin: per-client KGW watermark inside ``vllm serve`` (V1 model runner).

Load it with

    VLLM_USE_V2_MODEL_RUNNER=0 vllm serve MODEL --logits-processors watermark.kgw.vllm_plugin:KgwLogitsProcessor

or, for Model Runner V2 (the default in recent vLLM), ``watermark.kgw.vllm_plugin:KgwLogitsProcessorV2``
(``vllm_plugin_v2.py``; this module resolves both names). ipgate declares no ``vllm.logits_processors`` entry
point: vLLM loads that group into whichever engine loop runs, and V2 refuses a V1 class there, which stopped
``vllm serve`` from starting wherever ipgate was installed (vLLM 0.33). It acts only on requests whose
``vllm_xargs`` carry an ipgate directive (``watermark/kgw/directives.py``); every other request passes through
untouched.

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
import weakref
from collections.abc import Mapping
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


def validate_extra_args(extra_args: Any, params: KgwParams, master: bytes | None) -> None:
    """What ``validate_params`` checks (vLLM's API process, before the request is queued): raises
    ``ValueError`` (vLLM answers HTTP 400 with its text) for an invalid or forged directive, and for the
    gateway's liveness probe, which every loaded plugin refuses with its report
    (``directives.probe_refusal``). Every message starts with ``directives.REFUSAL_MARK``. Module level (no
    vllm, no torch) so the bundled simulated backend emulates a plugin-loaded engine with this very code."""
    try:
        if isinstance(extra_args, Mapping) and directives.F_PROBE in extra_args:
            raise ValueError(directives.probe_refusal(extra_args[directives.F_PROBE], params, master))
        d = directives.parse(extra_args, params)
        if d is not None and d.subkeys is None:
            if master is None:
                raise ValueError(
                    f"{directives.F_CLIENT} given but this server has no {ENV_SECRET} / {ENV_SECRET_FILE}"
                )
            d.resolve(master)  # checks the tag: a forged directive is a 400 here
    except ValueError as e:
        raise ValueError(directives.refusal(e)) from None


def logprobs_mode_warning(vllm_config: Any) -> str | None:
    """The start-up note for an engine whose returned logprobs are computed before the watermark, or None.

    vLLM computes the logprobs it returns from the logits *before* any logits processor unless it runs with
    ``--logprobs-mode processed_logprobs`` (``ModelConfig.logprobs_mode``, default ``raw_logprobs``). Either mode
    gives something away, and the operator chooses (deploy/README.md): raw logprobs are the unwatermarked
    distribution (soft labels a distiller can learn from without the watermark, and — against how often tokens
    are sampled — slow evidence of the green lists); processed logprobs carry the green-list bias itself, which
    a client holding the base model's weights reads off in one query per context. The plugin cannot change the
    mode; it says which one runs, once, when the engine builds it."""
    mode = getattr(getattr(vllm_config, "model_config", None), "logprobs_mode", None)
    if not isinstance(mode, str) or not mode.startswith("raw"):
        return None
    return (f"ipgate kgw: vLLM runs with --logprobs-mode {mode}: the logprobs it returns are computed before the "
            "watermark (the unwatermarked distribution: soft labels that do not carry it); cap or withhold "
            "logprobs for suspicious tiers (hardening.max_top_logprobs), or see deploy/README.md for "
            "--logprobs-mode processed_logprobs and its own cost")


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


# vLLM builds its custom processors from the entry points *plus* ``--logits-processors``, without removing
# duplicates: a class that reaches an engine twice (another package's entry point naming it, or a class named
# twice) would add δ twice. Instances built for the same ``vllm_config`` object are therefore registered here
# and only the oldest live one biases; the others keep their bookkeeping (cheap) and take over if it is dropped
# (e.g. a rebuilt input batch).
_LIVE: dict[int, list[weakref.ref[Any]]] = {}
_CONFIGS: dict[int, object] = {}  # keeps each config alive, so its id() is never reused for another


def _register(vllm_config: object, instance: object) -> bool:
    """Register ``instance`` as built for ``vllm_config``; True when another live instance already was."""
    if vllm_config is None:  # no engine identity to compare (tests, direct use): always independent
        return False
    key = id(vllm_config)
    _CONFIGS[key] = vllm_config
    live = [r for r in _LIVE.get(key, []) if r() is not None]
    live.append(weakref.ref(instance))
    _LIVE[key] = live
    return len(live) > 1


def _is_primary(vllm_config: object, instance: object) -> bool:
    if vllm_config is None:
        return True
    for ref in _LIVE.get(id(vllm_config), []):
        alive = ref()
        if alive is not None:
            return alive is instance
    return True


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
            # The gateway's liveness probe is refused here too, which is how it knows the plugin is loaded.
            validate_extra_args(getattr(sampling_params, "extra_args", None), _process_params(), _process_secret())

        def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
            self.params = _process_params()
            self.master = _process_secret()
            self.device = device
            self.rows: dict[int, RowState] = {}
            self._cache: TableCache | None = None
            self._cache_size = cache_size()
            self._fused: FusedBias | None = None
            self._compile = use_compile()
            self._placeholders_seen = False
            self._vllm_config = vllm_config
            if _register(vllm_config, self):
                logger.warning(
                    "ipgate kgw processor loaded twice for one engine (an entry point and --logits-processors?); "
                    "only the first instance applies the watermark"
                )
            logger.info(
                "ipgate kgw processor: %s, master secret %s",
                directives.spec(self.params),
                "present" if self.master else "absent (only key-mode directives accepted)",
            )
            if (note := logprobs_mode_warning(vllm_config)) is not None:
                logger.info("%s", note)

        def is_argmax_invariant(self) -> bool:
            # Adding δ to green logits changes which token is the argmax, so greedy requests need it too.
            return False

        def needs_output_token_ids(self) -> bool:
            # The green list is a function of the previous token *ids*. Under async scheduling (vLLM's
            # default in recent releases) the engine leaves ``-1`` placeholders in the output lists unless
            # a processor asks for the real ids here; with placeholders every step would be biased with a
            # context detection never sees, silently losing the watermark. Always True (not "only while a
            # watermarked row exists"): vLLM versions differ in when they ask.
            return True

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
            if not self.rows or not _is_primary(self._vllm_config, self):
                return logits
            g = gather(self.rows, self.params.prev_tokens, logits.shape[0])
            if bool(g.placeholders) != self._placeholders_seen:
                self._placeholders_seen = bool(g.placeholders)
                if g.placeholders:  # logged on each change of state, not per step
                    logger.warning(
                        "ipgate kgw: %d row(s) NOT watermarked this step: their context holds placeholder "
                        "token ids (async scheduling without output-token backfill?)",
                        len(g.placeholders),
                    )
                else:
                    logger.info("ipgate kgw: no more placeholder contexts")
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
    if name == "KgwLogitsProcessorV2":  # Model Runner V2 (watermark/kgw/vllm_plugin_v2.py): one module to name
        from watermark.kgw import vllm_plugin_v2

        return vllm_plugin_v2._processor_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
