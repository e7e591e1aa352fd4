"""The ``Detector`` protocol every detector module implements, and the decay arithmetic they share.

A detector is one small class in its own module: it owns a mutable per-client state object (serialised to
at most ``state_bytes`` bytes), folds each request into it, and scores it. Detectors never see other
detectors' state and never do I/O; the engine isolates their failures.

Decay (why two clocks): counters are "recent" in two senses at once. Each request multiplies them by
``COUNT_DECAY`` (an exponential window of about ``WINDOW`` requests, so a share means "of the last ~250
prompts"), and wall time multiplies them by ``0.5 ** (dt / HALF_LIFE_S)`` (one day) so a client that stops sending
the bad traffic cools down even if it sends nothing at all.
"""

from __future__ import annotations

import math
import struct
from operator import mul
from typing import Any, ClassVar, Protocol, TypeVar

import numpy as np

from detectors.state import MAX_TS
from detectors.types import DetectorScore, RequestFeatures, ResponseFeatures

WINDOW = 250.0
COUNT_DECAY = math.exp(-1.0 / WINDOW)
HALF_LIFE_S = 24 * 3600.0
# The declared range of a stored counter (a float32 on the wire): counts in [0, COUNT_MAX), the signed sums a
# detector names (embedding means, sums of log gaps) in (-COUNT_MAX, COUNT_MAX). A counter gains at most 2^30 per
# request (volume's token clamp; most gain 1) and loses 1/WINDOW of itself per request, so the gateway never
# writes more than ~2.7e11 (2^38); decoding refuses anything outside the range (only a tampered or corrupted
# store holds it: a negative count or a huge one silences the shares a score is made of, a negative sum of
# squares fails a detector on every request), and the engine starts that detector fresh and counts it.
COUNT_MAX = float(2**49)
# Checked on the wire bytes, one C-level pass (``bytes.translate``) over each value's top byte (the sign and the
# 7 high exponent bits): a float32 lies in [0, 2^49) exactly when that byte is at most 0x57, and in
# (-2^49, 2^49) when it is that or 0x80-0xD7. NaN and infinities (exponent 255) fail both; so does a count of
# -0.0, which the gateway never writes (its counts only grow by additions and shrink by positive factors).
_COUNT_TOPS = bytes(range(0x58))
_SIGNED_TOPS = _COUNT_TOPS + bytes(range(0x80, 0xD8))


def counts_in_range(data: bytes, offset: int, n: int, signed: bool = False) -> bool:
    """Whether the ``n`` float32 values at ``data[offset:]`` lie in their declared range (see ``COUNT_MAX``):
    ``translate`` deletes every allowed top byte, so anything left is a value out of range."""
    return not data[offset + 3 : offset + 4 * n : 4].translate(None, _SIGNED_TOPS if signed else _COUNT_TOPS)


S = TypeVar("S")
# Wire dtypes as objects: a dtype given as a string is parsed again on every call (~0.15 us each).
F4LE, U4LE = np.dtype("<f4"), np.dtype("<u4")


def time_decay(dt: float, half_life_s: float = HALF_LIFE_S) -> float:
    """Multiplier for counters after ``dt`` seconds of silence (1.0 for dt <= 0)."""
    if dt <= 0.0:
        return 1.0
    return float(0.5 ** (dt / half_life_s))


def ramp(x: float, lo: float, hi: float) -> float:
    """0 below ``lo``, 1 above ``hi``, linear between: the detectors' hand-set evidence scales."""
    if x <= lo:
        return 0.0
    if x >= hi:
        return 1.0
    return (x - lo) / (hi - lo)


def norm_entropy(counts: list[float]) -> float:
    """Shannon entropy of a histogram divided by log(bins): 1.0 is perfectly flat (plain floats, ~2 us)."""
    total = sum(counts)
    if total <= 0 or len(counts) < 2:
        return 0.0
    # Each share is computed once (the same division as before) and the terms p * log(p) are summed in the
    # same order, so the result is bit-identical to the one-expression form; ``map`` with the C functions
    # avoids a Python-level loop for the logs and the products.
    shares = [x / total for x in counts if x > 0]
    h: float = -sum(map(mul, shares, map(math.log, shares)))
    return h / math.log(len(counts))


