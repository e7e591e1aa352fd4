"""A request's token targeting: the ids it steers or reads through ``logit_bias`` and vLLM's token-id
fields (``TARGETING_FIELDS``), bounded to ``MAX_BIAS_TOKENS``, counted, and keyed to see it change.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from detectors.tokens import _crc

MAX_BIAS_TOKENS = 512
#: vLLM's token-id extensions that steer or read chosen tokens, as a logit_bias does: ``logprob_token_ids``
#: reads the logprobs of up to 128 chosen ids per position (a chosen-token read without any bias),
#: ``allowed_token_ids`` bans every other token and ``bad_words`` bans the listed words (infinite biases).
TARGETING_FIELDS = ("logprob_token_ids", "allowed_token_ids", "bad_words")
_BAN = 100.0  # the magnitude a ban counts with: OpenAI's largest logit_bias
_NO_BIAS: tuple[tuple[int, ...], int, float, int] = ((), 0, 0.0, 0)


def _bias(body: Mapping[str, Any]) -> tuple[tuple[int, ...], int, float, int]:
    """Every token a request steers or reads by id: the ``logit_bias`` keys and the ``TARGETING_FIELDS``
    entries (numeric ids as themselves, anything else hashed), their count, the largest magnitude (a ban or an
    allow list counts as ``_BAN``) and a key of the whole targeting (to see it change between requests)."""
    raw = body.get("logit_bias")
    lb = raw if raw and isinstance(raw, Mapping) else None
    if "logprob_token_ids" in body or "allowed_token_ids" in body or "bad_words" in body:
        extra = [(name, v) for name in TARGETING_FIELDS if isinstance(v := body.get(name), list) and v]
    elif lb is None:
        return _NO_BIAS
    else:
        extra = []
    if lb is None and not extra:
        return _NO_BIAS
    toks: list[int] = []
    max_abs = 0.0
    entries = 0
    parts: list[str] = []
    if lb is not None:
        for k, v in lb.items():
            toks.append(_token(str(k)))
            if isinstance(v, int | float):
                max_abs = max(max_abs, _abs_float(v))
        entries += len(lb)
        parts.append(",".join(f"{k}:{lb[k]}" for k in sorted(lb, key=str)))
    for name, ids in extra:
        toks.extend(_token(str(t)) for t in ids[:MAX_BIAS_TOKENS])
        entries += len(ids)
        if name != "logprob_token_ids":
            max_abs = max(max_abs, _BAN)
        # The whole list is keyed (a fixed head with a sweeping tail past MAX_BIAS_TOKENS must change the key);
        # only short lists are sorted (sorting 100 000 strings costs ~30 ms): long ones in the client's order.
        listed = ",".join(sorted(map(str, ids)) if len(ids) <= MAX_BIAS_TOKENS else map(str, ids))
        parts.append(name + "=" + listed)
    return tuple(toks[:MAX_BIAS_TOKENS]), entries, max_abs, _crc(";".join(parts))


def _token(ks: str) -> int:
    # isdecimal, not isdigit: int() refuses digits such as "²" or "①" that isdigit accepts
    return int(ks) if ks.isdecimal() and len(ks) < 10 else _crc(ks)


def _abs_float(v: float) -> float:
    """``abs(float(v))``; an int beyond the float range (valid JSON, e.g. 10**400) reads as infinity."""
    try:
        return abs(float(v))
    except OverflowError:
        return math.inf
