"""The semantic detector with synthetic 384-d vectors (no torch): its three views, its bounded state, the
engine wiring (disabled by default, weighted from its own reference) and replay's one-request lag."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from detectors.combiner import CombinerParams, default_combiner_path
from detectors.engine import DetectorSettings, Engine
from detectors.features import extract
from detectors.replay import replay
from detectors.semantic import (
    DIM,
    MAX_TOPICS,
    SemanticCoverage,
    SemanticReference,
    SemanticState,
    default_semantic_path,
)
from detectors.state_codec import declared_state_bytes
from detectors.types import STATE_BUDGET_BYTES, RequestFeatures

K = 8
RNG = np.random.default_rng(3)


def unit(v: np.ndarray) -> np.ndarray:
    out: np.ndarray = (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)
    return out


CENTROIDS = unit(RNG.standard_normal((K, DIM)))


def ref(**kw: object) -> SemanticReference:
    base: dict[str, object] = dict(
        centroids=CENTROIDS, mean=np.zeros(DIM, np.float32), sigma2=1.0, persona_offset=0.3, near_cosine=0.8,
        near_share=(0.2, 0.5), entropy=(0.85, 0.95), min_prompts=(30.0, 60.0), weight=4.0,
    )
    base.update(kw)
    return SemanticReference(**base)  # type: ignore[arg-type]


def around(center: np.ndarray, n: int, spread: float, seed: int) -> np.ndarray:
    """n unit vectors scattered around ``center`` (cosine to it falls as ``spread`` grows)."""
    rng = np.random.default_rng(seed)
    return unit(center[None, :] + spread * rng.standard_normal((n, DIM)) / np.sqrt(DIM))


def feed(det: SemanticCoverage, vecs: np.ndarray, st: SemanticState | None = None) -> SemanticState:
    st = st or det.new_state()
    feats = extract("/v1/completions", {"prompt": "x"}, 0.0)
    for i, v in enumerate(vecs):
        det.observe(st, _with(feats, v[None, :]), 1000.0 + i)
    return st


def _with(feats: RequestFeatures, arr: np.ndarray) -> RequestFeatures:
    return dataclasses.replace(feats, neural=arr)


def test_paraphrase_stream_is_a_near_duplicate_stream() -> None:
    det = SemanticCoverage(ref())
    para = around(CENTROIDS[0], 40, 0.3, seed=1)  # cosines > 0.9 to each other
    assert float(np.min(para @ para.T)) > 0.85
    st = feed(det, para)
    s = det.score(st, 1040.0)
    assert s.score > 0.9 and any("paraphrase a recent prompt" in r for r in s.reasons), s


def test_diverse_focused_user_scores_zero() -> None:
    """A person: unrelated prompts (no near duplicates) on two topics, near the reference mean's offset."""
    det = SemanticCoverage(ref(persona_offset=2.0))
    vecs = np.concatenate([around(CENTROIDS[0], 30, 3.0, seed=2), around(CENTROIDS[1], 30, 3.0, seed=3)])
    assert float(np.max(np.triu(vecs @ vecs.T, 1))) < 0.8
    s = det.score(feed(det, vecs), 2000.0)
    assert s.score == 0.0 and s.reasons == ()


def test_even_topic_coverage_fires_only_after_enough_prompts() -> None:
    det = SemanticCoverage(ref(persona_offset=2.0))
    sweep = np.stack([around(CENTROIDS[i % K], 1, 3.0, seed=100 + i)[0] for i in range(80)])
    st = det.new_state()
    early = det.score(feed(det, sweep[:20], st), 0.0)
    assert early.score == 0.0  # 20 prompts: below min_prompts, whatever the entropy
    s = det.score(feed(det, sweep[20:], st), 0.0)
    stats = det.stats(st)
    assert stats.entropy > 0.95 and stats.topics == K
    assert s.score == pytest.approx(1.0) and any(f"over {K} of {K} semantic topics" in r for r in s.reasons)


def test_far_from_reference_is_an_mmd_reason() -> None:
    det = SemanticCoverage(ref(mean=CENTROIDS[1], persona_offset=0.2))
    vecs = around(CENTROIDS[0], 60, 3.0, seed=4)  # off the reference mean, not near duplicates
    s = det.score(feed(det, vecs), 0.0)
    assert det.stats(feed(det, vecs)).mmd_excess > 0.5
    assert any("far from the benign reference" in r for r in s.reasons), s


def test_no_vectors_only_decays() -> None:
    det = SemanticCoverage(ref())
    st = feed(det, around(CENTROIDS[0], 20, 0.3, seed=5))
    before = det.stats(st)
    feats = extract("/v1/completions", {"prompt": "x"}, 0.0)
    det.observe(st, feats, 1020.0)  # neural None: nothing folded, counters decay by one request
    after = det.stats(st)
    assert after.vectors < before.vectors and after.near < before.near
    zero = _with(feats, np.zeros((1, DIM), np.float32))
    det.observe(st, zero, 1021.0)  # an empty prompt's zero vector is skipped
    assert det.stats(st).vectors < after.vectors


