"""The cold path's faster decoding changes nothing: every decoder against the plain one it replaced.

The cold path is a request whose client state must be decoded from the bytes the store returned (another
replica served the client last). Its decoders now skip allocations, parse short counter blocks with one
``struct`` call, gather the template table with one ``take``, keep the logit-probing bitmap and ring packed
until first used, and look the bytes up in the decoded-state cache through a short fingerprint. Each test
here runs the new code and a plain reference (the decoding as it was before, written out below) on the same
bytes — real states from request streams, random valid states, and corrupted ones — and requires identical
results: the same values bit for bit, dtypes, shapes and writability, the same bytes written back, the same
scores after further requests, and a ValueError exactly where the reference raises one. The references also
apply the declared ranges of the stored numbers (``detectors.state``, ``detectors.base.COUNT_MAX``), written out
plainly, so the decoders' cheaper range checks are compared with them too.
"""

from __future__ import annotations

import math
import random
import struct
from collections import OrderedDict
from typing import Any

import numpy as np
import pytest

from detectors import state as envelope
from detectors.base import COUNT_MAX, Counters
from detectors.combiner import CombinerParams
from detectors.coverage import RING, TOPIC0, Coverage, CoverageState
from detectors.decoded_cache import DecodedCache
from detectors.engine import Engine
from detectors.features import EMBED_DIM
from detectors.linking import MAX_PEERS, MAX_SHARED, LinkState
from detectors.logit_probing import LogitProbing, ProbeState
from detectors.state import MAX_TS
from detectors.templates import MAX_CLUSTERS, SKEL, SLOTS, Templates, TemplateState
from detectors.timing import HOURS0, SUM_LOG
from detectors.types import ResponseFeatures
from detectors.volume import VolumeState
from tests.detectors.conftest import chat, feats

T0 = 1_767_258_000.0
F4, U4 = np.dtype("<f4"), np.dtype("<u4")


# --- the plain decoders, as they were before the cold-path round ----------------------------------------------

def ref_counters(data: bytes, size: int, signed: tuple[int, int] = (0, 0)) -> Counters:
    st = Counters(size)
    if len(data) < 8 + 4 * size:
        raise ValueError("truncated")
    (st.last_ts,) = struct.unpack_from("<d", data, 0)
    st.c = np.frombuffer(data, dtype=F4, count=size, offset=8).astype(np.float64)
    if not np.all(np.isfinite(st.c)):
        raise ValueError("non-finite")
    counts = np.delete(st.c, np.arange(*signed))
    if not (np.all(np.abs(st.c) < COUNT_MAX) and not np.signbit(counts).any() and 0.0 <= st.last_ts <= MAX_TS):
        raise ValueError("range")  # a count's sign bit is never set, not even on a zero
    return st


def ref_probe(data: bytes) -> ProbeState:
    st = ProbeState()
    st.counters = ref_counters(data, 8)
    if len(data) != LogitProbing.state_bytes:
        raise ValueError("size")
    st.bitmap = bytearray(data[40:552])
    st.recent = list(struct.unpack_from("<16I", data, 552))
    st.max_top, st.last_bias = struct.unpack_from("<HI", data, 616)
    return st


def ref_templates(data: bytes) -> TemplateState:
    st = TemplateState()
    st.counters = ref_counters(data, 3)
    pos = 20
    k = data[pos] if len(data) > pos else 0xFF
    if k > MAX_CLUSTERS or len(data) != pos + 1 + k * 4 * (SLOTS + SKEL + 4):
        raise ValueError("table")
    pos += 1
    u = np.frombuffer(data, U4, k * (SLOTS + SKEL + 3), pos).astype(np.uint32)
    a, b = k * SLOTS, k * (SLOTS + SKEL)
    st.keys = np.empty((k, SLOTS + 2), dtype=np.uint32)
    st.sigs[:], st.heads[:], st.tails[:] = u[:a].reshape(k, SLOTS), u[b : b + k], u[b + k : b + 2 * k]
    st.skels, st.lasts = u[a:b].reshape(k, SKEL), u[b + 2 * k :]
    st.counts = np.frombuffer(data, F4, k, pos + 4 * k * (SLOTS + SKEL + 3)).astype(np.float64)
    if not (np.isfinite(st.counts).all() and not np.signbit(st.counts).any() and np.all(st.counts < COUNT_MAX)):
        raise ValueError("counts")
    return st


