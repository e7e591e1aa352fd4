"""Logit-channel probing (Carlini et al. 2024; Finlayson et al. 2024).

Looks at: ``logit_bias`` on many distinct tokens and at large magnitudes, ``logit_bias`` combined with
``logprobs``/``top_logprobs``, the share of ``max_tokens <= 2``, the same prompt repeated with a changing
bias or seed, and ``echo`` with logprobs. vLLM's token-id fields count as a bias on the ids they name
(``RequestFeatures.bias_*``): ``logprob_token_ids`` reads chosen tokens' logprobs without any bias — the
same sweep, one request per id batch — and ``allowed_token_ids``/``bad_words`` are bans.

A legitimate application sets a fixed, small bias (banning a few tokens) or asks for logprobs on ordinary
prompts; the attack sweeps biases over hundreds of token ids on a handful of prompts and reads the returned
logprobs one token at a time.

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
_COUNTERS_BYTES = 8 + 4 * 8
_AFTER_COUNTERS = struct.Struct(f"<{_BITMAP_BITS // 8}s{_RECENT_FMT.format[1:]}{_TAIL.format[1:]}")


class ProbeState:
    """Counters, the bias bitmap, the ring of recent (prompt, bias or seed) keys, the largest
    ``top_logprobs`` seen and the last bias key.

    A state read from bytes keeps everything after its counters packed, as stored, until one of those fields
    is first read or written (``_unpack``): nearly every client never sends a ``logit_bias``, logprobs or a
    seed, and for them a request reads and updates the counters only, so decoding their state skips the
    bitmap and the ring. ``LogitProbing.dump`` writes bytes still packed back as they were read — exactly
    what unpacking and packing them again gives (every field round-trips unchanged)."""

    __slots__ = ("_bitmap", "_last_bias", "_max_top", "_packed", "_recent", "counters")

    def __init__(self) -> None:
        self.counters = Counters(8)
        self._bitmap = bytearray(_BITMAP_BITS // 8)
        self._recent: list[int] = [0] * (_RECENT * 2)  # (prompt_key, bias_or_seed_key) pairs, ring
        self._max_top = 0
        self._last_bias = 0
        self._packed: bytes | None = None  # the stored state whose fields after the counters are not read yet

    @classmethod
    def from_bytes(cls, counters: Counters, data: bytes) -> ProbeState:
        """A state with ``counters`` and the other fields still packed in ``data`` (the whole stored state)."""
        st = cls.__new__(cls)
        st.counters, st._packed = counters, data
        return st

    def _unpack(self) -> None:
        """Read the packed fields (the accessors call this only while ``_packed`` is set: an attribute test
        per access once unpacked, not a call)."""
        data = self._packed
        if data is not None:
            bitmap, *rest = _AFTER_COUNTERS.unpack_from(data, _COUNTERS_BYTES)  # one struct call for all four
            self._bitmap = bytearray(bitmap)
            self._recent = rest[: _RECENT * 2]
            self._max_top, self._last_bias = rest[_RECENT * 2 :]
            self._packed = None

    def packed_tail(self) -> bytes | None:
        """The stored bytes after the counters while no field of them was touched, else None."""
        return None if self._packed is None else self._packed[_COUNTERS_BYTES:]

    def tail_bytes(self) -> bytes:
        """The fields after the counters as stored: the bytes read, while untouched (what packing them would
        give), else packed from the fields (read directly: no property calls on ``account``'s path)."""
        if self._packed is not None:
            return self._packed[_COUNTERS_BYTES:]
        tail = _TAIL.pack(min(self._max_top, 0xFFFF), self._last_bias)
        return bytes(self._bitmap) + _RECENT_FMT.pack(*self._recent) + tail

    @property
    def bitmap(self) -> bytearray:
        if self._packed is not None:
            self._unpack()
        return self._bitmap

    @bitmap.setter
    def bitmap(self, value: bytearray) -> None:
        if self._packed is not None:  # first: the other fields keep their stored values
            self._unpack()
        self._bitmap = value

    @property
    def recent(self) -> list[int]:
        if self._packed is not None:
            self._unpack()
        return self._recent

    @recent.setter
    def recent(self, value: list[int]) -> None:
        if self._packed is not None:
            self._unpack()
        self._recent = value

    @property
    def max_top(self) -> int:
        if self._packed is not None:
            self._unpack()
        return self._max_top

    @max_top.setter
    def max_top(self, value: int) -> None:
        if self._packed is not None:
            self._unpack()
        self._max_top = value

    @property
    def last_bias(self) -> int:
        if self._packed is not None:
            self._unpack()
        return self._last_bias

    @last_bias.setter
    def last_bias(self, value: int) -> None:
        if self._packed is not None:
            self._unpack()
        self._last_bias = value

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
        return state.counters.dump() + state.tail_bytes()

    def load(self, data: bytes) -> ProbeState:
        counters = Counters.decode(data, 8)
        if len(data) != self.state_bytes:
            raise ValueError(f"{self.name}: state is {len(data)} bytes, expected {self.state_bytes}")
        # The fields after the counters have no invalid values (any bytes are a bitmap, any u16/u32 a count
        # or key): nothing to check now, so they are unpacked when first used (see ``ProbeState``).
        return ProbeState.from_bytes(counters, data)

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
            bitmap = state.bitmap  # once: a property (see ``ProbeState``), mutated in place
            for tok in feats.bias_tokens:
                h = (tok * 2654435761) & 0xFFFFFFFF
                bit = h % _BITMAP_BITS
                bitmap[bit >> 3] |= 1 << (bit & 7)
        if reads_logprobs:
            c[LP] += 1
            state.max_top = max(state.max_top, feats.top_logprobs)
        if feats.max_tokens is not None and feats.max_tokens <= 2:
            c[SMALL] += 1
        if feats.echo and reads_logprobs:
            c[ECHO_LP] += 1
        variant = feats.bias_key or (1 if feats.has_seed else 0)
        if feats.prompt_key and variant:
            recent = state.recent
            for i in range(0, len(recent), 2):
                if recent[i] == feats.prompt_key and recent[i + 1] != variant:
                    c[REPEAT_VARY] += 1
                    break
            state.recent = [*recent[2:], feats.prompt_key, variant & 0xFFFFFFFF]
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
            # max_top: the most logprobs one request read per position (top_logprobs, or the length of
            # vLLM's logprob_token_ids, whichever is larger)
            top = f", {state.max_top} logprobs read per position" if state.max_top else ""
            reasons.append(f"logit_bias or token-id targeting on ~{distinct:.0f} distinct tokens{top}")
        if e_bias_lp > 0:
            reasons.append(f"{c[BIAS_LP]:.0f} of the last {n:.0f} requests combine a changing logit_bias "
                           "or token-id list with logprobs")
        if e_small > 0:
            reasons.append(f"max_tokens <= 2 on {c[SMALL] / max(n, 1):.0%} of the last {n:.0f} requests")
        if e_repeat > 0:
            times = f"{c[REPEAT_VARY]:.0f}"
            reasons.append(f"the same prompt repeated {times} time{'' if times == '1' else 's'} with a changing bias "
                           "or seed")
        if e_echo > 0:
            reasons.append(f"echo with logprobs on {c[ECHO_LP]:.0f} of the last {n:.0f} requests")
        return DetectorScore(self.name, score, tuple(reasons))
