"""The per-client state envelope: engine header + one opaque blob per detector, in a compact binary form.

Layout (little-endian): ``b"ID"`` magic, version byte, header struct (requests seen, tier, cool-down clock,
last request time, last/max score, inherited cluster score), then for each detector
``u8 name length, name, u16 blob length, blob``. Unknown detector names are skipped and missing ones start
fresh, so enabling or disabling a detector never invalidates stored state. The gateway stores the bytes
as they are (one Redis value); ``STATE_BUDGET_BYTES`` bounds them.

Declared ranges, checked by ``decode`` (and the detectors' counters by ``detectors.base.Counters``): times are
Unix seconds in ``[0, MAX_TS]``, the cool-down clock is ``-1`` (not cooling down) or such a time, scores lie
in ``[0, 1]``; the tier is checked by the engine against the policy. The gateway never writes anything else, so
a state outside them was tampered with or corrupted in the store: it is refused like garbage.

Compatibility across builds (replicas of two builds share one store during a rolling upgrade): every version,
this one and any later one, starts with the same eight bytes, ``b"ID"``, the version byte, the u32 requests
seen and the u8 tier (``header_tier``). A build that cannot read a state (a later version, a tier above its
thresholds) starts the evidence afresh but keeps that tier: a raised tier is never lowered by a reader that
does not understand the rest. A later version must therefore keep these eight bytes as they are.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

MAGIC = b"ID"
VERSION = 1
_HEADER = struct.Struct("<IBddfff")
#: The latest timestamp a state may hold (about the year 36 800): far above any clock, and it refuses a
#: far-future time that would stop a client's decay (``last_ts = max(last_ts, now)``) or a millisecond clock.
MAX_TS = float(2**40)


@dataclass(slots=True)
class Envelope:
    requests_seen: int = 0
    tier: int = 0
    below_since: float = -1.0
    last_ts: float = 0.0
    last_score: float = 0.0
    max_score: float = 0.0
    cluster_score: float = 0.0
    blobs: dict[str, bytes] = field(default_factory=dict)


def encode(env: Envelope) -> bytes:
    parts = [
        MAGIC,
        bytes((VERSION,)),
        _HEADER.pack(
            min(env.requests_seen, 0xFFFFFFFF), env.tier, env.below_since, env.last_ts,
            env.last_score, env.max_score, env.cluster_score,
        ),
    ]
    for name, blob in env.blobs.items():
        parts += (_name_field(name), _U16.pack(len(blob)), blob)  # one join below: each blob copied once
    return b"".join(parts)


_U16 = struct.Struct("<H")
_NAME_FIELDS: dict[str, bytes] = {}


def _name_field(name: str) -> bytes:
    """``u8 length + name`` for a detector name (memoised: the set of names is small and fixed)."""
    field_ = _NAME_FIELDS.get(name)
    if field_ is None:
        raw = name.encode()
        field_ = struct.pack("<B", len(raw)) + raw
        if len(_NAME_FIELDS) < 256:
            _NAME_FIELDS[name] = field_
    return field_


def decode(buf: bytes | bytearray | memoryview) -> Envelope:
    """Parse an envelope; raise ValueError on anything malformed (the engine then starts fresh)."""
    # a bytearray's or memoryview's slices would not be hashable name keys (see ``_NAMES``)
    data = buf if isinstance(buf, bytes) else bytes(buf)
    if len(data) < 3 + _HEADER.size or data[:2] != MAGIC:
        raise ValueError("not a detector state envelope")
    if data[2] != VERSION:
        raise ValueError(f"unsupported detector state version {data[2]}")
    try:
        seen, tier, below, last_ts, last_score, max_score, cluster = _HEADER.unpack_from(data, 3)
        # explicit comparisons rather than generators over tuples (the same tests, ~1 us less per state);
        # every one is False for NaN
        if not (
            0.0 <= last_ts <= MAX_TS and (below == -1.0 or 0.0 <= below <= MAX_TS)
            and 0.0 <= last_score <= 1.0 and 0.0 <= max_score <= 1.0 and 0.0 <= cluster <= 1.0
        ):
            raise ValueError("detector state header holds times or scores outside their declared ranges")
        blobs: dict[str, bytes] = {}
        pos, end = 3 + _HEADER.size, len(data)
        names = _NAMES
        while pos < end:
            n = data[pos]
            raw = data[pos + 1 : pos + 1 + n]
            name = names.get(raw)
            if name is None:
                name = raw.decode()
                if len(names) < 256:  # the set of detector names is small and fixed; garbage cannot grow it
                    names[raw] = name
            pos += 3 + n
            blen = data[pos - 2] | data[pos - 1] << 8  # the little-endian u16 length; IndexError if cut
            if pos + blen > end:
                raise ValueError("truncated detector blob")
            blobs[name] = data[pos : pos + blen]
            pos += blen
    except (struct.error, UnicodeDecodeError, IndexError) as e:
        raise ValueError(f"malformed detector state: {e}") from e
    return Envelope(seen, tier, below, last_ts, last_score, max_score, cluster, blobs)


def header_tier(data: bytes | None) -> int:
    """The tier a stored state's header holds, without decoding the rest: the eighth byte, which every version
    of the envelope keeps there (see the module docstring), also of a version this build cannot read or of a
    state whose rest is unreadable (0 for no state or another format). The gateway's stored tier is replaced by
    an administrator's pin; this is the detector's own."""
    if not data or len(data) < 8 or data[:2] != MAGIC:
        return 0
    return data[7]


#: raw name bytes -> name, for the names seen (memoised like ``_NAME_FIELDS``)
_NAMES: dict[bytes, str] = {}
