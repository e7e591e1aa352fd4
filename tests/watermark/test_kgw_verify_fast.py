"""The faster KGW verification round (key derivation by hand-rolled HMAC, token-only PRF terms per distinct
token, the ``xs16 ∘ core ∘ xs16`` split of the mixer, dedup on the green value, a shared chunk queue) against
the most straightforward implementation there is: per key, per tuple, Python integers through the public
``prf`` functions, keys from the one-shot ``hmac.digest`` path, distinct (seed, token) pairs in a set.

Random texts (vocabularies from 3 to 5 000 tokens, so token groups from one column to wider than a sort
bucket), random green-list parameters for every seeding scheme, random masters (including ones longer than
the SHA-256 block), several key versions, non-ASCII client ids, chunk sizes that put a handful of keys
through many chunks on both threads, and texts watermarked for one of the clients. The whole
``WatermarkScore`` (family-wise p-value, attributed client and version, candidates) must be identical.
"""

from __future__ import annotations

import hmac
import random
import subprocess
import sys
from collections.abc import Sequence

import numpy as np
import pytest

from watermark import stats
from watermark.base import CandidateScore, WatermarkScore
from watermark.keys import KeyRing, client_key, hmac_sha256_pads
from watermark.kgw import counting, detect, prf
from watermark.kgw.params import KgwParams

SEEDINGS = ("lefthash", "minhash", "selfhash")


# --- the straightforward implementation ---------------------------------------------------------------------


def _plain_counts(tuples: detect.Tuples, key: bytes, params: KgwParams) -> tuple[int, int]:
    k0, k1, k2, k3 = prf.subkeys(key)
    pairs: dict[tuple[int, int], bool] = {}
    for prev, t in zip(tuples.prev.tolist(), tuples.cand.tolist(), strict=True):
        window = [prf.token_hash(u, k0) for u in prev]
        cand_hash = prf.token_hash(t, k0)
        if params.seeding == "lefthash":
            seed = prf.lefthash_seed(window, k1)
        elif params.seeding == "minhash":
            seed = prf.minhash_seed(window, k1, min)
        else:
            seed = prf.selfhash_seed(window, cand_hash, prf.anchor_hash(t, k2), min)
        pairs[(seed, t)] = prf.green_value(seed, cand_hash, k3) < params.threshold
    return len(pairs), sum(pairs.values())


def _plain_score(
    tuples: detect.Tuples, master: bytes, versions: Sequence[int], clients: Sequence[str], params: KgwParams,
    top: int,
) -> WatermarkScore:
    hyps = [(c, v, client_key(master, v, c)) for v in versions for c in clients]
    if not hyps or tuples.n == 0:
        return WatermarkScore("kgw", tuples.n, len(hyps), None, None, 0, 1.0, 0.0)
    counts = [_plain_counts(tuples, key, params) for _, _, key in hyps]
    log_p = [float(stats.binom_log_sf_table(n, params.p_green)[h]) for n, h in counts]
    order = sorted(range(len(hyps)), key=lambda i: (log_p[i], i))
    cands = tuple(
        CandidateScore(hyps[i][0], hyps[i][1], counts[i][1], stats.log_to_p(log_p[i]), stats.log_to_log10(log_p[i]))
        for i in order[:top]
    )
    best = order[0]
    fw = float(stats.bonferroni_log(log_p[best], len(hyps)))
    return WatermarkScore("kgw", counts[best][0], len(hyps), hyps[best][0], hyps[best][1], counts[best][1],
                          stats.log_to_p(fw), stats.log_to_log10(fw), cands)


def _plain_green(window: list[int], t: int, key: bytes, params: KgwParams) -> bool:
    one = detect.Tuples(np.asarray([window], dtype=np.int64).reshape(1, params.prev_tokens),
                        np.asarray([t], dtype=np.int64))
    return _plain_counts(one, key, params)[1] == 1


def _watermarked(key: bytes, params: KgwParams, n: int, vocab: int, rng: random.Random) -> list[int]:
    """Mostly green tokens under ``key``: at each step, the first green one among a few random draws."""
    ids = [rng.randrange(vocab) for _ in range(params.prev_tokens)]
    while len(ids) < n:
        window = ids[len(ids) - params.prev_tokens :]
        draws = [rng.randrange(vocab) for _ in range(8)]
        ids.append(next((t for t in draws if _plain_green(window, t, key, params)), draws[0]))
    return ids


# --- keys --------------------------------------------------------------------------------------------------


