"""Logit-channel probing (Carlini et al. 2024; Finlayson et al. 2024).

Looks at: ``logit_bias`` on many distinct tokens and at large magnitudes, ``logit_bias`` combined with
``logprobs``/``top_logprobs``, the share of ``max_tokens <= 2``, the same prompt repeated with a changing
bias or seed, and ``echo`` with logprobs. A legitimate application sets a fixed, small bias (banning a
few tokens) or asks for logprobs on ordinary prompts; the attack sweeps biases over hundreds of token ids
on a handful of prompts and reads the returned logprobs one token at a time.

Distinct biased tokens are counted with a 4 096-bit linear-counting bitmap (512 bytes) that is cleared
after a 6-hour gap; the other evidence is decayed counters over about the last 250 requests.
"""

from __future__ import annotations

import math
import struct
from typing import ClassVar

from detectors.base import Counters, any_of, ramp, shrunk_share
from detectors.types import DetectorScore, RequestFeatures, ResponseFeatures

_BITMAP_BITS = 4096
_RECENT = 8
# counter slots
N, BIAS, BIAS_LP, SMALL, REPEAT_VARY, ECHO_LP, BIG_BIAS, LP = range(8)
_RECENT_FMT = struct.Struct(f"<{_RECENT * 2}I")
_TAIL = struct.Struct("<HI")