def ref_coverage(data: bytes, k: int) -> CoverageState:
    st = CoverageState(k)
    st.counters = ref_counters(data, TOPIC0 + k + EMBED_DIM, (TOPIC0 + k, TOPIC0 + k + EMBED_DIM))
    pos = 8 + 4 * len(st.counters.c)
    if len(data) != pos + RING * EMBED_DIM + 1:
        raise ValueError("size")
    raw = np.frombuffer(data, dtype=np.int8, count=RING * EMBED_DIM, offset=pos).reshape(RING, EMBED_DIM)
    st.ring_i8, st.ring, st.pos = raw.copy(), raw.astype(np.float32) / np.float32(127.0), data[-1] % RING
    st.mean_sum = st.counters.c[TOPIC0 + k :]
    return st


def ref_volume(data: bytes) -> VolumeState:
    st = VolumeState()
    st.counters = ref_counters(data, 8)
    if len(data) != 40 + 24:
        raise ValueError("size")
    st.rate, st.tok_rate, *recent = struct.unpack_from("<ff4I", data, 40)
    if not (math.isfinite(st.rate) and math.isfinite(st.tok_rate) and st.rate >= 0.0 and st.tok_rate >= 0.0):
        raise ValueError("rates")
    st.recent_sampling = list(recent)
    return st


def ref_plain_counters(size: int, signed: tuple[int, int] = (0, 0)) -> Any:
    def load(data: bytes) -> Counters:
        st = ref_counters(data, size, signed)
        if 8 + 4 * size != len(data):
            raise ValueError("trailing")
        return st
    return load


def ref_linking(data: bytes) -> LinkState:
    st = LinkState()
    try:
        st.last_ts, count = struct.unpack_from("<dB", data, 0)
        pos = 9
        for _ in range(count):
            n = data[pos]
            peer = data[pos + 1 : pos + 1 + n].decode()
            (st.peers[peer],) = struct.unpack_from("<f", data, pos + 1 + n)
            pos += 5 + n
    except (struct.error, IndexError, UnicodeDecodeError) as e:
        raise ValueError("malformed") from e
    if pos != len(data) or count > MAX_PEERS or not all(0.0 <= c <= MAX_SHARED for c in st.peers.values()):
        raise ValueError("malformed")
    if not 0.0 <= st.last_ts <= MAX_TS:
        raise ValueError("timestamp")
    return st


def ref_envelope(data: bytes) -> envelope.Envelope:
    header = struct.Struct("<IBddfff")
    if len(data) < 3 + header.size or data[:2] != b"ID":
        raise ValueError("magic")
    if data[2] != 1:
        raise ValueError("version")
    try:
        seen, tier, below, last_ts, last_score, max_score, cluster = header.unpack_from(data, 3)
        if not all(map(math.isfinite, (below, last_ts))) or not all(
            0.0 <= x <= 1.0 for x in (last_score, max_score, cluster)
        ):
            raise ValueError("header")
        if not (0.0 <= last_ts <= MAX_TS and (below == -1.0 or 0.0 <= below <= MAX_TS)):
            raise ValueError("header times")
        env = envelope.Envelope(seen, tier, below, last_ts, last_score, max_score, cluster)
        pos = 3 + header.size
        while pos < len(data):
            n = data[pos]
            name = data[pos + 1 : pos + 1 + n].decode()
            pos += 1 + n
            (blen,) = struct.unpack_from("<H", data, pos)
            pos += 2
            if pos + blen > len(data):
                raise ValueError("truncated")
            env.blobs[name] = data[pos : pos + blen]
            pos += blen
    except (struct.error, UnicodeDecodeError, IndexError) as e:
        raise ValueError("malformed") from e
    return env


