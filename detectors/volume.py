"""Volume and shape: how much a client takes and in what form.

Looks at: request rate and tokens per minute (decayed with a 10-minute half-life, so the figure is a
recent rate, not a lifetime average), the output/input token ratio, outputs that run to ``max_tokens``
(``finish_reason == "length"``), ``n > 1``, the single-turn share, and sweeps over sampling parameters
(many distinct temperature/top_p pairs). Each alone is weak (a batch job is high-volume and single-turn);
the combiner weighs them together with the content detectors.
"""

from __future__ import annotations

import math
import struct
import zlib
from typing import ClassVar

from detectors.base import Counters, any_of, ramp, shrunk_share, time_decay
from detectors.types import DetectorScore, RequestFeatures, ResponseFeatures

RATE_HALF_LIFE_S = 600.0
# Tokens one request or response can add. Far above any real value (the evidence ramps saturate at 40 000
# tokens/min), and it keeps the float32 fields finite: a max_tokens of 10**39 (valid JSON, accepted by
# the gateway's parse step) made ``dump`` raise OverflowError, so the gateway never saved the client's
# state again.
MAX_TOKENS_PER_EVENT = 1 << 30
_F32_MAX = 3.4e38
N, MULTI_N, SINGLE, RESP, LENGTH_HIT, TOK_IN, TOK_OUT, SWEEP = range(8)
_RATE = struct.Struct("<ff4I")
_STATE = struct.Struct("<d8f" + _RATE.format[1:])  # counters (timestamp, 8 values), then the rates


def _tokens(v: float) -> float:
    """A usage token count clamped to [0, MAX_TOKENS_PER_EVENT]; NaN counts as 0."""
    return float(min(v, MAX_TOKENS_PER_EVENT)) if v > 0 else 0.0


class VolumeState:
    __slots__ = ("counters", "rate", "recent_sampling", "tok_rate")

    def __init__(self) -> None:
        self.counters = Counters(8)
        self.rate = 0.0  # decayed request count, 10-minute half-life
        self.tok_rate = 0.0  # decayed requested-token count (prompt words + max_tokens) x n
        self.recent_sampling = [0, 0, 0, 0]

    def per_minute(self, value: float) -> float:
        # A decayed count with half-life H at a steady rate r per second converges to r * H / ln 2.
        return value * math.log(2) / RATE_HALF_LIFE_S * 60.0


