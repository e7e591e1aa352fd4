"""The engine's cache of decoded client states, keyed by the exact bytes each state serialises to.

When the store hands back the bytes this engine wrote last for a client, the engine takes the decoded state
from here instead of parsing the bytes again (the warm path). Anything else — bytes another replica wrote,
an evicted entry — misses and is decoded (the cold path). Hit or miss depends on the bytes alone: a hit
needs a cached entry whose bytes are *equal* to the ones handed in, exactly as a ``dict`` keyed by the bytes
decides (which is what this replaces).

Why not a plain ``dict``: looking bytes up in one hashes all of them (~7 KB, 1.5-2 us) whenever the object
is new, i.e. on every miss and on every hit when the bytes came back from Redis rather than from memory.
Here the lookup goes through a fingerprint of 33 bytes (the envelope header: request count, tier, clocks
and scores, which change with every request a client makes), then compares the whole bytes with the cached
ones (``memcmp``, no hashing) and pops the entry by the *cached* key object, whose hash is already known.
Two cached states may share a fingerprint (two clients with equal headers): each fingerprint lists all its
keys, so the fingerprint only narrows the search and never decides it.

Entries are popped when taken (two requests never share mutable state); the LRU order and the eviction of
the oldest entry are those of the ``OrderedDict`` underneath, so the set of cached states is the same as the
plain dict's would be after any sequence of operations. Not thread-safe: one engine per event loop.

Superseded entries: two requests of one client that overlap (the second read the stored state before the
first one's save landed) both derive a state from the same stored bytes; only one of the two stays in the
store, so the other entry could never be hit again and sat in the cache until the LRU pushed it out. A soak
run filled all 2048 places (~16 KB each, ~32 MB) with such dead entries for a few dozen clients. ``put`` with
the ``parent`` bytes a state was derived from therefore drops the entry last derived from the same parent
(matched by the parent's fingerprint: a false match costs a cold decode, never a wrong state). That is the
one departure from the plain dict, and only for puts that name a parent.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

V = TypeVar("V")

#: The fingerprint: the envelope's header (``detectors.state``: magic and version, then 33 bytes).
FP = slice(3, 36)


class DecodedCache(Generic[V]):
    __slots__ = ("_by_fp", "_entries", "_heir", "_parent_of")

    def __init__(self) -> None:
        self._entries: OrderedDict[bytes, V] = OrderedDict()
        self._by_fp: dict[bytes, list[bytes]] = {}
        self._heir: dict[bytes, bytes] = {}  # parent fingerprint -> key of the cached entry last derived from it
        self._parent_of: dict[bytes, bytes] = {}  # key -> its parent's fingerprint (one per entry: bounded)

    def take(self, data: bytes) -> V | None:
        """Remove and return the entry whose bytes equal ``data`` (None when there is none)."""
        fp = data[FP]
        keys = self._by_fp.get(fp)
        if keys is None:
            return None
        if len(keys) == 1:  # nearly always
            key = keys[0]
            if key != data:  # equal bytes? (the same object: no comparison at all)
                return None
            del self._by_fp[fp]
        else:
            i = next((i for i, k in enumerate(keys) if k == data), -1)
            if i < 0:
                return None
            key = keys.pop(i)
        self._forget_parent(key)
        return self._entries.pop(key, None)  # ``key``'s hash is cached: no rehashing of 7 KB

    def put(self, data: bytes, value: V, limit: int, parent: bytes | None = None) -> None:
        """Remember ``value`` under ``data`` (replacing an entry of equal bytes, which keeps its place in the
        LRU order as a dict's would); then, if there are more than ``limit`` entries, drop the oldest one.
        ``parent``: the stored bytes the state was derived from; an entry derived earlier from the same parent
        is dropped (superseded, see the module docstring)."""
        if parent is not None:
            pfp = parent[FP]
            old = self._heir.get(pfp)
            if old is not None and old is not data and old != data and old in self._entries:
                del self._entries[old]
                self._unindex(old)
                self._forget_parent(old)
            self._heir[pfp] = data
            self._parent_of[data] = pfp
        entries, fp = self._entries, data[FP]
        keys = self._by_fp.get(fp)
        if keys is None:  # no entry has this fingerprint, so none has these bytes
            self._by_fp[fp] = [data]
        elif data not in entries:
            keys.append(data)
        entries[data] = value
        if len(entries) > limit:
            oldest = entries.popitem(last=False)[0]
            self._unindex(oldest)
            self._forget_parent(oldest)

    def _forget_parent(self, key: bytes) -> None:
        pfp = self._parent_of.pop(key, None)
        if pfp is not None:
            heir = self._heir.get(pfp)
            if heir is not None and (heir is key or heir == key):
                del self._heir[pfp]

    def _unindex(self, key: bytes) -> None:
        fp = key[FP]
        keys = self._by_fp[fp]
        keys.remove(key)  # finds the equal key: the one indexed for this entry
        if not keys:
            del self._by_fp[fp]

    def clear(self) -> None:
        self._entries.clear()
        self._by_fp.clear()
        self._heir.clear()
        self._parent_of.clear()

    def __len__(self) -> int:
        return len(self._entries)