# --- comparison helpers ---------------------------------------------------------------------------------------

_FIELDS = {
    "logit_probing": ("bitmap", "recent", "max_top", "last_bias"),
    "templates": ("keys", "sigs", "heads", "tails", "skels", "lasts", "counts"),
    "coverage": ("ring", "ring_i8", "pos", "mean_sum"),
    "volume": ("rate", "tok_rate", "recent_sampling"),
    "linking": ("last_ts", "peers"),
}


def same(a: Any, b: Any, where: str) -> None:
    """Equal bit for bit: arrays by dtype, shape, writability and bytes; everything else by type and ==."""
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray), where
        assert (a.dtype, a.shape, a.flags.writeable) == (b.dtype, b.shape, b.flags.writeable), where
        assert a.tobytes() == b.tobytes(), where
    elif isinstance(a, float):
        assert type(b) is float and struct.pack("<d", a) == struct.pack("<d", b), (where, a, b)  # NaN, -0.0
    elif isinstance(a, dict):
        assert type(b) is dict and list(a) == list(b), where
        for key in a:
            same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list):
        assert type(b) is list and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{where}[{i}]")
    else:
        assert type(a) is type(b) and a == b, (where, a, b)


def same_state(name: str, a: Any, b: Any) -> None:
    ca: Any = a if isinstance(a, Counters) else getattr(a, "counters", None)
    cb: Any = b if isinstance(b, Counters) else getattr(b, "counters", None)
    if ca is not None:
        same(ca.c, cb.c, f"{name}.c")
        same(ca.last_ts, cb.last_ts, f"{name}.last_ts")
    for f in _FIELDS.get(name, ()):
        same(getattr(a, f), getattr(b, f), f"{name}.{f}")


def outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    # A signalling-NaN bit pattern makes numpy's float32 -> float64 cast warn (an error under pytest): both
    # decoders then raise ValueError for the non-finite value, which is what is compared.
    with np.errstate(invalid="ignore"):
        try:
            return "ok", fn(*args)
        except ValueError:
            return "ValueError", None


def references(engine: Engine) -> dict[str, Any]:
    k = next(d.k for d in engine.detectors if isinstance(d, Coverage))
    return {
        "logit_probing": ref_probe, "templates": ref_templates, "coverage": lambda d: ref_coverage(d, k),
        "volume": ref_volume, "timing": ref_plain_counters(HOURS0 + 24, (SUM_LOG, SUM_LOG + 1)),
        "reasoning": ref_plain_counters(3),
        "linking": ref_linking,
    }


# --- request streams whose states move in every detector --------------------------------------------------------

def stream(n: int, seed: int) -> list[tuple[dict[str, Any], float]]:
    """Template fills, logit probes (with and without logprobs), seeded repeats, plain questions and, now and
    then, a gap of more than six hours (the probing bitmap's reset)."""
    r = random.Random(seed)
    out, t = [], T0
    for i in range(n):
        t += 7 * 3600.0 if r.random() < 0.03 else r.uniform(0.2, 90.0)
        kind = r.random()
        if kind < 0.35:
            body = chat(f"Write a step-by-step guide to {r.choice(['baking', 'sailing', 'coding', 'chess'])} for "
                        f"grade {r.randint(1, 12)} students, then list {r.randint(3, 9)} quiz questions.")
        elif kind < 0.5:
            extra: dict[str, Any] = {"logprobs": True, "top_logprobs": r.choice([1, 5, 20])} if r.random() < 0.7 else {}
            body = chat("Say hi", max_tokens=1, logit_bias={str(1000 + 20 * i + j): 100 for j in range(20)}, **extra)
        elif kind < 0.6:
            body = chat("Repeat after me: the quick brown fox.", seed=r.randint(1, 5), max_tokens=2)
        else:
            body = chat(f"What is {r.randint(1, 99)} times {r.randint(1, 99)}, and why does {r.random():.3f} "
                        f"matter?", temperature=r.choice([0.2, 0.7, 1.0]), max_tokens=r.choice([16, 64, 256]))
        out.append((body, t))
    return out


