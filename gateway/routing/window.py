"""Outcome counts and a latency histogram for one analysis window (sans-IO, mergeable across replicas).

The histogram uses geometric buckets (ratio 2^(1/16), about 4.4 % wide) from 0.1 ms to ~100 s, so the p99 it
reports is within about 2.2 % of the true value (it answers with the bucket's geometric midpoint) while the
memory is fixed and two replicas' windows merge by adding counts. Errors count in both the error tally and
the latency histogram: a fast failure is still a failure, and a slow one still counts towards the p99.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

_BUCKETS_PER_DOUBLING = 16
_MIN_MS = 0.1
_N_BUCKETS = 16 * 20 + 1  # 0.1 ms * 2**20 ~ 105 s; the last bucket takes everything above
_LOG_RATIO = math.log(2.0) / _BUCKETS_PER_DOUBLING


def _bucket(ms: float) -> int:
    if ms <= _MIN_MS:
        return 0
    return min(_N_BUCKETS - 1, 1 + int(math.log(ms / _MIN_MS) / _LOG_RATIO))


def _bucket_mid_ms(i: int) -> float:
    if i == 0:
        return _MIN_MS
    lo = _MIN_MS * math.exp((i - 1) * _LOG_RATIO)
    return lo * math.exp(_LOG_RATIO / 2)


@dataclass(frozen=True, slots=True)
class WindowStats:
    """What one analysis sees: the canary's requests, errors and p99 latency in the window."""

    requests: int
    errors: int
    p99_ms: float | None  # None when there were no requests

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


class OutcomeWindow:
    """Accumulates outcomes for the current window; ``take()`` returns its stats and starts a new one."""

    __slots__ = ("_counts", "errors", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self._counts: dict[int, int] = {}

    def record(self, ok: bool, latency_s: float) -> None:
        self.requests += 1
        if not ok:
            self.errors += 1
        b = _bucket(latency_s * 1000.0)
        self._counts[b] = self._counts.get(b, 0) + 1

    def merge(self, other: OutcomeWindow) -> None:
        self.requests += other.requests
        self.errors += other.errors
        for b, c in other._counts.items():
            self._counts[b] = self._counts.get(b, 0) + c

    def quantile_ms(self, q: float) -> float | None:
        if self.requests == 0:
            return None
        # nearest-rank: the smallest value with at least q of the observations at or below it
        rank = max(1, math.ceil(q * self.requests))
        seen = 0
        for b in sorted(self._counts):
            seen += self._counts[b]
            if seen >= rank:
                return _bucket_mid_ms(b)
        return _bucket_mid_ms(max(self._counts))

    def stats(self) -> WindowStats:
        return WindowStats(self.requests, self.errors, self.quantile_ms(0.99))

    def take(self) -> WindowStats:
        s = self.stats()
        self.requests = 0
        self.errors = 0
        self._counts = {}
        return s

    def to_json(self) -> dict[str, Any]:
        buckets = {str(k): v for k, v in self._counts.items()}
        return {"requests": self.requests, "errors": self.errors, "buckets": buckets}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OutcomeWindow:
        w = cls()
        w.requests = int(data["requests"])
        w.errors = int(data["errors"])
        w._counts = {int(k): int(v) for k, v in dict(data["buckets"]).items()}
        return w

    def copy(self) -> OutcomeWindow:
        w = OutcomeWindow()
        w.merge(self)
        return w

    def minus(self, earlier: OutcomeWindow) -> OutcomeWindow:
        """This cumulative window less an earlier snapshot of the same series (what happened in between).

        A series that went backwards (the replica restarted) is taken whole, as Prometheus' rate() does."""
        if self.requests < earlier.requests or self.errors < earlier.errors:
            return self.copy()
        w = OutcomeWindow()
        w.requests = self.requests - earlier.requests
        w.errors = self.errors - earlier.errors
        for b, c in self._counts.items():
            d = c - earlier._counts.get(b, 0)
            if d < 0:
                return self.copy()
            if d:
                w._counts[b] = d
        return w