def any_of(*evidence: float) -> float:
    """1 - prod(1 - e): independent pieces of evidence combined (plain floats: numpy is slower here)."""
    out = 1.0
    for e in evidence:
        out *= 1.0 - e
    return 1.0 - out


def shrunk_share(hits: float, total: float, prior: float = 10.0) -> float:
    """A share with ``prior`` pseudo-requests of zero hits, so 3 of 3 is not 100 % evidence."""
    return hits / (total + prior) if total + prior > 0 else 0.0


class Detector(Protocol[S]):
    """One detector. ``name`` is its registry key; ``state_bytes`` the most its state serialises to."""

    name: ClassVar[str]
    state_bytes: ClassVar[int]

    def new_state(self) -> S: ...

    def load(self, data: bytes) -> S:
        """Parse state written by ``dump`` (raise ValueError on garbage; the engine starts fresh)."""

    def dump(self, state: S) -> bytes: ...

    def observe(self, state: S, feats: RequestFeatures, now: float) -> DetectorScore:
        """Fold one request into ``state`` (mutating it) and return the score after it."""

    def score(self, state: S, now: float) -> DetectorScore:
        """Score ``state`` as it stands (no request folded in)."""

    def observe_response(self, state: S, resp: ResponseFeatures, now: float) -> None:
        """Fold what the upstream answered into ``state``; most detectors ignore it. The engine calls it only
        on detectors whose class sets ``wants_response = True`` (and re-serialises only those)."""


AnyDetector = Detector[Any]


class Counters:
    """Decayed counters (float64 in memory, float32 on the wire) plus the time of the last update.

    ``advance(now)`` applies one request's count decay and the time decay since the previous request, in
    one multiply; callers then add this request's evidence.
    """

    __slots__ = ("c", "last_ts")
    _TS = struct.Struct("<d")

    def __init__(self, size: int) -> None:
        self.c = np.zeros(size)
        self.last_ts = 0.0

    def advance(self, now: float, count_decay: float = COUNT_DECAY, half_life_s: float = HALF_LIFE_S) -> float:
        factor = count_decay * (time_decay(now - self.last_ts, half_life_s) if self.last_ts else 1.0)
        self.c *= factor
        self.last_ts = max(self.last_ts, now)
        return factor

    def nbytes(self) -> int:
        return 8 + 4 * len(self.c)

    def dump(self) -> bytes:
        return self._TS.pack(self.last_ts) + self.c.astype(F4LE).tobytes()

    def load(self, data: bytes) -> int:
        """Fill from ``data``; return how many bytes were read. Raises ValueError when too short."""
        other = Counters.decode(data, len(self.c))
        self.last_ts, self.c = other.last_ts, other.c
        return 8 + 4 * len(self.c)

    @classmethod
    def decode(cls, data: bytes, size: int, signed: tuple[int, int] = (0, 0)) -> Counters:
        """``size`` counters read from the head of ``data``, as ``load`` reads them into an object of that
        size, without first allocating the zeros ``load`` would replace (the cold path builds six of these
        per request). ``signed``: the ``[start, stop)`` block of signed sums; every other counter is a count.
        Raises ValueError when they are truncated or outside their declared range (``COUNT_MAX``), or when
        the timestamp is outside ``[0, MAX_TS]``."""
        need = 8 + 4 * size
        if len(data) < need:
            raise ValueError(f"counter state truncated ({len(data)} < {need} bytes)")
        a, b = signed
        # Short all-count blocks: one struct call for the timestamp and all counters (the cheaper path there);
        # float32 -> float64 is exact, so both paths give the same array.
        if size <= _STRUCT_MAX and a == b:
            t = _WIRE[size].unpack_from(data)
            return cls.from_values(t[0], t[1:], data)
        tops = data[11:need:4]  # ``counts_in_range`` inlined: this runs for every long block on the cold path
        if (tops.translate(None, _COUNT_TOPS) if a == b else (
            tops[:a].translate(None, _COUNT_TOPS) or tops[a:b].translate(None, _SIGNED_TOPS)
            or tops[b:].translate(None, _COUNT_TOPS)
        )):
            raise ValueError("counter state holds non-finite values or values outside their declared range")
        self = cls.__new__(cls)
        (self.last_ts,) = cls._TS.unpack_from(data, 0)
        if not 0.0 <= self.last_ts <= MAX_TS:  # False for NaN
            raise ValueError(f"counter state timestamp {self.last_ts!r} is outside [0, {MAX_TS:.0f}]")
        self.c = np.frombuffer(data, dtype=F4LE, count=size, offset=8).astype(_F8)
        return self

    @classmethod
    def from_values(cls, last_ts: float, values: tuple[float, ...], data: bytes) -> Counters:
        """Counters holding ``values``, the float32 counts ``data`` holds after its timestamp ``last_ts`` (read
        with ``struct`` by a detector that unpacks its whole state in one call). Raises ValueError unless they
        lie in their declared range (see ``decode``), which is checked on ``data``."""
        if data[11 : 8 + 4 * len(values) : 4].translate(None, _COUNT_TOPS):  # ``counts_in_range``, inlined
            raise ValueError("counter state holds non-finite values or values outside their declared range")
        if not 0.0 <= last_ts <= MAX_TS:  # False for NaN
            raise ValueError(f"counter state timestamp {last_ts!r} is outside [0, {MAX_TS:.0f}]")
        self = cls.__new__(cls)
        self.last_ts, self.c = last_ts, np.array(values, _F8)
        return self


