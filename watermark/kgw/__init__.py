"""KGW green-list watermark, applied in the sampler of backends we run; detection needs only a tokenizer.

Importing this package (and ``params``, ``prf``, ``detect`` with its steps ``encode``, ``tuples`` and
``counting``, ``directives``, ``vllm_state``, ``vllm_plugin``) never imports torch or vllm: the core gateway
and ``ipgate verify --scheme kgw`` run without them. ``torch_core`` and ``hf`` need torch (the ``[torch]``
extra).
"""

from __future__ import annotations

from watermark.kgw.detect import KgwScheme
from watermark.kgw.directives import parse_spec, spec
from watermark.kgw.params import KgwParams


def load_scheme(tokenizer_path: str, params_spec: str | None = None) -> KgwScheme:
    """The detector ``ipgate verify --scheme kgw --tokenizer PATH [--kgw-params SPEC]`` uses.

    ``params_spec`` is ``g<gamma>-h<context width>-<seeding>`` (default ``g0.25-h4-selfhash``) and must
    match the generating backend's. Raises ``ValueError`` (message names the tokenizer or the spec) on bad
    input.
    """
    params = parse_spec(params_spec) if params_spec else KgwParams()
    return KgwScheme.from_tokenizer_file(tokenizer_path, params)


__all__ = ["KgwParams", "KgwScheme", "load_scheme", "parse_spec", "spec"]
