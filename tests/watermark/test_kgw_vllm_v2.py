"""The KGW processor for vLLM's Model Runner V2 (``watermark/kgw/vllm_plugin_v2.py``), against stand-ins of
vLLM 0.33's two logits-processor interfaces (vLLM is not installed here; ``scripts/vllm_conformance.py`` runs
the same processors against an installed vLLM's real classes and loaders).

V2 hands a processor slots and a device-side token history instead of a persistent batch with host lists, so
the two processors gather their contexts differently; for the same requests they must bias the same logits
bit for bit, in a generation where requests come, go, are reordered and recycle slots, and where the newest
token reaches the history a step late (async scheduling)."""

from __future__ import annotations

import logging
import random
import tomllib
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support import fake_vllm
from watermark.keys import KeyRing
from watermark.kgw import directives
from watermark.kgw.detect import KgwScheme
from watermark.kgw.params import KgwParams
from watermark.kgw.vllm_state import SlotState, select_v2

torch = pytest.importorskip("torch")

RING = KeyRing(b"kgw-v2-test-master-secret-0123456789")
VOCAB = 2048


@pytest.mark.parametrize(("slots", "idx", "lens", "rows", "ends"), [
    ({}, [0, 1], [9, 9], [], []),
    ({3: SlotState((1, 2, 3, 4), 2.0)}, [0, 3, 5], [9, 12, 7], [1], [12]),
    ({3: SlotState((1, 2, 3, 4), 0.0)}, [3], [12], [], []),  # δ = 0: nothing to add
    ({0: SlotState((1, 2, 3, 4), 2.0)}, [0], [3], [], []),  # shorter than the window (h = 4)
    ({0: SlotState((1, 2, 3, 4), 2.0)}, [0], [4], [0], [4]),
    ({0: SlotState((1, 2, 3, 4), 2.0), 7: SlotState((5, 6, 7, 8), 3.0)}, [7, 2, 0], [10, 10, 10], [0, 2], [10, 10]),
])
def test_select_v2_picks_the_watermarked_rows_with_a_full_window(
        slots: dict[int, SlotState], idx: list[int], lens: list[int], rows: list[int], ends: list[int]) -> None:
    sel = select_v2(slots, idx, lens, 4)
    assert (sel.rows, sel.ends) == (rows, ends)
    assert sel.slots == [idx[r] for r in rows]
    assert sel.subkeys == [slots[idx[r]].subkeys for r in rows]


def test_ipgate_declares_no_vllm_entry_point() -> None:
    """vLLM loads every class of the ``vllm.logits_processors`` group into whichever engine loop runs, and
    Model Runner V2 refuses a V1-interface class with a ValueError at start-up: ``vllm serve`` would not start
    in an environment where ipgate is installed (seen with vLLM 0.33.0, scripts/vllm_conformance.py)."""
    meta = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert "vllm.logits_processors" not in meta["project"].get("entry-points", {})


@dataclass(frozen=True)
class _BatchUpdate:
    batch_size: int
    removed: list[int]
    added: list[tuple[int, Any, list[int] | None, list[int]]]
    moved: list[tuple[int, int, Any]]


class _SP:
    def __init__(self, extra_args: dict[str, Any] | None = None) -> None:
        self.extra_args = extra_args


@dataclass(frozen=True)
class _Ctx:  # the fields of vLLM 0.33's LogitsContext the processor reads
    idx_mapping_np: np.ndarray
    seq_lens_upper_bound_np: np.ndarray
    input_ids: Any