_STRUCT_MAX = 16  # counter blocks up to this size are parsed with ``struct`` (see ``Counters.decode``)
_WIRE = [struct.Struct(f"<d{n}f") for n in range(_STRUCT_MAX + 1)]
_F8, _F4, _I8, _F4_127 = np.dtype(np.float64), np.dtype(np.float32), np.dtype(np.int8), np.float32(127.0)


def dump_vectors(counters: Counters, ring_i8: np.ndarray, pos: int) -> bytes:
    """Counters, then a ring of recent prompt vectors as int8 (x 127), then the ring's write position."""
    return counters.dump() + ring_i8.tobytes() + bytes((pos,))


def load_vectors(
    data: bytes, counters: Counters, rows: int, dim: int, name: str, signed: tuple[int, int] = (0, 0)
) -> tuple[np.ndarray, np.ndarray, int]:
    """Fill ``counters`` and parse the ring ``dump_vectors`` wrote: (int8 ring, float32 ring, position).
    Raises ValueError when the size is not exactly what ``rows`` x ``dim`` vectors need (``signed``: see
    ``Counters.decode``)."""
    other, ring_i8, ring, pos = decode_vectors(data, len(counters.c), rows, dim, name, signed)
    counters.last_ts, counters.c = other.last_ts, other.c
    return ring_i8, ring, pos


def decode_vectors(
    data: bytes, size: int, rows: int, dim: int, name: str, signed: tuple[int, int] = (0, 0)
) -> tuple[Counters, np.ndarray, np.ndarray, int]:
    """``load_vectors`` for ``size`` counters it creates itself: (counters, int8 ring, float32 ring, position)."""
    counters = Counters.decode(data, size, signed)
    at = 8 + 4 * size
    if len(data) != at + rows * dim + 1:
        raise ValueError(f"{name}: state has the wrong size")
    ring_i8 = np.frombuffer(data, dtype=_I8, count=rows * dim, offset=at).reshape(rows, dim).copy()
    # int8 -> float32 is exact, then one float32 division per element, in place (no second array). Not
    # ``np.divide(ring_i8, 127, dtype=float32)``: casting inside the ufunc takes its slower buffered loop.
    ring = ring_i8.astype(_F4)
    ring /= _F4_127
    return counters, ring_i8, ring, data[-1] % rows