def test_state_round_trip_and_bound() -> None:
    det = SemanticCoverage(ref())
    st = feed(det, around(CENTROIDS[2], 50, 1.0, seed=6))
    blob = det.dump(st)
    assert len(blob) <= SemanticCoverage.state_bytes
    back = det.load(blob)
    assert det.dump(back) == blob
    assert det.score(back, 0.0).score == pytest.approx(det.score(st, 0.0).score, abs=1e-6)
    # the next fold agrees whether the state was kept in memory or decoded from bytes (float32 on the wire)
    v = around(CENTROIDS[2], 1, 1.0, seed=7)
    feed(det, v, st)
    feed(det, v, back)
    assert np.allclose(back.counters.c, st.counters.c, rtol=1e-5)
    assert np.array_equal(back.ring_i8, st.ring_i8) and np.array_equal(back.ring, st.ring) and back.pos == st.pos
    with pytest.raises(ValueError):
        det.load(blob[:-5])
    with pytest.raises(ValueError):
        det.load(b"\x00" * 3)


def test_reference_json_round_trip_and_validation() -> None:
    r = ref()
    back = SemanticReference.from_json(r.to_json())
    assert back.centroids.shape == (K, DIM) and back.weight == 4.0 and back.entropy == (0.85, 0.95)
    raw = json.loads(r.to_json())
    raw["entropy"] = [0.9, 0.8]
    with pytest.raises(ValueError, match="entropy must be an increasing pair"):
        SemanticReference.from_json(json.dumps(raw))
    raw = json.loads(r.to_json())
    raw["mean"] = [0.0] * 10
    with pytest.raises(ValueError, match="mean has 10 values"):
        SemanticReference.from_json(json.dumps(raw))
    raw = json.loads(r.to_json())
    raw["near_cosine"] = 0.0
    with pytest.raises(ValueError, match="near_cosine"):
        SemanticReference.from_json(json.dumps(raw))
    with pytest.raises(ValueError, match="at most 64"):
        SemanticCoverage(ref(centroids=unit(RNG.standard_normal((MAX_TOPICS + 1, DIM)))))
    with pytest.raises(ValueError, match="needs its fitted reference"):
        SemanticCoverage()


def test_shipped_reference_is_fitted_plain_json() -> None:
    shipped = SemanticReference.from_json(default_semantic_path().read_text(encoding="utf-8"))
    assert 2 <= shipped.centroids.shape[0] <= MAX_TOPICS and shipped.mean.shape == (DIM,)
    assert np.allclose(np.linalg.norm(shipped.centroids, axis=1), 1.0, atol=1e-3)
    assert shipped.weight > 0 and shipped.meta["split"] == "train"


PARAMS = CombinerParams.from_json(default_combiner_path().read_text(encoding="utf-8"))


def test_engine_off_by_default_on_with_reference_within_budget() -> None:
    assert "semantic" not in Engine.from_params(PARAMS).names
    with pytest.raises(ValueError, match="needs its fitted reference"):
        Engine.from_params(PARAMS, detectors={"semantic": DetectorSettings(enabled=True)})
    eng = Engine.from_params(PARAMS, detectors={"semantic": DetectorSettings(True, 4.0, {"reference": ref()})})
    assert "semantic" in eng.names and eng.weights["semantic"] == 4.0
    # every detector at its declared bound still fits the 32 KiB budget
    assert declared_state_bytes(eng.detectors) <= STATE_BUDGET_BYTES


def test_replay_feeds_vectors_one_request_late() -> None:
    eng = Engine.from_params(PARAMS, detectors={"semantic": DetectorSettings(True, 4.0, {"reference": ref()})})
    para = around(CENTROIDS[0], 40, 0.3, seed=8)
    records = [{"ts": 1000.0 + 30 * i, "client": "p", "endpoint": "/v1/completions",
                "body": {"prompt": f"question number {i} about something"}} for i in range(40)]
    seen: list[float] = []
    out = replay(records, eng, neural=list(para),
                 on_verdict=lambda c, i, v, r: seen.append(v.detector_scores["semantic"]))
    assert seen[0] == 0.0 and seen[1] == 0.0  # request 2 folds request 1's vector: nothing to compare yet
    assert seen[-1] > 0.9
    client = out["clients"][0]
    assert any("paraphrase" in r for r in client["reasons"]), client
    assert "semantic" in out["summary"]["detectors"]
    with pytest.raises(ValueError, match="2 vectors for 40 records"):
        replay(records, eng, neural=list(para[:2]))
    # without vectors the detector only decays: same engine, hashed replay, semantic stays 0
    quiet: list[float] = []
    replay(records, eng, on_verdict=lambda c, i, v, r: quiet.append(v.detector_scores["semantic"]))
    assert max(quiet) == 0.0
