"""Anchors (``detectors/anchors.py``): winnowed fingerprints of fixed passages wherever they sit, the
template detector's ring of them, and what they must leave alone (short prompts, users who paste one
document with every question, ordinary long prompts)."""

from __future__ import annotations

import dataclasses
import json
import random
import struct
from typing import Any

import numpy as np
import pytest

from detectors import state as envelope
from detectors.anchors import MAX_ANCHORS, MIN_TOKENS, RING
from detectors.engine import Engine
from detectors.features import extract, tokens_of
from detectors.templates import Templates, TemplateState
from detectors.types import STATE_BUDGET_BYTES, RequestFeatures
from tests.detectors.conftest import CHAT, chat

PASSAGE = "Write a detailed, vivid short story about a cat who learns to paint, and include plenty of dialogue."
WORDS = ["river", "stone", "cloud", "market", "engine", "pencil", "garden", "ladder", "violin", "copper",
         "meadow", "lantern", "harbor", "candle", "orbit", "velvet", "thunder", "saddle", "marble", "falcon"]


def _salad(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _anchors(text: str) -> set[int]:
    return set(extract(CHAT, chat(text), 0.0).anchors)


@pytest.mark.parametrize(("before", "after"), [(10, 60), (60, 10), (150, 150), (400, 20), (20, 900)])
def test_a_fixed_passage_shares_anchors_wherever_it_sits(before: int, after: int) -> None:
    rng = random.Random(before * 1000 + after)
    a = _anchors(f"{_salad(rng, before)} {PASSAGE} {_salad(rng, after)}")
    b = _anchors(f"{_salad(rng, after)} {PASSAGE} {_salad(rng, before + 7)}")
    fresh = _anchors(f"{_salad(rng, after)} {_salad(rng, before + 7)}")
    assert len(a & b) >= 2  # the passage's, at other offsets in other padding
    assert len(a & b) > len(a & fresh)


@pytest.mark.parametrize(("text", "expect"), [
    ("What is the capital of France?", 0),
    (" ".join(["word"] * (MIN_TOKENS - 1)), 0),  # one token short
    ("[" + ", ".join(str(i) for i in range(200)) + "]", 0),  # numbers and punctuation: never a fixed passage
    ("}\n" * 300, 0),
    (_salad(random.Random(1), 2000), MAX_ANCHORS),  # capped (a 2 000-word prompt gives more)
])
def test_which_prompts_have_anchors(text: str, expect: int) -> None:
    anchors = extract(CHAT, chat(text), 0.0).anchors
    assert len(anchors) == expect
    assert list(anchors) == sorted(set(anchors)) and all(a & 1 and a < 2**32 for a in anchors)


def test_a_long_prompt_has_anchors_and_a_short_one_the_features_it_had() -> None:
    long = extract(CHAT, chat(_salad(random.Random(2), 120)), 0.0)
    assert len(tokens_of(_salad(random.Random(2), 120))) >= MIN_TOKENS and len(long.anchors) > 10


def _long_feats(rng: random.Random, ts: float) -> RequestFeatures:
    return extract(CHAT, chat(f"{_salad(rng, 300)} {PASSAGE} {_salad(rng, 300)}"), ts)


def test_the_ring_is_bounded_and_round_trips() -> None:
    det, st, rng = Templates(), TemplateState(), random.Random(3)
    for i in range(12):
        det.observe(st, _long_feats(rng, 1e9 + i), 1e9 + i)
    assert len(st.ring) == RING
    blob, ring = det.dump(st), det.dump_sidecar(st)
    assert len(blob) <= Templates.state_bytes and len(ring) == Templates.sidecar_bytes
    back = det.load(blob)
    assert not len(back.ring)  # the table's blob holds no ring: builds without anchors read it as before
    det.load_sidecar(back, ring)
    assert np.array_equal(back.ring, st.ring) and det.dump(back) == blob and det.dump_sidecar(back) == ring


def test_a_state_without_a_ring_reads_as_before() -> None:
    # what builds before the ring wrote (and what a client that never sent a long prompt still writes)
    det, st = Templates(), TemplateState()
    det.observe(st, extract(CHAT, chat("How do I bake bread at home without yeast?"), 1e9), 1e9)
    blob = det.dump(st)
    assert len(blob) == 8 + 12 + 1 + len(st) * 4 * (16 + 32 + 4) and not len(det.load(blob).ring)
    assert det.dump_sidecar(st) == b""  # no ring, no blob


@pytest.mark.parametrize("extra", [1, 2, 3, 4 * RING + 4])
def test_a_ring_of_the_wrong_size_is_refused(extra: int) -> None:
    det, st = Templates(), TemplateState()
    det.observe(st, _long_feats(random.Random(4), 1e9), 1e9)
    with pytest.raises(ValueError):
        det.load(det.dump(st) + b"\x01" * extra)  # nothing may follow the table
    with pytest.raises(ValueError):
        det.load_sidecar(det.load(det.dump(st)), b"\x01" * (extra if extra < 4 else extra + 4 * RING))


def test_the_worst_case_state_stays_within_its_declared_bound(engine: Engine) -> None:
    # every template slot taken by distinct long prompts, the ring full
    data, rng = None, random.Random(5)
    for i in range(40):
        text = " ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(6)) for _ in range(700))
        f = extract(CHAT, chat(text, logprobs=True, top_logprobs=20,
                               logit_bias={str(1000 + 37 * i + j): 5 for j in range(300)}), 1e9 + i)
        data = engine.observe(data, f, 1e9 + i).state
    assert data is not None
    blobs = envelope.decode(data).blobs
    blob = blobs["templates"]
    assert len(blob) == Templates.state_bytes  # 24 clusters: the declared worst case
    assert len(blobs[Templates.sidecar]) == Templates.sidecar_bytes  # and a full ring beside it
    assert len(data) <= STATE_BUDGET_BYTES
    assert struct.unpack_from("<B", blob, 20)[0] == 24


def _rows(corpus_lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(x) for x in corpus_lines if x.strip()]


def _trajectory(texts: list[str], strip: bool) -> list[float]:
    det, st, out = Templates(), TemplateState(), []
    for i, text in enumerate(texts):
        f = extract(CHAT, chat(text), 1e9 + 90.0 * i)
        if strip:
            f = dataclasses.replace(f, anchors=())
        out.append(det.observe(st, f, f.ts).score)
    return out


@pytest.mark.parametrize("layout", ["doc+q", "q+doc", "q+doc+q"])
def test_pasting_one_document_with_each_question_is_read_as_before(corpus_lines: list[str], layout: str) -> None:
    # Iterative debugging: one long piece of code, a different question each time (real prompts; questions
    # from the benign categories). The prompt sketches already match such prompts by the document, so the
    # anchors never read them: the template evidence is exactly what it was without anchors.
    rows = _rows(corpus_lines)
    docs = [r["turns"][0] for r in rows if r["category"] == "code" and 1500 <= len(r["turns"][0]) <= 5000]
    questions = [r["turns"][0] for r in rows if r["category"] in ("qa", "chat") and len(r["turns"][0]) < 300]
    rng = random.Random(layout)
    for doc in rng.sample(docs, 3):
        qs = rng.sample(questions, 15)
        texts = {"doc+q": [f"{doc}\n\n{q}" for q in qs], "q+doc": [f"{q}\n\n{doc}" for q in qs],
                 "q+doc+q": [f"{q}\n\n{doc}\n\n{q2}" for q, q2 in zip(qs, qs[1:] + qs[:1], strict=True)]}[layout]
        assert _trajectory(texts, strip=False) == _trajectory(texts, strip=True)


@pytest.mark.parametrize("category", ["code", "chat", "math", "instruction"])
def test_ordinary_long_prompts_are_read_as_before(corpus_lines: list[str], category: str) -> None:
    # Unrelated prompts of one kind share phrases ("from typing import list", "how much money does"): none of
    # it may read as a template's fixed text.
    pool = [r["turns"][0] for r in _rows(corpus_lines)
            if r["category"] == category and len(tokens_of(r["turns"][0])) >= MIN_TOKENS]
    rng = random.Random(category)
    for _ in range(4):
        texts = rng.sample(pool, min(60, len(pool)))
        assert _trajectory(texts, strip=False) == _trajectory(texts, strip=True)


@pytest.mark.parametrize(("needle_min", "ring"), [(2, True), (3, True), (0, False)])
def test_needle_min_zero_keeps_no_ring(needle_min: int, ring: bool) -> None:
    det, st = Templates(needle_min=needle_min), TemplateState()
    det.observe(st, _long_feats(random.Random(6), 1e9), 1e9)
    assert bool(len(st.ring)) is ring
    assert bool(det.dump_sidecar(st)) is ring


@pytest.mark.parametrize("bad", [-1, True, 1.5, "2"])
def test_needle_min_must_be_a_count(bad: Any) -> None:
    with pytest.raises(ValueError, match="needle_min"):
        Templates(needle_min=bad)


def test_a_build_without_anchors_reads_the_rest_of_the_state(params: Any) -> None:
    """Rolling upgrades: the ring is an envelope blob of its own, so a replica of a build that knows no anchors
    (played here by an engine without the sidecar) reads the template table as before and drops the ring,
    instead of refusing the whole templates blob and restarting the client's template evidence."""
    new, old = Engine.from_params(params), Engine.from_params(params)
    old._sidecars = []
    data, rng = None, random.Random(8)
    for i in range(6):
        data = new.observe(data, _long_feats(rng, 1e9 + 60 * i), 1e9 + 60 * i).state
    assert data is not None and Templates.sidecar in envelope.decode(data).blobs
    f = extract(CHAT, chat("How do I bake bread at home without yeast?"), 1e9 + 3600)
    by_old = old.observe(data, f, 1e9 + 3600)
    assert old.state_errors == 0 and by_old.verdict.requests_seen == 7
    kept = envelope.decode(by_old.state).blobs
    assert kept["templates"] and Templates.sidecar not in kept  # the table kept, the ring dropped
    # and the new build reads what the old one wrote (no ring: it starts one again)
    again = new.observe(by_old.state, _long_feats(rng, 1e9 + 7200), 1e9 + 7200)
    assert new.state_errors == 0 and again.verdict.requests_seen == 8