@pytest.fixture
def plugin(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """``vllm_plugin`` with both processor classes built against stand-ins of vLLM 0.33's base classes."""
    monkeypatch.setenv("IPGATE_WATERMARK_SECRET", "hex:" + RING.master.hex())
    monkeypatch.delenv("IPGATE_KGW_PARAMS", raising=False)
    monkeypatch.setenv("IPGATE_KGW_COMPILE", "0")
    with fake_vllm.installed(monkeypatch) as vllm_plugin:
        assert issubclass(vllm_plugin.KgwLogitsProcessorV2, fake_vllm.V2LogitsProcessor)
        assert issubclass(vllm_plugin.KgwLogitsProcessor, fake_vllm.V1LogitsProcessor)
        yield vllm_plugin


def _v2(plugin: types.ModuleType, max_reqs: int = 8, max_len: int = 256, device: Any = None) -> Any:
    history = types.SimpleNamespace(gpu=torch.zeros((max_reqs, max_len), dtype=torch.int32, device=device))
    states = types.SimpleNamespace(all_token_ids=history, max_num_reqs=max_reqs, vocab_size=VOCAB)
    return plugin.KgwLogitsProcessorV2(None, states)


def test_v2_refuses_speculative_decoding_at_start_up(plugin: types.ModuleType) -> None:
    from watermark.kgw.vllm_plugin_v2 import SPECULATIVE_REFUSAL

    with pytest.raises(ValueError) as ei:
        plugin.KgwLogitsProcessorV2(types.SimpleNamespace(speculative_config=object()), None)
    assert str(ei.value) == SPECULATIVE_REFUSAL


def test_v2_admission_refuses_a_forged_directive_and_the_probe(plugin: types.ModuleType) -> None:
    good = directives.vllm_xargs(RING.key("alice"), KgwParams())
    plugin.KgwLogitsProcessorV2.validate_params(_SP(dict(good)))
    for bad in ({**good, directives.F_CLIENT: "mallory"}, directives.probe_xargs(RING.master)):
        with pytest.raises(ValueError, match=directives.REFUSAL_MARK):
            plugin.KgwLogitsProcessorV2.validate_params(_SP(dict(bad)))


def test_v2_recycled_slot_forgets_its_previous_occupant(plugin: types.ModuleType) -> None:
    proc = _v2(plugin)
    assert proc.add_request(2, _SP(dict(directives.vllm_xargs(RING.key("alice"), KgwParams())))) is True
    assert proc.add_request(2, _SP()) is False  # the slot now holds an unwatermarked request
    proc.req_states.all_token_ids.gpu[2, :10] = torch.arange(10)
    logits = torch.randn(1, VOCAB)
    ctx = _Ctx(np.array([2]), np.array([10]), torch.tensor([9], dtype=torch.int32))
    assert torch.equal(proc.apply(logits.clone(), ctx), logits)


def test_v2_invalid_directive_in_the_engine_is_logged_and_left_unwatermarked(
        plugin: types.ModuleType, caplog: pytest.LogCaptureFixture) -> None:
    proc = _v2(plugin)
    bad = {**directives.vllm_xargs(RING.key("alice"), KgwParams()), directives.F_CLIENT: "mallory"}
    with caplog.at_level(logging.ERROR):
        assert proc.add_request(0, _SP(bad)) is False
    assert "NOT watermarked" in caplog.text and 0 not in proc.slots


def test_v2_several_rows_per_request_are_not_biased_and_say_so(
        plugin: types.ModuleType, caplog: pytest.LogCaptureFixture) -> None:
    proc = _v2(plugin)
    proc.add_request(0, _SP(dict(directives.vllm_xargs(RING.key("alice"), KgwParams()))))
    logits = torch.randn(3, VOCAB)  # three rows for one request (drafts)
    ctx = _Ctx(np.array([0]), np.array([10]), torch.tensor([1, 2, 3], dtype=torch.int32))
    with caplog.at_level(logging.ERROR):
        assert torch.equal(proc.apply(logits.clone(), ctx), logits)
        proc.apply(logits.clone(), ctx)
    assert caplog.text.count("NOT watermarked") == 1


_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize(("seed", "device", "compiled"), [
    (3, "cpu", False),
    (11, "cpu", False),
    pytest.param(5, "cuda", False, marks=_CUDA, id="5-cuda-eager"),
    pytest.param(7, "cuda", True, marks=_CUDA, id="7-cuda-fused"),
])
def test_v1_and_v2_bias_identically_through_a_generation(
        plugin: types.ModuleType, monkeypatch: pytest.MonkeyPatch, seed: int, device: str, compiled: bool) -> None:
    """The conformance script's engine loop, on stand-ins: requests come and go (V1: holes, condense moves,
    swaps; V2: recycled slots), the newest token reaches V2's history one step late; every step the two
    processors' logits are bit-identical and unwatermarked rows untouched; each client's tokens verify.
    On a GPU, V2 runs there (history, logits and input ids on the device; eager, or the compiled kernel the
    engine uses by default) against V1 on the CPU: a GPU engine's text verifies with CPU-only detection."""
    params = KgwParams()
    dev = torch.device(device)
    v1 = plugin.KgwLogitsProcessor(None, torch.device("cpu"), False)
    monkeypatch.setenv("IPGATE_KGW_COMPILE", "1" if compiled else "0")
    v2 = _v2(plugin, max_reqs=6, device=dev)
    assert v2._compile is compiled
    history = v2.req_states.all_token_ids.gpu
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    pending = [("alice", 30), (None, 5), ("bob", 4), ("carol", 17), (None, 9), ("dave", 6), ("erin", 4)]
    batch: list[dict[str, Any] | None] = []
    free = list(range(6))
    removed: list[int] = []
    added: list[tuple[int, Any, list[int] | None, list[int]]] = []
    moved: list[tuple[int, int, Any]] = []
    late: list[tuple[int, int, int]] = []
    done: list[dict[str, Any]] = []
    swap, one_way = types.SimpleNamespace(name="SWAP"), types.SimpleNamespace(name="UNIDIRECTIONAL")
    steps = 48
    while pending or any(batch):
        for i, r in enumerate(batch):
            if r is not None and len(r["out"]) >= steps:
                done.append(r)
                free.append(r["slot"])
                batch[i] = None
                removed.append(i)
        while pending and sum(r is not None for r in batch) < 3 and rng.random() < 0.6:
            client, n = pending.pop(0)
            sp = _SP(dict(directives.vllm_xargs(RING.key(client), params)) if client else None)
            req: dict[str, Any] = {"client": client, "prompt": [rng.randrange(VOCAB) for _ in range(n)],
                                   "out": [], "slot": free.pop(0)}
            history[req["slot"], :n] = torch.tensor(req["prompt"], dtype=torch.int32)
            v2.add_request(req["slot"], sp)
            holes = sorted(removed)
            if holes:
                index = holes[0]
                removed.remove(index)
                batch[index] = req
            else:
                index = len(batch)
                batch.append(req)
            added.append((index, sp, req["prompt"], req["out"]))
        while removed:  # condense from the end
            last = max((i for i, r in enumerate(batch) if r is not None), default=-1)
            empty = min(removed)
            if empty >= last:
                break
            removed.remove(empty)
            batch[empty], batch[last] = batch[last], None
            moved.append((last, empty, one_way))
        while batch and batch[-1] is None:
            batch.pop()
        live = [r for r in batch if r is not None]
        assert len(live) == len(batch)
        if len(live) >= 2 and rng.random() < 0.3:
            a, b = rng.sample(range(len(live)), 2)
            batch[a], batch[b] = batch[b], batch[a]
            live = [r for r in batch if r is not None]
            moved.append((a, b, swap))
        update = _BatchUpdate(len(live), sorted(removed, reverse=True), list(added), list(moved))
        v1.update_state(update if (removed or added or moved) else None)
        removed.clear()
        added.clear()
        moved.clear()
        if not live:  # the engine emptied (the update above still told V1 which rows went): nothing to sample
            continue
        logits = torch.randn((len(live), VOCAB), generator=gen) * 3.0
        out1 = v1.apply(logits.clone())
        lens = [len(r["prompt"]) + len(r["out"]) for r in live]
        ctx = _Ctx(np.array([r["slot"] for r in live]), np.array(lens),
                   torch.tensor([(r["prompt"] + r["out"])[-1] for r in live], dtype=torch.int32, device=dev))
        out2 = v2.apply(logits.clone().to(dev), ctx).cpu()
        for slot, pos, tok in late:
            history[slot, pos] = tok
        late.clear()
        assert torch.equal(out1, out2)
        for i, r in enumerate(live):
            if r["client"] is None:
                assert torch.equal(out1[i], logits[i])
        probs = torch.softmax(out1, dim=1)
        for i, r in enumerate(live):
            tok = int(torch.multinomial(probs[i], 1, generator=gen))
            late.append((r["slot"], len(r["prompt"]) + len(r["out"]), tok))
            r["out"].append(tok)
    scheme = KgwScheme(_no_text, params)
    keys = [RING.key(f"c{i}") for i in range(95)] + [RING.key(c) for c in ("alice", "bob", "carol", "dave", "erin")]
    assert len(done) == 7
    for r in done:
        score = scheme.score_ids([r["out"]], keys, prompts=[r["prompt"]])
        if r["client"] is None:
            assert not score.watermarked(1e-3)
        else:
            assert score.watermarked(1e-3) and score.client_id == r["client"]


def _no_text(texts: Any) -> list[list[int]]:  # scoring token ids directly: no tokenizer needed
    return [[] for _ in texts]
