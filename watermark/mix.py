"""The keyed choice at each scored tuple, computable one at a time (embedding) or for many keys at once.

    t      = BLAKE2b-64(key = scheme key of the version, context word || 0x1f || group id)   -- secret per version
    choice = splitmix64(t XOR client seed) mod k

``t`` is a keyed cryptographic PRF of the tuple, so without the master secret nobody can predict which variant
any client's key selects. The per-client step is the splitmix64 finaliser (a bijective, full-avalanche 64-bit
mixer): cheap enough to evaluate for 100 000 clients x hundreds of tuples with numpy in well under a second,
which is what makes attribution O(clients x tuples) with tiny constants. The mod-k bias is below 2^-60.
"""

from __future__ import annotations

import hashlib

import numpy as np
import numpy.typing as npt

M64 = (1 << 64) - 1
_C1 = 0xBF58476D1CE4E5B9
_C2 = 0x94D049BB133111EB


def tuple_hasher(scheme_key: bytes) -> hashlib.blake2b:
    return hashlib.blake2b(key=scheme_key[:64], digest_size=8, person=b"ipgate-lex")


def tuple_hash(base: hashlib.blake2b, context: str, gid: str) -> int:
    h = base.copy()
    h.update(context.encode("utf-8") + b"\x1f" + gid.encode("utf-8"))
    return int.from_bytes(h.digest(), "little")


def mix64(x: int) -> int:
    z = x & M64
    z = ((z ^ (z >> 30)) * _C1) & M64
    z = ((z ^ (z >> 27)) * _C2) & M64
    return z ^ (z >> 31)


def mix64_array(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """The same mixer on uint64 arrays (wrap-around multiplication is what we want here)."""
    z = x ^ (x >> np.uint64(30))
    z *= np.uint64(_C1)
    z ^= z >> np.uint64(27)
    z *= np.uint64(_C2)
    z ^= z >> np.uint64(31)
    return z


def choose(t: int, seed: int, k: int) -> int:
    return mix64(t ^ seed) % k
