"""The keyed pseudo-random function that decides which tokens are green, written once for two backends.

Every function here uses only the operators ``^ >> & * +`` (and ``minimum`` passed in by the caller), so it
runs unchanged on torch int64 tensors (generation, GPU or CPU) and on numpy int64 arrays (detection, no
torch). Values are 32-bit lanes held in int64: every intermediate stays below 2⁶³ (the multipliers are
below 2³¹), so no signed overflow happens in either library and both compute bit-identical results —
detection reproduces generation exactly by construction, not by keeping two implementations in sync.
(``subkeys_array`` and ``mix_u32_`` at the end are numpy-only helpers for verification against many keys:
the same HMAC and the same mixer on uint32 lanes, tested equal to ``subkeys`` and ``mix``.)

Structure (all values 32-bit; ``k0..k3`` come from HMAC-SHA256 of the per-client key, see ``subkeys``):

- token hash   ``th(t) = mix(t ^ k0)`` and anchor hash ``ah(t) = mix(t ^ k2)`` — keyed bijections of ids;
- row seed     ``lefthash``: ``s = chain(k1, th(x1), ..., th(xh))`` (ordered);
               ``minhash``:  ``s = mix(min_j th(xj) ^ k1)`` (a set function of the window);
               ``selfhash``: per candidate ``t``: ``s(t) = min over u in window ∪ {t} of mix(th(u) ^ ah(t))``;
- green test   ``mix(mix(s ^ k3) ^ th(t)) < threshold`` (``threshold = γ·2³²``).

The mixer has the shape of Wellons' "lowbias32" (two multiply-xorshift rounds, full avalanche). It is not
a cryptographic PRF; the secret is the 128 bits of subkeys, which change per client and per key version,
and the seeds are recomputed per position, as in the KGW reference implementation (whose PRF is a
multiplicative hash).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

M32 = 0xFFFFFFFF
_DOMAIN = b"ipgate/kgw/subkeys/v1"

# A numpy ndarray or a torch tensor of int64 holding values in [0, 2^32), or a Python int (subkeys, scalars).
# Typed as Any because the two libraries share the operators used here but no common static type.
Lanes = Any
Minimum = Callable[[Lanes, Lanes], Lanes]


def subkeys(client_key: bytes) -> tuple[int, int, int, int]:
    """Four 32-bit subkeys for the KGW PRF, derived from the per-client key (``watermark.keys``) with a
    domain-separated HMAC so the lexical scheme's use of the same key is independent."""
    if len(client_key) < 16:
        raise ValueError("kgw key must be at least 16 bytes (derive it with watermark.keys)")
    digest = hmac.new(client_key, _DOMAIN, hashlib.sha256).digest()
    k0, k1, k2, k3 = struct.unpack(">4I", digest[:16])
    return k0, k1, k2, k3


def subkeys_array(client_keys: Sequence[bytes]) -> npt.NDArray[np.uint32]:
    """``(K, 4)`` uint32: ``subkeys`` of every key, for attribution among many clients. The same
    HMAC-SHA256, spelled out (RFC 2104) on ``hashlib.sha256``: each key differs, so nothing can be pre-keyed,
    but padding the key with ``bytes.translate`` and hashing twice skips ``hmac``'s per-call set-up —
    100 000 keys in ≈ 0.10 s instead of ≈ 0.16 s through ``hmac.digest``. Byte-identical to ``subkeys``
    (tested); one big-endian buffer decode instead of a ``struct.unpack`` per key."""
    if any(len(k) < 16 for k in client_keys):
        raise ValueError("kgw key must be at least 16 bytes (derive it with watermark.keys)")
    if any(len(k) != 32 for k in client_keys):  # watermark.keys derives 32-byte keys; others: the long way
        buf = b"".join([hmac.digest(k, _DOMAIN, "sha256")[:16] for k in client_keys])
    else:  # HMAC pads a 32-byte key with 32 zero bytes, which the pads turn into constant tails
        sha, ipad, opad = hashlib.sha256, _IPAD, _OPAD
        inner_tail, outer_tail = b"\x36" * 32 + _DOMAIN, b"\x5c" * 32
        buf = b"".join([
            sha(k.translate(opad) + outer_tail + sha(k.translate(ipad) + inner_tail).digest()).digest()[:16]
            for k in client_keys
        ])
    return np.frombuffer(buf, dtype=">u4").astype(np.uint32).reshape(len(client_keys), 4)


_IPAD = bytes(b ^ 0x36 for b in range(256))  # translate tables: XOR every byte with HMAC's pads
_OPAD = bytes(b ^ 0x5C for b in range(256))
_C1 = 0x7FEB352D
_C2 = 0x31848BAB


