"""KGW detection (numpy only): tuple collection and dedup, p-values, attribution, params, directives.

These tests need no torch: green tokens are chosen with the same numpy PRF the detector uses.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from watermark import stats
from watermark.keys import KeyRing
from watermark.kgw import detect, directives, prf
from watermark.kgw.params import KgwParams

RING = KeyRing(b"kgw-test-master-secret-0123456789")
ALL_SEEDINGS = [KgwParams(seeding="lefthash"), KgwParams(seeding="minhash"), KgwParams(seeding="selfhash")]


def _green_ids(window: list[int], key: bytes, params: KgwParams, vocab: int) -> np.ndarray:
    """Every green token id after ``window`` (numpy PRF over the whole vocabulary)."""
    cand = np.arange(vocab, dtype=np.int64)
    tuples = detect.Tuples(prev=np.tile(np.asarray(window, dtype=np.int64), (vocab, 1)), cand=cand)
    bits = detect.green_bits(tuples, detect.keys_array([key]), params)[0]
    return cand[bits]


def _watermarked(key: bytes, params: KgwParams, n: int, green_share: float, seed: int, vocab: int = 3000):
    """A token sequence whose tokens are green with probability ``green_share`` (a strong watermark)."""
    rng = random.Random(seed)
    ids = [rng.randrange(vocab) for _ in range(params.prev_tokens)]
    while len(ids) < n + params.prev_tokens:
        window = ids[-params.prev_tokens :]
        if rng.random() < green_share:
            greens = _green_ids(window, key, params, vocab)
            ids.append(int(greens[rng.randrange(len(greens))]))
        else:
            ids.append(rng.randrange(vocab))
    return ids


@pytest.mark.parametrize(
    ("gamma", "seeding", "width", "prev"),
    [(0.25, "selfhash", 4, 3), (0.5, "lefthash", 1, 1), (0.1, "minhash", 3, 3)],
)
def test_params_shape(gamma: float, seeding: str, width: int, prev: int) -> None:
    p = KgwParams(gamma=gamma, seeding=seeding, context_width=width)  # type: ignore[arg-type]
    assert p.prev_tokens == prev
    assert abs(p.p_green - gamma) < 1e-9


@pytest.mark.parametrize(
    "kwargs",
    [{"gamma": 0.0}, {"gamma": 1.0}, {"delta": -1.0}, {"seeding": "nope"}, {"seeding": "selfhash", "context_width": 1},
     {"context_width": 0}, {"context_width": 17}],
)
def test_params_reject(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="kgw"):
        KgwParams(**kwargs)  # type: ignore[arg-type]


def test_subkeys_are_domain_separated_and_need_key_material() -> None:
    a = prf.subkeys(RING.key("a").key)
    assert a != prf.subkeys(RING.key("b").key)
    assert a != prf.subkeys(RING.key("a", 2).key)
    assert all(0 <= k < 2**32 for k in a)
    with pytest.raises(ValueError, match="16 bytes"):
        prf.subkeys(b"short")


def test_mix_matches_unbounded_integer_arithmetic() -> None:
    """The lane arithmetic equals the textbook definition with Python's exact integers."""
    xs = np.array([0, 1, 2**31, 2**32 - 1, 123456789], dtype=np.int64)

    def ref(x: int) -> int:
        x ^= x >> 16
        x = (x * 0x7FEB352D) % 2**32
        x ^= x >> 15
        x = (x * 0x31848BAB) % 2**32
        return x ^ (x >> 16)

    assert [int(v) for v in prf.mix(xs)] == [ref(int(x)) for x in xs]
    assert len({int(v) for v in prf.mix(np.arange(100_000, dtype=np.int64))}) == 100_000  # a bijection


@pytest.mark.parametrize("params", ALL_SEEDINGS, ids=lambda p: p.seeding)
def test_green_fraction_is_gamma_on_unwatermarked_tokens(params: KgwParams) -> None:
    rng = np.random.default_rng(1)
    tuples = detect.Tuples(
        prev=rng.integers(0, 50_000, (20_000, params.prev_tokens)), cand=rng.integers(0, 50_000, 20_000)
    )
    frac = detect.green_bits(tuples, detect.keys_array([RING.key("x").key]), params).mean()
    assert abs(frac - 0.25) < 4 * math.sqrt(0.25 * 0.75 / 20_000)


