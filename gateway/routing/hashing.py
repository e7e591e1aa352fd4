"""Sticky weighted choice: weighted rendezvous (highest-random-weight) hashing.

Why rendezvous hashing with ``w / -ln(u)``: for a fixed client, ``u`` is a uniform number in (0, 1) derived
from a stable hash of (client, backend), so ``-ln(u)`` is an Exp(1) draw and ``-ln(u) / w`` is Exp(w). The
backend with the smallest Exp(w) draw - the largest ``w / -ln(u)`` - wins with probability ``w / sum(w)``
(an exponential race). Three properties follow, and the tests check each:

- the split over many clients matches the normalised weights;
- a client keeps its backend for as long as the weights do not change (the score is a pure function);
- a weight change moves only the clients it must: raising one backend's weight only raises its own scores,
  so clients can only move *to* it, and exactly the share the new weights call for does.

Weight 0 means "no traffic": such a backend is skipped, never scored (LiteLLM #33329 silently went uniform
when the first backend had no weight; here weights are never replaced by defaults).

The per-client hash is computed once (blake2b of the client id); each backend mixes it with its own 64-bit
seed through the splitmix64 finaliser, a bijective avalanche mix, so scores are independent across backends
without hashing the client id once per backend.

When the winner is not eligible (ejected, saturated, excluded for a retry) the next-highest score wins,
which is the client's stable second choice. The non-sticky mode is a plain weighted random choice.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

_MASK = (1 << 64) - 1
_TWO_64 = float(1 << 64)


def client_key(client_id: str) -> int:
    """A stable 64-bit key for a client id (stable across processes and hosts, unlike ``hash()``)."""
    return int.from_bytes(hashlib.blake2b(client_id.encode("utf-8"), digest_size=8).digest(), "little")


def backend_seed(name: str) -> int:
    """A stable 64-bit seed for a backend name; the backend's identity in the hash is its name only."""
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8, person=b"ipgate-bk").digest()
    return int.from_bytes(digest, "little")


def _mix64(x: int) -> int:
    # splitmix64 finaliser: every input bit flips each output bit with probability ~1/2.
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def rendezvous_score(ckey: int, seed: int, weight: float) -> float:
    """``weight / -ln(u)`` with ``u`` uniform in (0, 1) from (client, backend); 0 for weight 0."""
    if weight <= 0.0:
        return 0.0
    u = (_mix64(ckey ^ seed) + 0.5) / _TWO_64  # strictly inside (0, 1): ln(u) is finite and negative
    return weight / -math.log(u)


ORDER_CACHE_SIZE = 50_000


@dataclass(frozen=True, slots=True)
class WeightTable:
    """Normalised weights for the backends of one pool, in pool order (shares sum to 1 when any is > 0).

    A table is immutable; a weight change builds a new one. Each table caches clients' preference orders
    (bounded; cleared when full), so a returning client costs a dict lookup instead of one hash per
    backend, and a new table - new weights - starts with an empty cache by construction."""

    names: tuple[str, ...]
    shares: tuple[float, ...]
    seeds: tuple[int, ...]
    cumulative: tuple[float, ...]  # running sums of shares, for the non-sticky draw
    _orders: dict[str, tuple[int, ...]] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(cls, names: Sequence[str], weights: Sequence[float]) -> WeightTable:
        if len(names) != len(weights):
            raise ValueError("names and weights differ in length")
        for n, w in zip(names, weights, strict=True):
            if not math.isfinite(w) or w < 0:
                raise ValueError(f"backend {n!r}: weight must be a finite number >= 0, got {w!r}")
        scaled = [float(w) for w in weights]
        total = sum(scaled)
        if not math.isfinite(total):
            # Weights near the float maximum (1e308 is a valid config) sum to inf, which would turn every
            # share into 0 - a pool that answers only 503. Scale by the largest first (the ratio is all
            # that matters); ordinary weights skip this, so 90/10 stays exactly 0.9/0.1.
            top = max(scaled)
            scaled = [w / top for w in scaled]
            total = sum(scaled)
        shares = tuple((w / total) if total > 0 else 0.0 for w in scaled)
        return cls(tuple(names), shares, tuple(backend_seed(n) for n in names), tuple(itertools.accumulate(shares)))

    def share(self, name: str) -> float:
        return self.shares[self.names.index(name)]

    def order_sticky(self, client_id: str) -> tuple[int, ...]:
        """Backends with a weight above 0, in the client's preference order (highest score first)."""
        order = self._orders.get(client_id)
        if order is None:
            ckey = client_key(client_id)
            scored = [
                (rendezvous_score(ckey, self.seeds[i], s), i) for i, s in enumerate(self.shares) if s > 0.0
            ]
            order = tuple(i for _, i in sorted(scored, reverse=True))
            if len(self._orders) >= ORDER_CACHE_SIZE:
                self._orders.clear()  # crude but bounded; a miss only costs recomputing the order
            self._orders[client_id] = order
        return order

    def pick_sticky(self, client_id: str, eligible: Callable[[int], bool]) -> int | None:
        """Index of the client's highest-scoring eligible backend with a weight above 0, or None."""
        for i in self.order_sticky(client_id):
            if eligible(i):
                return i
        return None

    def pick_random(self, eligible: Callable[[int], bool], rng: random.Random | None = None) -> int | None:
        """A weighted random choice among eligible backends with a weight above 0, or None."""
        r = rng or random
        # Fast path: draw over all backends; if the draw is eligible it is a draw from the eligible ones too
        # (rejecting an ineligible draw and redrawing among the eligible renormalises exactly).
        i = bisect.bisect_right(self.cumulative, r.random())
        if i < len(self.shares) and self.shares[i] > 0.0 and eligible(i):
            return i
        candidates = [i for i, s in enumerate(self.shares) if s > 0.0 and eligible(i)]
        if not candidates:
            return None
        x = r.random() * sum(self.shares[i] for i in candidates)
        for i in candidates:
            x -= self.shares[i]
            if x < 0.0:
                return i
        return candidates[-1]  # floating-point remainder lands on the last candidate