def test_derive_is_byte_identical_to_the_one_shot_hmac() -> None:
    rng = random.Random(11)
    ids = ["", "a", "client-1", "ü-ñ-客户", "x" * 300, "tab\tand space ", "😀"]
    for length in (16, 31, 32, 63, 64, 65, 100, 200):
        master = rng.randbytes(length)
        ring = KeyRing(master, current=rng.randrange(1, 2**32), retained=(1, 7))
        for v in ring.versions:
            got = ring.derive(v, ids)
            assert [k.key for k in got] == [hmac.digest(master, v.to_bytes(4, "big") + c.encode(), "sha256")
                                            for c in ids]
            assert [k.key for k in got] == [client_key(master, v, c) for c in ids]
            assert [(k.client_id, k.version) for k in got] == [(c, v) for c in ids]
            assert got == [ring.key(c, v) for c in ids]
        assert [k.key for k in ring.candidates(ids)] == [client_key(master, v, c) for v in ring.versions for c in ids]


def test_hand_rolled_hmac_pads_match_hmac() -> None:
    rng = random.Random(12)
    for _ in range(200):
        key, msg = rng.randbytes(rng.randrange(0, 150)), rng.randbytes(rng.randrange(0, 100))
        inner, outer = hmac_sha256_pads(key)
        i = inner.copy()
        i.update(msg)
        o = outer.copy()
        o.update(i.digest())
        assert o.digest() == hmac.digest(key, msg, "sha256")


def test_subkeys_array_matches_subkeys_for_every_key_length() -> None:
    rng = random.Random(13)
    for lengths in ([32], [16, 20, 33, 64, 65, 100], [32, 17]):
        keys = [rng.randbytes(rng.choice(lengths)) for _ in range(300)]
        assert prf.subkeys_array(keys).tolist() == [list(prf.subkeys(k)) for k in keys]


def test_mixer_split_identities() -> None:
    """``mix = xs16 ∘ core ∘ xs16``, xs16 is an involution, and the cancellation detection relies on."""
    rng = np.random.default_rng(14)
    a, b = (rng.integers(0, 2**32, 50_000, dtype=np.uint32) for _ in range(2))
    tmp = np.empty_like(a)

    def mix64(x: np.ndarray) -> np.ndarray:  # the int64 mixer of the torch side, back to uint32
        return np.asarray(prf.mix(x.astype(np.int64)), dtype=np.int64).astype(np.uint32)

    assert np.array_equal(prf.xs16_u32_(prf.core_u32_(prf.xs16_u32_(a.copy(), tmp), tmp), tmp), mix64(a))
    assert np.array_equal(prf.xs16_u32_(prf.xs16_u32_(a.copy(), tmp), tmp), a)
    inner = prf.core_u32_(prf.xs16_u32_(a.copy(), tmp), tmp)
    inner ^= prf.xs16_u32_(b.copy(), tmp)
    assert np.array_equal(prf.xs16_u32_(prf.core_u32_(inner, tmp), tmp), mix64(mix64(a) ^ b))


# --- the whole score -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seeding", SEEDINGS)
@pytest.mark.parametrize("case", range(3))
def test_scores_equal_the_straightforward_path(seeding: str, case: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(100 * SEEDINGS.index(seeding) + case)
    width = rng.choice([1, 2, 3, 4, 5] if seeding != "selfhash" else [2, 3, 4, 5])
    params = KgwParams(gamma=rng.choice([0.1, 0.25, 0.5]), context_width=width, seeding=seeding)  # type: ignore[arg-type]
    master = rng.randbytes(rng.choice([16, 34, 90]))
    ring = KeyRing(master, current=3, retained=(1,) if case else ())
    clients = [f"c{i}" for i in range(14)] + ["ü-client", "客户-7"]
    monkeypatch.setattr(counting, "_CHUNK_LANES", rng.choice([1 << 17, 4096, 512]))  # many chunks, both threads
    wm_key = ring.key("c5", ring.versions[-1]).key
    texts: list[list[list[int]]] = [
        [[rng.randrange(3) for _ in range(400)]],  # a few groups wider than one sort bucket
        [[rng.randrange(12) for _ in range(300)]],
        [[rng.randrange(5000) for _ in range(300)]],  # almost no repeats
        [[rng.randrange(60) for _ in range(n)] for n in (120, 2, 0, 80)],  # a pooled corpus
        [_watermarked(wm_key, params, 150, 300, rng)],
    ]
    for sequences in texts:
        tuples = detect.collect_tuples(sequences, params)
        got = detect.score_tuples(tuples, ring.candidates(clients), params, top=6)
        assert got == _plain_score(tuples, master, ring.versions, clients, params, top=6)
    assert got.client_id == "c5" and got.key_version == ring.versions[-1] and got.p_value < 1e-3


def test_verify_cli_imports_neither_the_lexical_scheme_nor_asyncio_up_front() -> None:
    """`ipgate verify --scheme kgw` start-up: the lexical tables and asyncio load only when needed."""
    code = ("import sys; from gateway.cli import build_parser, _module_for; build_parser(_module_for('verify')); "
            "print(sorted(m for m in ('asyncio', 'watermark.lexical', 'watermark.lexicon') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
