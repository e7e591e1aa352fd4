"""Adversarial review of the KGW scheme: directives, vLLM batch bookkeeping, detection under H0, PRF edges.

Each test here failed against the code it was written for (or pins a property the review checked and that a
plausible change would break); see /work/team/docs/kgw-review.md for the findings.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from tests.support import fake_vllm
from watermark.keys import KeyRing
from watermark.kgw import detect, directives, prf
from watermark.kgw.params import KgwParams
from watermark.kgw.vllm_state import RowState, apply_batch_update, gather

RING = KeyRing(b"kgw-review-master-secret-0123456789")
SPEC = directives.spec(KgwParams())


def _derive(**extra: object) -> dict[str, object]:
    return {**directives.vllm_xargs(RING.key("alice"), KgwParams()), **extra}


# --- directives ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("delta", [10**400, -(10**400), 51, -1, float("inf"), float("nan")])
def test_out_of_range_delta_is_a_value_error_not_an_overflow(delta: object) -> None:
    """A JSON integer has no size limit; ``math.isfinite(10**400)`` raised OverflowError, which is not the
    ValueError vLLM turns into a 400 (and in the engine loop it is not caught by the plugin)."""
    with pytest.raises(ValueError, match="ipgate_kgw_delta"):
        directives.parse(_derive(ipgate_kgw_delta=delta), KgwParams())


@pytest.mark.parametrize(
    "extra",
    [
        {"ipgate_kgw_nonce": "x"},  # a field from a newer gateway
        {"ipgate_kgw_Client": "mallory"},  # case variant of a known field
    ],
)
def test_unknown_directive_fields_are_rejected(extra: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="unknown watermark directive field"):
        directives.parse(_derive(**extra), KgwParams())


def test_a_directive_with_only_unknown_fields_is_not_silently_unwatermarked() -> None:
    """A renamed field (gateway newer than the plugin) used to make ``parse`` return None: the request was
    served without a watermark and nothing said so."""
    with pytest.raises(ValueError, match="unknown watermark directive field"):
        directives.parse({"ipgate_kgw_client_id": "alice", "ipgate_kgw_spec": SPEC}, KgwParams())
    # other extensions' fields are still none of our business
    assert directives.parse({"kv_transfer_params": {}, "other": 1}, KgwParams()) is None


@pytest.mark.parametrize(
    "bad",
    [
        {"ipgate_kgw_version": True},
        {"ipgate_kgw_version": 1.0},
        {"ipgate_kgw_version": "1"},
        {"ipgate_kgw_version": 0},
        {"ipgate_kgw_version": 2**32},
        {"ipgate_kgw_client": ""},
        {"ipgate_kgw_client": 7},
        {"ipgate_kgw_delta": True},
        {"ipgate_kgw_delta": "2"},
        {"ipgate_kgw_spec": "g0.5-h4-selfhash"},  # engine configured differently
        {"ipgate_kgw_spec": 3},
        {"ipgate_kgw_key": "00" * 16},  # both key and client
    ],
)
def test_malformed_directives_name_the_field(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="ipgate_kgw_"):
        directives.parse(_derive(**bad), KgwParams())


def test_key_mode_carries_only_kgw_subkeys_never_the_client_key() -> None:
    """What travels in ``vllm_xargs`` (and so in vLLM's request logs): derive mode names the client and
    version only; key mode the 128 PRF subkeys, which are an HMAC of the client key, not the key."""
    key = RING.key("alice")
    derive = directives.vllm_xargs(key, KgwParams())
    assert set(derive) == {
        directives.F_SPEC, directives.F_DELTA, directives.F_CLIENT, directives.F_VERSION, directives.F_TAG
    }
    assert key.key.hex() not in repr(derive) and RING.master.hex() not in repr(derive)
    keyed = directives.vllm_xargs(key, KgwParams(), mode="key")
    assert set(keyed) == {directives.F_SPEC, directives.F_DELTA, directives.F_KEY}
    blob = repr(keyed)
    assert key.key.hex() not in blob and RING.master.hex() not in blob
    d = directives.parse(keyed, KgwParams())
    assert d is not None and d.resolve(None) == prf.subkeys(key.key)


@pytest.mark.parametrize(
    "forgery",
    [
        {"ipgate_kgw_client": "bob"},  # another client's id under alice's tag: text attributed to bob
        {"ipgate_kgw_version": 2},  # another key version
        {"ipgate_kgw_delta": 0.0},  # the watermark switched off
        {"ipgate_kgw_delta": 0.5},  # weakened
        {"ipgate_kgw_tag": "0" * 32},
    ],
)
def test_derive_directive_is_authenticated(forgery: dict[str, object]) -> None:
    """Without a tag, anyone reaching vLLM directly (not through the gateway) could name any client id and
    get text that ``ipgate verify`` attributes to that client, or set δ = 0."""
    d = directives.parse(_derive(**forgery), KgwParams())
    assert d is not None
    with pytest.raises(ValueError, match="ipgate_kgw_tag does not authenticate"):
        d.resolve(RING.master)
    good = directives.parse(_derive(), KgwParams())
    assert good is not None and good.resolve(RING.master) == prf.subkeys(RING.key("alice").key)
    other_master = KeyRing(b"another-deployment-master-secret-0123")
    with pytest.raises(ValueError, match="ipgate_kgw_tag"):
        good.resolve(other_master.master)


def test_derive_directive_without_a_tag_is_rejected() -> None:
    bare = {k: v for k, v in _derive().items() if k != directives.F_TAG}
    with pytest.raises(ValueError, match="ipgate_kgw_tag is required"):
        directives.parse(bare, KgwParams())
    keyed = directives.vllm_xargs(RING.key("alice"), KgwParams(), mode="key")
    with pytest.raises(ValueError, match="ipgate_kgw_tag belongs"):
        directives.parse({**keyed, directives.F_TAG: "0" * 32}, KgwParams())


# --- params --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [1 - 1e-10, 1e-11])
def test_gamma_must_give_a_usable_32_bit_threshold(gamma: float) -> None:
    """γ within 2⁻³³ of 1 rounded the threshold to 2³² (no uint32 holds it: detection raised OverflowError);
    γ below 2⁻³³ rounded it to 0 (nothing is ever green: a watermark that does nothing)."""
    with pytest.raises(ValueError, match="gamma"):
        KgwParams(gamma=gamma)


# --- vLLM batch bookkeeping ----------------------------------------------------------------------------------


def test_gather_skips_rows_whose_context_holds_async_placeholders() -> None:
    """Async scheduling leaves -1 in the output list for a token still on its way back from the GPU; biasing
    with it in the window writes a green list detection can never reproduce."""
    out = [11, 12, -1]
    rows = {0: RowState((1, 2, 3, 4), 2.0, [7, 8, 9], out), 1: RowState((1, 2, 3, 4), 2.0, [7, 8, 9], [5])}
    g = gather(rows, prev_tokens=3, batch_size=2)
    assert g.rows == [1] and g.placeholders == [0]
    out[-1] = 13  # the engine backfills the real id
    assert gather(rows, 3, 2).rows == [0, 1]


@pytest.mark.parametrize("seeding", ["lefthash", "minhash", "selfhash"])
def test_scored_positions_are_exactly_the_biased_positions(seeding: str) -> None:
    """For every prompt length (incl. shorter than the window, and no prompt): the positions generation
    biases (``gather`` sees enough history) are the positions detection scores with the prompt known."""
    params = KgwParams(seeding=seeding)  # type: ignore[arg-type]
    p = params.prev_tokens
    rng = random.Random(7)
    for prompt_len in range(0, p + 3):
        prompt = [rng.randrange(1000, 2000) for _ in range(prompt_len)]
        response = [rng.randrange(3000, 4000) for _ in range(8)]  # distinct ids: no dedup interferes
        out: list[int] = []
        rows = {0: RowState((1, 2, 3, 4), 2.0, prompt[-p:], out)}
        biased = 0
        for tok in response:
            biased += len(gather(rows, p, 1).rows)
            out.append(tok)
        scored = detect.collect_tuples([response], params, [prompt]).n
        assert scored == biased, (prompt_len, scored, biased)


class _Dir:  # the ``.name`` of vLLM's MoveDirectionality members is what the bookkeeping reads
    def __init__(self, name: str) -> None:
        self.name = name


UNI, SWAP = _Dir("UNIDIRECTIONAL"), _Dir("SWAP")


def test_bookkeeping_tracks_a_simulated_vllm_input_batch() -> None:
    """Drive ``apply_batch_update`` with the BatchUpdates vLLM's InputBatch would emit (read from
    vllm/v1/worker/gpu_input_batch.py and logits_processor/state.py): removals leave holes; an added request
    takes the lowest hole (``pop_removed``) or the end; ``condense`` fills the remaining holes with one-way
    moves from the end (popping those holes from ``removed``); reordering swaps. After every step the
    plugin's rows must be exactly the watermarked requests at their current indices."""
    rng = random.Random(5)
    slots: list[int | None] = []  # request tag at each index; odd tags carry a directive
    rows: dict[int, RowState] = {}
    next_tag = 1

    def new_state(sp: _SP, prompt: list[int] | None, out: list[int]) -> RowState | None:
        tag = sp.extra_args["tag"] if sp.extra_args else None
        return None if tag is None or tag % 2 == 0 else RowState((tag, 0, 0, 0), 2.0, [], out)

    for _ in range(400):
        holes = sorted(i for i, t in enumerate(slots) if t is None)
        live = [i for i, t in enumerate(slots) if t is not None]
        removed = set(holes)  # none left over from earlier steps: condense ran
        for i in rng.sample(live, rng.randint(0, len(live))):
            slots[i] = None
            removed.add(i)
        added: list[tuple[int, _SP, list[int] | None, list[int]]] = []
        for _ in range(rng.randint(0, 4)):
            free = sorted(removed)
            if free:
                idx = free[0]
                removed.discard(idx)
            else:
                idx = len(slots)
                slots.append(None)
            slots[idx] = next_tag
            added.append((idx, _SP({"tag": next_tag}), [1, 2, 3], []))
            next_tag += 1
        moved: list[tuple[int, int, Any]] = []
        while removed:  # condense
            last = max(i for i, t in enumerate(slots) if t is not None) if any(slots) else -1
            empty = min(removed)
            if empty >= last:
                break
            removed.discard(empty)
            slots[empty], slots[last] = slots[last], None
            moved.append((last, empty, UNI))
        while slots and slots[-1] is None:
            slots.pop()
        if len(slots) >= 2 and rng.random() < 0.5:  # reorder (e.g. decode requests first)
            a, b = rng.sample(range(len(slots)), 2)
            slots[a], slots[b] = slots[b], slots[a]
            moved.append((a, b, SWAP))
        update = _BatchUpdate(len(slots), sorted(removed, reverse=True), added, moved)
        apply_batch_update(rows, update if (removed or added or moved) else None, new_state)
        want = {i: t for i, t in enumerate(slots) if t is not None and t % 2 == 1}
        assert {i: s.subkeys[0] for i, s in rows.items()} == want