def mix(x: Lanes) -> Lanes:
    """A bijective 32-bit multiply-xorshift mixer in the shape of Wellons' lowbias32 ("hash-prospector").

    Both multipliers are odd and below 2³¹, so ``x * c`` (x < 2³²) stays below 2⁶³: no int64 overflow in
    torch or numpy. (lowbias32's second multiplier is above 2³¹; with this one the measured avalanche bias
    is the same: worst output-bit flip probability within 0.005 of 1/2 over 2·10⁵ inputs.)
    """
    x = x ^ (x >> 16)
    x = (x * _C1) & M32
    x = x ^ (x >> 15)
    x = (x * _C2) & M32
    return x ^ (x >> 16)


def token_hash(tokens: Lanes, k0: Lanes) -> Lanes:
    return mix(tokens ^ k0)


def anchor_hash(tokens: Lanes, k2: Lanes) -> Lanes:
    return mix(tokens ^ k2)


def lefthash_seed(window_hashes: list[Lanes], k1: Lanes) -> Lanes:
    """Order-dependent seed of the ``h`` previous tokens (oldest first), given their token hashes."""
    s: Lanes = k1
    for wh in window_hashes:
        s = mix(s ^ wh)
    return s


def minhash_seed(window_hashes: list[Lanes], k1: Lanes, minimum: Minimum) -> Lanes:
    """Order-free seed: the smallest keyed token hash of the window, mixed with a subkey."""
    m = window_hashes[0]
    for wh in window_hashes[1:]:
        m = minimum(m, wh)
    return mix(m ^ k1)


def selfhash_seed(window_hashes: list[Lanes], cand_hash: Lanes, cand_anchor: Lanes, minimum: Minimum) -> Lanes:
    """Anchored min-hash over the previous tokens and the candidate itself; the candidate's anchor hash
    makes each candidate's seed different even when they share the window's minimum."""
    s = mix(cand_hash ^ cand_anchor)
    for wh in window_hashes:
        s = minimum(s, mix(wh ^ cand_anchor))
    return s


def green_value(seed: Lanes, cand_hash: Lanes, k3: Lanes) -> Lanes:
    """The 32-bit value compared against ``threshold``: green iff ``green_value < threshold``."""
    return mix(mix(seed ^ k3) ^ cand_hash)


# --- numpy uint32 lanes (detection only; the expressions above stay the single source of truth) ----------
#
# ``mix`` above keeps 32-bit values in int64 so torch can run it (torch's unsigned 32-bit dtype supports
# few operations). Detection over many keys is memory-bound, so it runs the same mixer on numpy *uint32* lanes:
# uint32 multiplication wraps mod 2³², exactly what ``(x * c) & M32`` computes on int64 lanes, so the masks
# go away and every array is half the size. ``mix_u32_`` works in place with one scratch buffer (no
# temporaries). Equality with ``mix`` over random inputs is tested (tests/watermark/test_kgw_fast.py).

_C1_U32 = np.uint32(_C1)
_C2_U32 = np.uint32(_C2)


def mix_u32_(x: npt.NDArray[np.uint32], tmp: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]:
    """``x = mix(x)`` in place on uint32 lanes; ``tmp`` is a scratch array of the same shape."""
    np.right_shift(x, 16, out=tmp)
    np.bitwise_xor(x, tmp, out=x)
    np.multiply(x, _C1_U32, out=x)
    np.right_shift(x, 15, out=tmp)
    np.bitwise_xor(x, tmp, out=x)
    np.multiply(x, _C2_U32, out=x)
    np.right_shift(x, 16, out=tmp)
    np.bitwise_xor(x, tmp, out=x)
    return x


# ``mix`` = xs16 ∘ core ∘ xs16, where ``xs16(x) = x ^ (x >> 16)`` is linear over GF(2) and its own inverse
# on 32-bit values (``x >> 32`` is 0). Detection uses the pieces to skip passes without changing a bit:
# ``mix(a ^ b) = xs16(core(xs16(a) ^ xs16(b)))``, so a token's ``xs16(th)`` is computed once per distinct
# token instead of once per use, and in ``mix(mix(x) ^ y)`` the inner trailing and outer leading xs16
# cancel: ``mix(mix(x) ^ y) = xs16(core(core(xs16(x)) ^ xs16(y)))``. Tested equal to ``mix`` compositions.


def xs16_u32_(x: npt.NDArray[np.uint32], tmp: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]:
    """``x ^= x >> 16`` in place: the first and last step of ``mix`` (an involution on 32-bit lanes)."""
    np.right_shift(x, 16, out=tmp)
    np.bitwise_xor(x, tmp, out=x)
    return x


def core_u32_(x: npt.NDArray[np.uint32], tmp: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]:
    """The middle of ``mix`` in place (``mix = xs16 ∘ core ∘ xs16``): multiply, xorshift 15, multiply."""
    np.multiply(x, _C1_U32, out=x)
    np.right_shift(x, 15, out=tmp)
    np.bitwise_xor(x, tmp, out=x)
    np.multiply(x, _C2_U32, out=x)
    return x