class ProbeState:
    __slots__ = ("bitmap", "counters", "last_bias", "max_top", "recent")

    def __init__(self) -> None:
        self.counters = Counters(8)
        self.bitmap = bytearray(_BITMAP_BITS // 8)
        self.recent: list[int] = [0] * (_RECENT * 2)  # (prompt_key, bias_or_seed_key) pairs, ring
        self.max_top = 0
        self.last_bias = 0

    def distinct_bias_tokens(self) -> float:
        """Linear-counting estimate of the distinct token ids biased since the bitmap was last cleared."""
        zeros = _BITMAP_BITS - int.from_bytes(self.bitmap, "little").bit_count()  # popcount in C
        if zeros == 0:
            return float(_BITMAP_BITS * 4)
        return -_BITMAP_BITS * math.log(zeros / _BITMAP_BITS)


class LogitProbing:
    name: ClassVar[str] = "logit_probing"
    state_bytes: ClassVar[int] = 8 + 4 * 8 + _BITMAP_BITS // 8 + _RECENT_FMT.size + _TAIL.size
    _quiet: ClassVar[DetectorScore] = DetectorScore(name, 0.0, ())  # frozen: one shared instance

    def new_state(self) -> ProbeState:
        return ProbeState()

    def dump(self, state: ProbeState) -> bytes:
        return (
            state.counters.dump() + bytes(state.bitmap) + _RECENT_FMT.pack(*state.recent)
            + _TAIL.pack(min(state.max_top, 0xFFFF), state.last_bias)
        )

    def load(self, data: bytes) -> ProbeState:
        st = ProbeState()
        pos = st.counters.load(data)
        if len(data) != self.state_bytes:
            raise ValueError(f"{self.name}: state is {len(data)} bytes, expected {self.state_bytes}")
        st.bitmap = bytearray(data[pos : pos + _BITMAP_BITS // 8])
        pos += _BITMAP_BITS // 8
        st.recent = list(_RECENT_FMT.unpack_from(data, pos))
        st.max_top, st.last_bias = _TAIL.unpack_from(data, pos + _RECENT_FMT.size)
        return st

    def observe(self, state: ProbeState, feats: RequestFeatures, now: float) -> DetectorScore:
        if state.counters.last_ts and now - state.counters.last_ts > 6 * 3600:
            state.bitmap = bytearray(_BITMAP_BITS // 8)
            state.max_top = 0
        state.counters.advance(now)
        c = state.counters.c
        c[N] += 1
        has_bias = feats.bias_entries > 0
        reads_logprobs = feats.logprobs or feats.top_logprobs > 0
        if has_bias:
            c[BIAS] += 1
            # A fixed ban list read back with logprobs is an ordinary app; the attack changes the bias
            # between requests to move different tokens into the returned top-k.
            changed = feats.bias_key != state.last_bias
            if reads_logprobs and changed:
                c[BIAS_LP] += 1
            if changed and (feats.bias_entries >= 20 or feats.bias_max_abs >= 50):
                c[BIG_BIAS] += 1
            state.last_bias = feats.bias_key
            for tok in feats.bias_tokens:
                h = (tok * 2654435761) & 0xFFFFFFFF
                bit = h % _BITMAP_BITS
                state.bitmap[bit >> 3] |= 1 << (bit & 7)
        if reads_logprobs:
            c[LP] += 1
            state.max_top = max(state.max_top, feats.top_logprobs)
        if feats.max_tokens is not None and feats.max_tokens <= 2:
            c[SMALL] += 1
        if feats.echo and reads_logprobs:
            c[ECHO_LP] += 1
        variant = feats.bias_key or (1 if feats.has_seed else 0)
        if feats.prompt_key and variant:
            for i in range(0, len(state.recent), 2):
                if state.recent[i] == feats.prompt_key and state.recent[i + 1] != variant:
                    c[REPEAT_VARY] += 1
                    break
            state.recent = [*state.recent[2:], feats.prompt_key, variant & 0xFFFFFFFF]
        return self.score(state, now)

    def observe_response(self, state: ProbeState, resp: ResponseFeatures, now: float) -> None:
        return None

    def score(self, state: ProbeState, now: float) -> DetectorScore:
        c = state.counters.c.tolist()
        if not (c[BIAS] or c[BIAS_LP] or c[BIG_BIAS] or c[SMALL] or c[REPEAT_VARY] or c[ECHO_LP]):
            # No probing evidence at all (nearly every client): each term of ``_score`` is ramp(0, lo > 0, hi)
            # = 0, so the score is exactly 0.0 with no reasons; the same result, without the arithmetic.
            return self._quiet
        return self._score(state, c)

    def _score(self, state: ProbeState, c: list[float]) -> DetectorScore:
        n = c[N]
        distinct = max(state.distinct_bias_tokens(), 0.0) if c[BIAS] > 0 else 0.0
        e_bias_lp = ramp(shrunk_share(c[BIAS_LP], n, 3.0), 0.15, 0.5)
        e_distinct = ramp(distinct, 30.0, 300.0) * ramp(shrunk_share(c[BIAS], n, 3.0), 0.1, 0.4)
        e_big = ramp(shrunk_share(c[BIG_BIAS], n, 5.0), 0.2, 0.6)
        e_small = ramp(shrunk_share(c[SMALL], n, 10.0), 0.3, 0.8)
        e_repeat = ramp(shrunk_share(c[REPEAT_VARY], n, 3.0), 0.15, 0.5)
        e_echo = ramp(shrunk_share(c[ECHO_LP], n, 3.0), 0.15, 0.5)
        score = any_of(e_bias_lp, e_distinct, 0.6 * e_big, 0.5 * e_small, e_repeat, e_echo)
        reasons: list[str] = []
        if e_distinct > 0 or e_bias_lp > 0:
            top = f" with top_logprobs={state.max_top}" if state.max_top else ""
            reasons.append(f"logit_bias on ~{distinct:.0f} distinct tokens{top}")
        if e_bias_lp > 0:
            reasons.append(f"{c[BIAS_LP]:.0f} of the last {n:.0f} requests combine a changing logit_bias with logprobs")
        if e_small > 0:
            reasons.append(f"max_tokens <= 2 on {c[SMALL] / max(n, 1):.0%} of the last {n:.0f} requests")
        if e_repeat > 0:
            reasons.append(f"the same prompt repeated {c[REPEAT_VARY]:.0f} times with a changing bias or seed")
        if e_echo > 0:
            reasons.append(f"echo with logprobs on {c[ECHO_LP]:.0f} of the last {n:.0f} requests")
        return DetectorScore(self.name, score, tuple(reasons))