def stored_states(engine: Engine, seeds: tuple[int, ...] = (1, 2, 3), n: int = 150) -> list[bytes]:
    """Every state a client's stream leaves in the store (response folded in, links applied now and then)."""
    out = []
    for seed in seeds:
        state: bytes | None = None
        for i, (body, ts) in enumerate(stream(n, seed)):
            _, pending = engine.observe_pending(state, feats(body, ts), ts)
            state = engine.observe_response(pending, ResponseFeatures(prompt_tokens=20, completion_tokens=16), ts)
            if i % 4 == 0:
                state = engine.apply_links(state, {f"peer-{seed}": 3, "peer-x": 2}, ts, {f"peer-{seed}": 0.7}).state
            out.append(state)
    return out


@pytest.fixture(scope="module")
def real_states(params: CombinerParams) -> list[bytes]:
    return stored_states(Engine.from_params(params))


# --- the tests --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("size", [0, 1, 3, 8, 15, 16, 17, 28, 32, 33, 99])
def test_counter_decode_equals_the_plain_decoder(size: int, signed: bool) -> None:
    r = np.random.default_rng(size)
    block = (size // 3, size // 3 + max(size // 4, 1)) if signed and size >= 2 else (0, 0)  # signed sums
    below_max = np.nextafter(np.float32(COUNT_MAX), np.float32(0.0))  # the largest count in range
    valid = np.array([0.0, 1e-45, 1.0, below_max], dtype=np.float32)
    out_of_range = np.array([-0.0, -1e-45, -1.0, COUNT_MAX, 3.4e38, -3.4e38], dtype=np.float32)
    for trial in range(60):
        vals = np.abs(r.standard_normal(size) * 10.0 ** r.integers(-3, 6)).astype(np.float32)
        vals[block[0] : block[1]] *= -1  # any sign is in range there
        if size and trial % 3 == 0:
            vals[r.integers(size)] = valid[trial % len(valid)]
        bad = bool(size) and trial % 5 >= 3
        if bad and trial % 5 == 3:
            counts = [i for i in range(size) if not block[0] <= i < block[1]]
            vals[counts[r.integers(len(counts))]] = out_of_range[trial % len(out_of_range)]
        elif bad:
            vals[r.integers(size)] = [np.nan, np.inf, -np.inf][trial % 3]
        data = struct.pack("<d", float(r.uniform(0, 2e9))) + vals.tobytes() + bytes(r.integers(0, 256, 7).tolist())
        want = outcome(ref_counters, data, size, block)
        got = outcome(Counters.decode, data, size, block)
        assert got[0] == want[0] == ("ValueError" if bad else "ok"), (trial, vals)
        if want[1] is not None:
            same_state("counters", got[1], want[1])
            if block == (0, 0):  # ``load`` reads a block of counts
                loaded = Counters(size)
                assert loaded.load(data) == 8 + 4 * size
                same_state("counters", loaded, want[1])
        assert outcome(Counters.decode, data[: 8 + 4 * size - 1], size, block)[0] == "ValueError"  # truncated


def test_every_detector_decodes_real_states_as_the_plain_decoder_did(engine: Engine, real_states: list[bytes]
                                                                      ) -> None:
    refs = references(engine)
    for data in real_states[::3]:
        env = envelope.decode(data)
        for d in engine.detectors:
            blob = env.blobs[d.name]
            fast, plain = d.load(blob), refs[d.name](blob)
            same_state(d.name, fast, plain)
            assert d.dump(d.load(blob)) == d.dump(plain) == blob, d.name  # and back to the same bytes


def test_decoded_states_go_on_exactly_like_the_plain_ones(engine: Engine, real_states: list[bytes]) -> None:
    """A fast-decoded and a plainly decoded state, fed the same further requests, score and dump the same."""
    refs = references(engine)
    follow = stream(6, 99)
    for data in real_states[::11]:
        env = envelope.decode(data)
        for d in engine.detectors:
            fast, plain = d.load(env.blobs[d.name]), refs[d.name](env.blobs[d.name])
            for body, ts in follow:
                f, now = feats(body, ts + 1e6), ts + 1e6
                assert d.observe(fast, f, now) == d.observe(plain, f, now), d.name
                assert d.dump(fast) == d.dump(plain), d.name
            assert d.score(fast, now) == d.score(plain, now), d.name


def _random_blob(name: str, r: random.Random, k_topics: int) -> bytes:
    """A state of the right layout with random (finite) contents: counts non-negative but now and then (and
    signed sums always) with negative values too."""
    def f32(n: int, signed: bool = False) -> bytes:
        lo = -1e6 if signed or r.random() < 0.1 else 0.0
        return np.array([r.uniform(lo, 1e6) for _ in range(n)], dtype=np.float32).tobytes()

    def u32(n: int) -> bytes:
        return np.array([r.getrandbits(32) for _ in range(n)], dtype=np.uint32).tobytes()

    ts = struct.pack("<d", r.uniform(0, 2e9))
    if name == "logit_probing":
        return ts + f32(8) + r.randbytes(512) + u32(16) + struct.pack("<HI", r.getrandbits(16), r.getrandbits(32))
    if name == "templates":
        k = r.randint(0, MAX_CLUSTERS)
        return ts + f32(3) + bytes((k,)) + u32(k * (SLOTS + SKEL + 3)) + f32(k)
    if name == "coverage":
        return (ts + f32(TOPIC0 + k_topics) + f32(EMBED_DIM, signed=True) + r.randbytes(RING * EMBED_DIM)
                + bytes((r.randrange(256),)))
    if name == "volume":
        return ts + f32(8) + f32(2) + u32(4)
    if name == "timing":
        return ts + f32(SUM_LOG) + f32(1, signed=True) + f32(HOURS0 + 24 - SUM_LOG - 1)
    if name == "reasoning":
        return ts + f32(3)
    peers = r.randint(0, 3)
    body = b"".join(bytes((3,)) + f"p{i:02d}".encode() + struct.pack("<f", r.uniform(0, 50)) for i in range(peers))
    return ts + bytes((peers,)) + body


def _corrupt(blob: bytes, r: random.Random) -> bytes:
    """Truncated, extended, or with a byte set to a value that tends to break things (NaN/inf exponents)."""
    kind = r.randrange(4)
    if kind == 0 and blob:
        return blob[: r.randrange(len(blob))]
    if kind == 1:
        return blob + r.randbytes(r.randint(1, 5))
    if not blob:
        return blob
    out = bytearray(blob)
    i = r.randrange(len(out))
    out[i] = r.choice([0xFF, 0x7F, 0x80, 0x00, r.randrange(256)])
    if i + 1 < len(out) and r.random() < 0.5:
        out[i + 1] = 0xFF
    return bytes(out)


def test_random_and_corrupted_states_decode_or_fail_as_before(engine: Engine) -> None:
    refs = references(engine)
    k = next(d.k for d in engine.detectors if isinstance(d, Coverage))
    r = random.Random(5)
    failures = 0
    for _ in range(400):
        for d in engine.detectors:
            blob = _random_blob(d.name, r, k)
            for data in (blob, _corrupt(blob, r)):
                want, got = outcome(refs[d.name], data), outcome(d.load, data)
                assert got[0] == want[0], (d.name, data.hex())
                if want[1] is not None:
                    same_state(d.name, got[1], want[1])
                    assert d.dump(got[1]) == d.dump(want[1]), d.name
                failures += want[0] != "ok"
    assert failures > 200  # the corruptions do reach the error paths


def test_templates_columns_are_writable_copies_in_the_state_layout(engine: Engine, real_states: list[bytes]) -> None:
    templates = next(d for d in engine.detectors if isinstance(d, Templates))
    data = envelope.decode(real_states[-1]).blobs["templates"]
    st = templates.load(data)
    assert len(st) > 0 and st._room is None
    assert np.shares_memory(st.sigs, st.keys) and np.shares_memory(st.heads, st.keys)
    st.keys[:] = 0  # writable, and not a view of the stored bytes
    st.skels[:] = 0
    st.lasts[:] = 0
    assert envelope.decode(real_states[-1]).blobs["templates"] == data
    assert not st.sigs.any() and not st.heads.any() and not st.tails.any()


def test_a_probe_state_unpacks_on_first_touch_and_keeps_the_stored_fields(engine: Engine) -> None:
    probing = next(d for d in engine.detectors if isinstance(d, LogitProbing))
    r = random.Random(8)
    for field in ("bitmap", "recent", "max_top", "last_bias", None):
        blob = _random_blob("logit_probing", r, 0)
        plain = ref_probe(blob)
        st = probing.load(blob)
        assert st.packed_tail() == blob[40:] and probing.dump(st) == blob  # untouched: written back as stored
        if field is None:  # a write first: the other fields still read their stored values
            st.max_top = 7
            plain.max_top = 7
        else:
            assert getattr(st, field) == getattr(plain, field)
        assert st.packed_tail() is None
        same_state("logit_probing", st, plain)
        assert probing.dump(st) == probing.dump(plain)
    fresh = probing.new_state()
    assert fresh.packed_tail() is None and fresh.bitmap == bytearray(512) and fresh.recent == [0] * 16


def test_envelope_decoding_equals_the_plain_parser(real_states: list[bytes]) -> None:
    r = random.Random(11)
    checked = {"ok": 0, "ValueError": 0}
    for data in real_states[::5]:
        for candidate in (data, _corrupt(data, r), _corrupt(data[:80], r), data[:3 + 33 + r.randrange(40)]):
            want, got = outcome(ref_envelope, candidate), outcome(envelope.decode, candidate)
            assert got[0] == want[0]
            checked[want[0]] += 1
            if want[1] is not None:
                assert got[1] == want[1]
                assert all(type(b) is bytes for b in got[1].blobs.values())
        assert envelope.decode(bytearray(data)) == ref_envelope(data)  # not only bytes objects
    assert checked["ok"] > 20 and checked["ValueError"] > 20
    # every header field at values the header check must refuse (or accept) exactly as before
    data = real_states[-1]
    for at, fmt in ((8, "<d"), (16, "<d"), (24, "<f"), (28, "<f"), (32, "<f")):
        for value in (math.nan, math.inf, -math.inf, -0.5, 0.0, 1.0, 1.5, -0.0):
            candidate = data[:at] + struct.pack(fmt, value) + data[at + struct.calcsize(fmt) :]
            want, got = outcome(ref_envelope, candidate), outcome(envelope.decode, candidate)
            assert got[0] == want[0], (at, value)
            assert got[1] == want[1] or (want[1] is None and got[1] is None) or math.isnan(value)
    bad_name = envelope.encode(envelope.Envelope(blobs={"x": b"1"})).replace(b"\x01x", b"\x01\xff")
    assert outcome(envelope.decode, bad_name)[0] == outcome(ref_envelope, bad_name)[0] == "ValueError"


def test_the_name_memo_stays_bounded() -> None:
    for i in range(400):
        envelope.decode(envelope.encode(envelope.Envelope(blobs={f"name-{i}": b"x"})))
    assert len(envelope._NAMES) <= 256


def _header_twins(r: random.Random, n: int) -> list[bytes]:
    """States sharing a few headers (the cache's fingerprint) with different blobs, as two clients with equal
    request counts, clocks and scores, or one client whose state another replica changed, would have."""
    headers = [envelope.Envelope(requests_seen=r.randint(1, 3), last_ts=T0 + r.randint(0, 2)) for _ in range(3)]
    out = []
    for _ in range(n):
        h = r.choice(headers)
        out.append(envelope.encode(envelope.Envelope(h.requests_seen, 0, -1.0, h.last_ts, blobs={
            "timing": r.randbytes(r.randint(0, 3))})))
    return out


def test_the_decoded_cache_hits_and_misses_exactly_like_a_dict_keyed_by_the_bytes() -> None:
    """Random puts, takes (the same object, an equal new object, bytes with the same fingerprint and other
    contents) and clears, against an OrderedDict keyed by the bytes: the same hits, values and evictions."""
    r = random.Random(3)
    for limit in (1, 2, 5, 40):
        cache: DecodedCache[int] = DecodedCache()
        model: OrderedDict[bytes, int] = OrderedDict()
        pool = _header_twins(r, 30)
        for step in range(3000):
            data = r.choice(pool)
            op = r.random()
            if op < 0.45:
                cache.put(data, step, limit)
                model[data] = step
                if len(model) > limit:
                    model.popitem(last=False)
            elif op < 0.995:
                probe = bytes(bytearray(data)) if r.random() < 0.5 else data  # Redis returns a new object
                assert cache.take(probe) == model.pop(probe, None)
            else:
                cache.clear()
                model.clear()
            assert len(cache) == len(model)
            assert list(cache._entries.items()) == list(model.items())
        assert sorted(k for ks in cache._by_fp.values() for k in ks) == sorted(model)


def test_the_decoded_cache_never_returns_state_for_other_bytes(params: CombinerParams) -> None:
    """Another replica changed the state: bytes with the same header (the fingerprint) but another blob miss,
    and the engine decodes them, exactly as an engine without a cache does."""
    eng, plain = Engine.from_params(params), Engine.from_params(params)
    plain.cache_size = 0
    body, ts = stream(1, 4)[0]
    state = eng.observe(None, feats(body, ts), ts).state  # cached decoded, keyed by these bytes
    env = envelope.decode(state)
    env.blobs["reasoning"] = Counters(3).dump()  # same header, different contents: what another replica wrote
    other = envelope.encode(env)
    assert other[3:36] == state[3:36] and other != state
    f = feats(stream(2, 4)[1][0], ts + 5)
    assert eng.observe(other, f, ts + 5) == plain.observe(other, f, ts + 5)
    assert eng._decoded.take(other) is None and len(eng._decoded) == 2  # the first entry is still there


def test_equal_bytes_from_the_store_hit_the_cache_like_the_same_object(params: CombinerParams) -> None:
    """The memory store returns the object the engine wrote, Redis an equal new one: same hits, same results
    (a hit keeps the state as computed, a miss rounds it through float32, so a missed hit would show)."""
    same_obj, new_obj, cold = (Engine.from_params(params) for _ in range(3))
    cold.cache_size = 0
    states: dict[str, bytes | None] = {"same": None, "new": None, "cold": None}
    outcomes: dict[str, list[Any]] = {k: [] for k in states}
    for body, ts in stream(200, 6):
        f = feats(body, ts)
        for key, eng in (("same", same_obj), ("new", new_obj), ("cold", cold)):
            data = states[key]
            if key == "new" and data is not None:
                data = bytes(bytearray(data))
            obs = eng.observe(data, f, ts)
            states[key] = obs.state
            outcomes[key].append(obs.verdict)
    assert outcomes["new"] == outcomes["same"]
    assert states["new"] == states["same"]
    assert outcomes["cold"] != outcomes["same"]  # the float32 round trip does change scores: the check bites