def test_dedup_repeated_ngrams_do_not_inflate_the_score() -> None:
    params = KgwParams()
    key = RING.key("alice")
    sentence = _watermarked(key.key, params, 30, 1.0, seed=3)
    once = detect.collect_tuples([sentence], params)
    looped = detect.collect_tuples([sentence * 40], params)
    # The loop adds only the few tuples that straddle the joins, not 40x the evidence.
    assert once.n <= looped.n <= once.n + params.prev_tokens + 1
    s_once = detect.score_tuples(once, [key], params)
    s_loop = detect.score_tuples(looped, [key], params)
    assert s_loop.log10_p_value > s_once.log10_p_value - 3  # a few extra tuples at most


@pytest.mark.parametrize(
    ("params", "window_a", "window_b", "same"),
    [
        (KgwParams(seeding="lefthash", context_width=2), [1, 2], [2, 1], False),
        (KgwParams(seeding="minhash", context_width=2), [1, 2], [2, 1], True),
        (KgwParams(seeding="selfhash", context_width=3), [1, 2], [2, 1], True),
        (KgwParams(seeding="minhash", context_width=2), [1, 1], [1, 1], True),
    ],
)
def test_dedup_key_is_the_prf_input(params: KgwParams, window_a: list[int], window_b: list[int], same: bool) -> None:
    """Tuples the PRF cannot tell apart are one tuple (set-valued windows for min-hash seeds)."""
    t = detect.collect_tuples([[*window_a, 7], [*window_b, 7]], params)
    assert t.n == (1 if same else 2)
    if same:  # and the PRF indeed gives them the same bit under any key
        a = detect.Tuples(np.asarray([window_a]), np.asarray([7]))
        b = detect.Tuples(np.asarray([window_b]), np.asarray([7]))
        keys = detect.keys_array([RING.key(str(i)).key for i in range(64)])
        assert (detect.green_bits(a, keys, params) == detect.green_bits(b, keys, params)).all()


def test_prompt_is_context_but_never_scored() -> None:
    params = KgwParams(seeding="lefthash", context_width=2)
    prompt, resp = [5, 6, 7, 8], [9, 10, 11]
    t = detect.collect_tuples([resp], params, prompts=[prompt])
    assert t.cand.tolist() == [9, 10, 11]
    assert t.prev.tolist() == [[7, 8], [8, 9], [9, 10]]
    no_prompt = detect.collect_tuples([resp], params)
    assert no_prompt.cand.tolist() == [11]  # the first h positions have no full window


def test_watermarked_vs_unwatermarked_p_values_and_attribution() -> None:
    params = KgwParams()
    alice = RING.key("alice")
    keys = RING.candidates([f"client-{i}" for i in range(199)] + ["alice"])
    scheme = detect.KgwScheme(lambda texts: [], params)
    wm = _watermarked(alice.key, params, 120, 0.7, seed=11)
    s = scheme.score_ids([wm], keys)
    assert s.client_id == "alice" and s.family_size == 200
    assert s.watermarked(1e-6)
    # family-wise p-value = N x the candidate's own p-value (Bonferroni), computed in log space
    assert s.log10_p_value == pytest.approx(s.candidates[0].log10_p_value + math.log10(200))
    plain = [random.Random(5).randrange(3000) for _ in range(400)]
    s0 = scheme.score_ids([plain], keys)
    assert not s0.watermarked(1e-3)
    assert s0.p_value > 1e-3


def test_p_value_matches_an_independent_exact_binomial() -> None:
    params = KgwParams(gamma=0.25)
    tuples = detect.collect_tuples([_watermarked(RING.key("a").key, params, 60, 0.6, seed=2)], params)
    s = detect.score_tuples(tuples, [RING.key("a")], params)
    n, h, p = s.scored, s.hits, params.p_green
    exact = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(h, n + 1))
    assert s.p_value == pytest.approx(exact, rel=1e-9)


def test_unwatermarked_false_positive_rate_is_calibrated() -> None:
    """2 000 random texts of 100 tokens against one key: the share below p = 0.01 is about 0.01 (the
    binomial tail of a discrete statistic is conservative, so at most that)."""
    params = KgwParams()
    rng = np.random.default_rng(7)
    key = [RING.key("k")]
    ps = [
        detect.score_tuples(detect.collect_tuples([rng.integers(0, 8000, 103).tolist()], params), key, params).p_value
        for _ in range(2000)
    ]
    assert np.mean(np.asarray(ps) < 0.01) <= 0.01 + 3 * math.sqrt(0.01 * 0.99 / 2000)


def test_empty_and_short_texts_score_nothing() -> None:
    params = KgwParams()
    s = detect.score_tuples(detect.collect_tuples([[1, 2]], params), [RING.key("a")], params)
    assert (s.scored, s.p_value, s.client_id) == (0, 1.0, None)
    assert detect.score_tuples(detect.collect_tuples([[1, 2, 3, 4, 5]], params), [], params).client_id is None