class _SP:
    def __init__(self, extra_args: dict[str, Any] | None) -> None:
        self.extra_args = extra_args


@dataclass(frozen=True)
class _BatchUpdate:
    batch_size: int
    removed: list[int]
    added: list[tuple[int, _SP, list[int] | None, list[int]]]
    moved: list[tuple[int, int, Any]]


@pytest.fixture
def plugin_class(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The plugin class built against a stand-in of vLLM's ``LogitsProcessor`` ABC with a non-abstract
    ``needs_output_token_ids`` defaulting to False, as some releases have it (tests/support/fake_vllm.py)."""
    pytest.importorskip("torch")
    monkeypatch.setenv("IPGATE_WATERMARK_SECRET", "hex:" + RING.master.hex())
    monkeypatch.delenv("IPGATE_KGW_PARAMS", raising=False)
    monkeypatch.setenv("IPGATE_KGW_COMPILE", "0")
    with fake_vllm.installed(monkeypatch, needs_output_token_ids=True) as vllm_plugin:
        yield vllm_plugin.KgwLogitsProcessor


def test_plugin_rejects_a_forged_directive_in_validate_params(plugin_class: Any) -> None:
    plugin_class.validate_params(_SP(_derive()))
    with pytest.raises(ValueError, match="ipgate_kgw_tag"):
        plugin_class.validate_params(_SP(_derive(ipgate_kgw_client="bob")))


def test_plugin_asks_vllm_for_real_output_token_ids(plugin_class: Any) -> None:
    import torch

    proc = plugin_class(None, torch.device("cpu"), False)
    assert proc.needs_output_token_ids() is True


def test_plugin_leaves_placeholder_rows_unbiased_and_says_so(
    plugin_class: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import torch

    proc = plugin_class(None, torch.device("cpu"), False)
    out = [5, 6, -1]
    proc.update_state(_BatchUpdate(1, [], [(0, _SP(_derive()), [1, 2, 3], out)], []))
    with caplog.at_level(logging.WARNING):
        logits = torch.zeros(1, 500)
        proc.apply(logits)
        proc.apply(logits)
    assert torch.equal(logits, torch.zeros(1, 500))
    assert caplog.text.count("NOT watermarked") == 1  # once per change of state, not per step
    out[-1] = 7
    proc.apply(logits)
    assert logits.abs().sum() > 0


# --- PRF and detection ---------------------------------------------------------------------------------------


def _torch_green(windows: np.ndarray, cands: np.ndarray, sk: tuple[int, int, int, int], params: KgwParams) -> Any:
    """The green bit of each (window, candidate) with the int64-lane PRF on torch tensors (the generation
    side's arithmetic), candidate by candidate — no arange(V), so ids near 2**31 can be checked."""
    import torch

    k0, k1, k2, k3 = (torch.tensor(k, dtype=torch.int64) for k in sk)
    prev = torch.tensor(windows, dtype=torch.int64)
    cand = torch.tensor(cands, dtype=torch.int64)
    wh = [prf.token_hash(prev[:, j], k0) for j in range(prev.shape[1])]
    ch = prf.token_hash(cand, k0)
    if params.seeding == "lefthash":
        seed = prf.lefthash_seed(wh, k1)
    elif params.seeding == "minhash":
        seed = prf.minhash_seed(wh, k1, torch.minimum)
    else:
        seed = prf.selfhash_seed(wh, ch, prf.anchor_hash(cand, k2), torch.minimum)
    return (prf.green_value(seed, ch, k3) < params.threshold).numpy()


@pytest.mark.parametrize("seeding", ["lefthash", "minhash", "selfhash"])
def test_torch_and_numpy_prf_agree_at_the_int32_boundaries(seeding: str) -> None:
    pytest.importorskip("torch")
    params = KgwParams(seeding=seeding)  # type: ignore[arg-type]
    p = params.prev_tokens
    edge = [0, 1, 2**15, 2**16 - 1, 2**16, 2**31 - 2, 2**31 - 1, 2**30, 2**24 + 1]
    rng = np.random.default_rng(3)
    ids = np.array(edge + rng.integers(0, 2**31, 200).tolist(), dtype=np.int64)
    windows = rng.choice(ids, size=(400, p))
    cands = rng.choice(ids, size=400)
    tuples = detect.Tuples(prev=windows, cand=cands)
    for client in ("alice", "bob"):
        sk = prf.subkeys(RING.key(client).key)
        got = detect.green_bits(tuples, np.array([sk], dtype=np.int64), params)[0]
        assert np.array_equal(got, _torch_green(windows, cands, sk, params))
    with pytest.raises(ValueError, match="2\\*\\*31"):
        detect.collect_tuples([[1, 2, 3, 4, 2**31]], params)
    with pytest.raises(ValueError, match="2\\*\\*31"):
        detect.collect_tuples([[1, 2, 3, 4, -1]], params)


@pytest.mark.parametrize("seeding", ["lefthash", "minhash", "selfhash"])
def test_family_wise_false_positive_rate_under_h0(seeding: str) -> None:
    """Unwatermarked random streams (a small alphabet, so windows and tokens repeat a lot, and a full-range
    one) against 6 candidate keys: the Bonferroni-corrected p-value rejects at most α of the time (within
    three standard errors), and a single key's p-values are super-uniform."""
    params = KgwParams(seeding=seeding)  # type: ignore[arg-type]
    scheme = detect.KgwScheme(lambda texts: [], params)
    keys = [RING.key(f"c{i}") for i in range(6)]
    rng = np.random.default_rng(11 + len(seeding))
    n_texts, alpha = 240, 0.1
    fw_rejects = single_rejects = 0
    for t in range(n_texts):
        alphabet = 12 if t % 2 else 2**31
        seq = rng.integers(0, alphabet, 60).tolist()
        fw = scheme.score_ids([seq], keys)
        fw_rejects += fw.p_value <= alpha
        single_rejects += scheme.score_ids([seq], keys[:1]).p_value <= alpha
    bound = alpha + 3 * (alpha * (1 - alpha) / n_texts) ** 0.5
    assert fw_rejects / n_texts <= bound, fw_rejects
    assert single_rejects / n_texts <= bound, single_rejects


def test_empty_and_short_texts_score_nothing() -> None:
    params = KgwParams()
    scheme = detect.KgwScheme(lambda texts: [[] if not t else [1] * len(t) for t in texts], params)
    keys = [RING.key("alice")]
    for text in ("", "ab", "abc"):
        s = scheme.score(text, keys)
        assert s.scored == 0 and s.p_value == 1.0
    assert scheme.score_ids([[5, 6, 7, 8]], keys).scored == 1  # h - 1 = 3 tokens of context, one scored


def _word_tokenizer(path: Any, *, truncate: int | None = None, pad_to: int | None = None) -> Any:
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers

    vocab = {"[UNK]": 0, "[PAD]": 1, **{f"w{i}": i + 2 for i in range(200)}}
    tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if truncate is not None:
        tok.enable_truncation(truncate)
    if pad_to is not None:
        tok.enable_padding(pad_id=1, pad_token="[PAD]", length=pad_to)
    tok.save(str(path))
    return path


def test_tokenizer_json_padding_and_truncation_are_ignored(tmp_path: Any) -> None:
    """sentence-transformers' tokenizer.json (e.g. all-MiniLM-L6-v2's) ships truncation at 128 tokens and
    fixed padding to 128: detection cut every text to 128 tokens and scored [PAD] ids never sampled."""
    path = _word_tokenizer(tmp_path / "tokenizer.json", truncate=8, pad_to=16)
    encode = detect.tokenizer_encoder(str(path))
    text = " ".join(f"w{i}" for i in range(40))
    assert encode([text, "w3 w4"]) == [[i + 2 for i in range(40)], [5, 6]]


def test_lone_surrogates_in_text_are_scored_not_a_crash(tmp_path: Any) -> None:
    """``json.loads('"\\ud800"')`` is a valid Python str the tokenizers library rejects with TypeError;
    ``ipgate verify --jsonl`` died with a traceback and exit code 1 (meaning "not watermarked")."""
    path = _word_tokenizer(tmp_path / "tokenizer.json")
    encode = detect.tokenizer_encoder(str(path))
    assert encode(["w1 \ud800 w2", "\udfff"]) == [[3, 0, 4], [0]]
    scheme = detect.KgwScheme(encode)
    assert scheme.score("w1 w2 \ud800 w3 w4 w5 w6", [RING.key("alice")]).scored == 4


def test_plugin_loaded_twice_for_one_engine_biases_once(plugin_class: Any) -> None:
    """vLLM concatenates entry-point plugins and ``--logits-processors`` classes without de-duplicating, and
    ipgate always declares the entry point, so the documented explicit install built two instances per
    engine: every watermarked row got 2δ."""
    import gc

    import torch

    from watermark.kgw.torch_core import green_mask, keys_tensor

    config = object()  # the one VllmConfig both constructor calls receive
    procs = [plugin_class(config, torch.device("cpu"), False) for _ in range(2)]
    xargs = directives.vllm_xargs(RING.key("alice"), KgwParams(), delta=3.0)
    update = _BatchUpdate(1, [], [(0, _SP(xargs), [1, 2, 3, 4], [])], [])
    logits = torch.zeros(1, 400)
    for proc in procs:  # the engine updates and applies every processor in turn
        proc.update_state(update)
    for proc in procs:
        logits = proc.apply(logits)
    mask = green_mask(torch.tensor([[2, 3, 4]]), keys_tensor([RING.key("alice").key]), 400, KgwParams())[0]
    assert torch.equal(logits[0], mask.float() * 3.0)
    del procs[0]  # the first one dropped (e.g. a rebuilt input batch): the other takes over
    gc.collect()
    assert torch.equal(procs[0].apply(torch.zeros(1, 400))[0], mask.float() * 3.0)
    # separate engines (configs) stay independent
    other = plugin_class(object(), torch.device("cpu"), False)
    other.update_state(update)
    assert torch.equal(other.apply(torch.zeros(1, 400))[0], mask.float() * 3.0)
