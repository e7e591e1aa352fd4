"""A dict whose entries expire: lazy expiry on read plus an incremental sweep, with a hard size cap.

Why not just lazy expiry: keys that are written once and never read again (a client that went away, a prompt
sketch seen once) would stay forever. Why not a full periodic scan: O(n) pauses on the event loop. Instead
each entry sits in a coarse time bucket (``_SLOT_US`` wide) of an expiry wheel; ``sweep(now)`` pops only the
buckets that are due, so the cost is proportional to what expires. An entry whose expiry moves to another
bucket is moved (O(1) set operations), so a hot key renewed on every request never accumulates stale
bucket memberships. ``max_entries`` bounds memory even under a flood of distinct keys: the oldest-inserted
entry goes first (dicts keep insertion order), as Redis ``maxmemory`` would evict.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

_SLOT_US = 1_000_000  # one-second buckets


class TtlMap(Generic[K, V]):
    __slots__ = ("_d", "_max", "_swept", "_wheel")

    def __init__(self, max_entries: int = 1_000_000) -> None:
        self._d: dict[K, tuple[V, float]] = {}
        self._wheel: dict[int, set[K]] = {}
        self._max = max_entries
        self._swept = -1  # last slot fully swept

    def __len__(self) -> int:
        return len(self._d)

    def get(self, key: K, now_us: float) -> V | None:
        e = self._d.get(key)
        if e is None:
            return None
        if e[1] <= now_us:
            self._drop(key, e[1])
            return None
        return e[0]

    def expires_at(self, key: K, now_us: float) -> float | None:
        e = self._d.get(key)
        if e is None or e[1] <= now_us:
            return None
        return e[1]

    def set(self, key: K, value: V, expires_us: float) -> None:
        old = self._d.get(key)
        slot = int(expires_us // _SLOT_US)
        if old is not None:
            old_slot = int(old[1] // _SLOT_US)
            if old_slot != slot:
                self._unslot(key, old_slot)
                self._wheel.setdefault(slot, set()).add(key)
        else:
            if len(self._d) >= self._max:
                oldest = next(iter(self._d))
                self._drop(oldest, self._d[oldest][1])
            self._wheel.setdefault(slot, set()).add(key)
        self._d[key] = (value, expires_us)

    def touch(self, key: K, expires_us: float) -> None:
        """Move an existing entry's expiry (no-op when absent)."""
        e = self._d.get(key)
        if e is not None:
            self.set(key, e[0], expires_us)

    def pop(self, key: K) -> None:
        e = self._d.get(key)
        if e is not None:
            self._drop(key, e[1])

    def items(self, now_us: float) -> Iterator[tuple[K, V]]:
        """Live entries (a snapshot, so callers may mutate the map while iterating)."""
        for k, (v, exp) in list(self._d.items()):
            if exp > now_us:
                yield k, v

    def clear(self) -> None:
        self._d.clear()
        self._wheel.clear()

    def sweep(self, now_us: float) -> int:
        """Remove every entry whose bucket is due; returns how many were removed."""
        due = int(now_us // _SLOT_US) - 1  # only buckets that ended before now are entirely expired
        if due <= self._swept:
            return 0
        if due - self._swept > len(self._wheel):
            slots = sorted(s for s in self._wheel if s <= due)  # a long idle gap: visit only non-empty slots
        else:
            slots = [s for s in range(self._swept + 1, due + 1) if s in self._wheel]
        removed = 0
        for s in slots:
            for key in self._wheel.pop(s):
                e = self._d.get(key)
                if e is not None and e[1] <= now_us:
                    del self._d[key]
                    removed += 1
        self._swept = due
        return removed

    def _unslot(self, key: K, slot: int) -> None:
        bucket = self._wheel.get(slot)
        if bucket is not None:
            bucket.discard(key)
            if not bucket:
                del self._wheel[slot]

    def _drop(self, key: K, expires_us: float) -> None:
        del self._d[key]
        self._unslot(key, int(expires_us // _SLOT_US))
