"""Retry budget: retries may be at most ``ratio`` of recent requests (a token bucket, as in Finagle/Envoy).

Each first attempt deposits ``ratio`` tokens; each retry withdraws one. The bucket holds at most ``cap``
tokens, so a long quiet spell cannot bank an unbounded burst of retries, and it starts with ``initial``
tokens so a freshly started gateway can retry its very first failure. A ratio of 0 disables retries.
Why a budget and not only a per-request retry count: when a backend fails wholesale, per-request retries
multiply the load on the survivors by (1 + retries); the budget bounds the extra load at ``ratio``.
"""

from __future__ import annotations


class RetryBudget:
    __slots__ = ("balance", "cap", "ratio")

    def __init__(self, ratio: float, *, cap: float = 10.0, initial: float = 1.0) -> None:
        self.ratio = ratio
        self.cap = cap
        self.balance = min(initial, cap) if ratio > 0 else 0.0

    def deposit(self) -> None:
        b = self.balance + self.ratio
        self.balance = b if b < self.cap else self.cap

    def can_withdraw(self) -> bool:
        return self.ratio > 0 and self.balance >= 1.0 - 1e-9  # 5 x 0.2 must buy a retry despite rounding

    def try_withdraw(self) -> bool:
        if not self.can_withdraw():
            return False
        self.balance -= 1.0
        return True