def test_min_tokens_for_planning_numbers() -> None:
    # ANCHORS §3: at γ = 0.25 and green fraction 0.5, ≈ 41 tokens reach 1e-4 and ≈ 94 reach 1e-8 (z-test
    # numbers); the exact tail needs a few more.
    n4 = detect.min_tokens_for(1e-4, KgwParams(), 0.5)
    n8 = detect.min_tokens_for(1e-8, KgwParams(), 0.5)
    assert 35 <= n4 <= 60 and 85 <= n8 <= 130
    assert stats.binom_log_sf(math.ceil(0.5 * n8), n8, KgwParams().p_green) <= math.log(1e-8)


def _tokenizer_and_green_text(tmp_path: Path, params: KgwParams, key: bytes) -> tuple[Path, str]:
    """A small BPE ``tokenizer.json`` and an 80-token text whose every scored token is green under ``key``
    (greedy over green tokens that survive decode -> re-encode, as sampled text usually does)."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["the quick brown fox jumps over the lazy dog " * 3, "a watermark is a keyed pattern in text " * 3]
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    rng = random.Random(0)
    ids = tok.encode("the quick brown", add_special_tokens=False).ids
    while len(ids) < 80:
        greens = _green_ids(ids[-params.prev_tokens :], key, params, tok.get_vocab_size()).tolist()
        rng.shuffle(greens)
        for g in greens:
            if tok.encode(tok.decode([*ids, g]), add_special_tokens=False).ids == [*ids, g]:
                ids.append(g)
                break
        else:
            break
    return path, tok.decode(ids)


def test_text_detection_with_a_tokenizer_json(tmp_path: Path) -> None:
    params = KgwParams(seeding="lefthash", context_width=1)
    key = RING.key("alice")
    path, text = _tokenizer_and_green_text(tmp_path, params, key.key)
    scheme = detect.KgwScheme.from_tokenizer_file(str(path), params)
    s = scheme.score(text, RING.candidates(["bob", "alice", "carol"]))
    assert s.client_id == "alice" and s.watermarked(1e-6)
    assert not scheme.score("the lazy dog jumps over the quick brown fox", RING.candidates(["alice"])).watermarked(1e-3)
    with pytest.raises(ValueError, match="tokenizer"):
        detect.KgwScheme.from_tokenizer_file(str(tmp_path / "missing.json"))


def test_ipgate_verify_kgw_cli_without_torch(tmp_path: Path) -> None:
    """``ipgate verify --scheme kgw --tokenizer PATH`` in a process where torch is never imported."""
    params = KgwParams()  # the CLI uses the default green-list params
    path, text = _tokenizer_and_green_text(tmp_path, params, RING.key("alice").key)
    (tmp_path / "leak.txt").write_text(text, encoding="utf-8")
    (tmp_path / "clients.txt").write_text("bob\nalice\ncarol\n", encoding="utf-8")
    code = (
        "import argparse, sys\n"
        "from gateway.cli import verify\n"  # only this subcommand: the dispatcher imports all of them
        "parser = argparse.ArgumentParser(prog='ipgate')\n"
        "verify.register(parser.add_subparsers())\n"
        f"args = parser.parse_args(['verify', {str(tmp_path / 'leak.txt')!r}, '--scheme', 'kgw', '--tokenizer',"
        f" {str(path)!r}, '--clients', {str(tmp_path / 'clients.txt')!r}, '--json'])\n"
        "rc = args.func(args)\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "sys.exit(rc)\n"
    )
    env = {"IPGATE_WATERMARK_SECRET": RING.master.decode(), "PATH": "/usr/bin:/bin"}
    repo = Path(__file__).resolve().parents[2]
    res = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    verdict = json.loads(res.stdout)
    assert verdict["watermarked"] is True and verdict["client"] == "alice" and verdict["scheme"] == "kgw"
    assert verdict["p_value"] < 1e-6 and verdict["scored"] > 50


def test_directives_round_trip_and_validation() -> None:
    params = KgwParams()
    key = RING.key("alice", 3)
    d = directives.parse(directives.vllm_xargs(key, params, delta=4.0), params)
    assert d is not None and d.delta == 4.0 and d.client_id == "alice" and d.version == 3
    assert d.resolve(RING.master) == prf.subkeys(key.key)
    k = directives.parse(directives.vllm_xargs(key, params, mode="key"), params)
    assert k is not None and k.resolve(None) == prf.subkeys(key.key)
    assert directives.parse({"other": 1}, params) is None
    assert directives.parse(None, params) is None
    good = directives.vllm_xargs(key, params)
    for bad, field in [
        ({**good, directives.F_SPEC: "g0.5-h4-selfhash"}, "does not match"),
        ({**good, directives.F_DELTA: "big"}, directives.F_DELTA),
        ({**good, directives.F_DELTA: 99.0}, directives.F_DELTA),
        ({**good, directives.F_VERSION: 0}, directives.F_VERSION),
        ({**good, directives.F_KEY: "00" * 16}, "exactly one"),
        ({k: v for k, v in good.items() if k != directives.F_SPEC}, directives.F_SPEC),
        ({directives.F_SPEC: good[directives.F_SPEC], directives.F_KEY: "zz"}, directives.F_KEY),
    ]:
        with pytest.raises(ValueError, match=field):
            directives.parse(bad, params)
    with pytest.raises(ValueError, match="IPGATE_WATERMARK_SECRET"):
        d.resolve(None)
    assert directives.parse_spec(directives.spec(KgwParams(gamma=0.1, seeding="minhash", context_width=2))) == (
        KgwParams(gamma=0.1, seeding="minhash", context_width=2)
    )


def test_detection_path_never_imports_torch() -> None:
    code = (
        "import sys\n"
        "from watermark.kgw import detect, directives, vllm_plugin, vllm_state\n"
        "from watermark.keys import KeyRing\n"
        "r = KeyRing(b'x' * 32)\n"
        "detect.KgwScheme(lambda t: [], None).score_ids([[1, 2, 3, 4, 5, 6]], r.candidates(['a']))\n"
        "assert 'torch' not in sys.modules and 'vllm' not in sys.modules, 'torch imported'\n"
    )
    repo = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=repo, timeout=60)


@pytest.mark.parametrize("params", ALL_SEEDINGS, ids=lambda p: p.seeding)
def test_low_diversity_text_is_calibrated(params: KgwParams) -> None:
    """Texts over a 12-token alphabet: the same token recurs in many *distinct* windows. For min-hash seeds
    many of those windows share one seed, so their green bits are copies; counting them as independent
    draws made 30-40 % of such texts "detect" at p < 0.01 (the bug this guards against).

    The p-value is valid over the randomness of the key, so the test averages over 300 keys; with one key
    and many texts from such a small alphabet the texts reuse the same few (seed, token) pairs and their
    p-values are strongly correlated (hence the allowance of 2 % rather than a binomial bound)."""
    rng = np.random.default_rng(3)
    keys = detect.keys_array([RING.key(f"k{i}").key for i in range(300)])
    below = []
    for _ in range(20):
        tuples = detect.collect_tuples([rng.integers(0, 12, 300).tolist()], params)
        scored, hits = detect.green_counts(tuples, keys, params)
        log_p = [stats.binom_log_sf(int(h), int(n), params.p_green) for n, h in zip(scored, hits, strict=True)]
        below.extend(lp < math.log(0.01) for lp in log_p)
    assert np.mean(below) <= 0.02


def test_vllm_plugin_server_environment(tmp_path: Path) -> None:
    from watermark.kgw import vllm_plugin

    assert vllm_plugin.server_params({}) == KgwParams()
    assert vllm_plugin.server_params({"IPGATE_KGW_PARAMS": "g0.5-h2-lefthash"}) == KgwParams(
        gamma=0.5, context_width=2, seeding="lefthash"
    )
    with pytest.raises(ValueError, match="ipgate_kgw_spec"):
        vllm_plugin.server_params({"IPGATE_KGW_PARAMS": "gamma=0.25"})
    assert vllm_plugin.server_secret({}) is None
    secret = tmp_path / "secret"
    secret.write_text("kgw-test-master-secret-0123456789\n", encoding="utf-8")
    assert vllm_plugin.server_secret({"IPGATE_WATERMARK_SECRET_FILE": str(secret)}) == RING.master
    assert vllm_plugin.server_secret({"IPGATE_WATERMARK_SECRET": "hex:" + RING.master.hex()}) == RING.master
    with pytest.raises(ValueError, match="at least 16 bytes"):
        vllm_plugin.server_secret({"IPGATE_WATERMARK_SECRET": "short"})
    assert vllm_plugin.cache_size({}) == 64
    for bad in ("0", "many"):
        with pytest.raises(ValueError, match="IPGATE_KGW_TABLE_CACHE"):
            vllm_plugin.cache_size({"IPGATE_KGW_TABLE_CACHE": bad})