class VolumeShape:
    name: ClassVar[str] = "volume"
    wants_response: ClassVar[bool] = True  # the only detector that reads usage and finish reasons
    state_bytes: ClassVar[int] = 8 + 4 * 8 + _RATE.size

    def new_state(self) -> VolumeState:
        return VolumeState()

    def dump(self, state: VolumeState) -> bytes:
        return state.counters.dump() + _RATE.pack(
            min(state.rate, _F32_MAX), min(state.tok_rate, _F32_MAX), *state.recent_sampling
        )

    def load(self, data: bytes) -> VolumeState:
        if len(data) != _STATE.size:
            raise ValueError(f"{self.name}: state has the wrong size")
        ts, *values = _STATE.unpack(data)  # the whole state in one call
        st = VolumeState.__new__(VolumeState)  # field by field: no zero counters allocated to be replaced
        st.counters = Counters.from_values(ts, tuple(values[:8]), data)
        rate, tok_rate = values[8], values[9]
        # decayed counts: in [0, the float32 maximum ``dump`` clamps them to] (False for NaN); unlike the counters
        # they decay with time only, so a sustained high rate may legitimately approach that maximum
        if not (0.0 <= rate <= _F32_MAX and 0.0 <= tok_rate <= _F32_MAX):
            raise ValueError(f"{self.name}: state holds rates outside [0, {_F32_MAX:g}]")
        st.rate, st.tok_rate, st.recent_sampling = rate, tok_rate, values[10:]
        return st

    def observe(self, state: VolumeState, feats: RequestFeatures, now: float) -> DetectorScore:
        dt = now - state.counters.last_ts if state.counters.last_ts else 0.0
        decay = time_decay(dt, RATE_HALF_LIFE_S)
        state.counters.advance(now)
        c = state.counters.c
        c[N] += 1
        # adding a False is adding 0.0: skipped (the counters are never -0.0, so the values are unchanged)
        if feats.n > 1:
            c[MULTI_N] += 1
        if feats.n_messages <= 1:
            c[SINGLE] += 1
        state.rate = state.rate * decay + 1.0
        asked = (feats.prompt_words + (feats.max_tokens or 256)) * feats.n
        state.tok_rate = state.tok_rate * decay + min(max(asked, 0), MAX_TOKENS_PER_EVENT)
        sampling = 0
        if feats.temperature is not None or feats.top_p is not None:
            pair = struct.pack("<dd", -1.0 if feats.temperature is None else feats.temperature,
                               -1.0 if feats.top_p is None else feats.top_p)
            sampling = zlib.crc32(pair) or 1
        if sampling and sampling not in state.recent_sampling:
            c[SWEEP] += 1
            state.recent_sampling = [*state.recent_sampling[1:], sampling]
        return self.score(state, now)

    def observe_response(self, state: VolumeState, resp: ResponseFeatures, now: float) -> None:
        c = state.counters.c
        if resp.status >= 400:
            return
        c[RESP] += 1
        if "length" in resp.finish_reasons:
            c[LENGTH_HIT] += 1
        if resp.prompt_tokens is not None and resp.completion_tokens is not None:
            # Usage comes from the upstream: a negative, non-finite or absurd count must not poison the
            # counters (a NaN made the volume score NaN, which the combiner read as 0 for the whole client).
            c[TOK_IN] += _tokens(resp.prompt_tokens)
            c[TOK_OUT] += _tokens(resp.completion_tokens)

    def score(self, state: VolumeState, now: float) -> DetectorScore:
        c = state.counters.c.tolist()
        n = c[N]
        rpm = state.per_minute(state.rate)
        tpm = state.per_minute(state.tok_rate)
        ratio = c[TOK_OUT] / c[TOK_IN] if c[TOK_IN] > 0 else 0.0
        e_rate = ramp(rpm, 8.0, 40.0)
        e_tokens = ramp(tpm, 8_000.0, 40_000.0)
        e_multi = ramp(shrunk_share(c[MULTI_N], n, 10.0), 0.2, 0.6)
        e_length = ramp(shrunk_share(c[LENGTH_HIT], c[RESP], 10.0), 0.3, 0.8)
        e_ratio = ramp(ratio, 8.0, 30.0) * ramp(c[RESP], 10.0, 30.0)
        e_sweep = ramp(shrunk_share(c[SWEEP], n, 10.0), 0.2, 0.6)
        single = shrunk_share(c[SINGLE], n, 10.0)
        # Single-turn traffic is normal for API users; it only amplifies the other evidence.
        evidence = any_of(e_rate, 0.7 * e_tokens, e_multi, 0.6 * e_length, 0.5 * e_ratio, 0.7 * e_sweep)
        score = evidence * (0.6 + 0.4 * single)
        reasons: list[str] = []
        if e_rate > 0:
            reasons.append(f"{rpm:.0f} requests/min over the last minutes")
        if e_tokens > 0:
            reasons.append(f"{tpm:,.0f} requested tokens/min")
        if e_multi > 0:
            reasons.append(f"n > 1 on {c[MULTI_N]:.0f} of the last {n:.0f} requests")
        if e_length > 0:
            reasons.append(f"{c[LENGTH_HIT]:.0f} of {c[RESP]:.0f} recent outputs ran to max_tokens")
        if e_ratio > 0:
            reasons.append(f"output/input token ratio {ratio:.1f}")
        if e_sweep > 0:
            reasons.append(f"sampling parameters changed on {c[SWEEP]:.0f} of the last {n:.0f} requests")
        return DetectorScore(self.name, float(score), tuple(reasons))
