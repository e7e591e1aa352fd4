"""Per-client state: the 32 KiB budget under worst-case inputs, round trips, and garbage tolerance."""

from __future__ import annotations

import random

import pytest

from detectors import state as envelope
from detectors.combiner import CombinerParams
from detectors.engine import Engine
from detectors.linking import MAX_ID_BYTES, MAX_PEERS
from detectors.state_codec import declared_state_bytes
from detectors.types import STATE_BUDGET_BYTES, ResponseFeatures
from tests.detectors.conftest import chat, feats

T0 = 1_767_258_000.0


def _adversarial_stream(engine: Engine, n: int = 400) -> bytes:
    """Every bounded structure pushed to its limit: distinct templates, huge biases, long peer ids."""
    r = random.Random(1)
    state: bytes | None = None
    for i in range(n):
        words = " ".join(f"w{r.randrange(10**9)}" for _ in range(30))
        body = chat(words, logit_bias={str(t): 100 for t in r.sample(range(100_000), 300)}, logprobs=True,
                    top_logprobs=20, max_tokens=1, n=3, temperature=r.random(), seed=i)
        obs = engine.observe(state, feats(body, T0 + i), T0 + i)
        st = engine.observe_response(obs.state, ResponseFeatures(prompt_tokens=9, completion_tokens=1,
                                                                 finish_reasons=("length",)), T0 + i)
        peers = {("p" * (MAX_ID_BYTES - 8)) + f"{i:08d}": 50, f"short-{i}": 3}
        state = engine.apply_links(st, peers, T0 + i).state
    assert state is not None
    return state


def test_declared_bounds_fit_the_budget(engine: Engine) -> None:
    total = declared_state_bytes(engine.detectors)
    assert total <= STATE_BUDGET_BYTES


def test_worst_case_state_stays_within_declared_bounds(engine: Engine) -> None:
    state = _adversarial_stream(engine)
    assert len(state) <= STATE_BUDGET_BYTES
    env = envelope.decode(state)
    for d in engine.detectors:
        assert len(env.blobs[d.name]) <= d.state_bytes, d.name
    linker = next(d for d in engine.detectors if d.name == "linking")
    assert len(linker.load(env.blobs["linking"]).peers) == MAX_PEERS


def test_round_trip_preserves_every_detector_score(engine: Engine) -> None:
    state = _adversarial_stream(engine, 60)
    env = envelope.decode(state)
    assert envelope.encode(env) == state
    for d in engine.detectors:
        loaded = d.load(env.blobs[d.name])
        assert d.dump(loaded) == env.blobs[d.name], d.name
        assert d.score(loaded, T0 + 100).score == d.score(d.load(d.dump(loaded)), T0 + 100).score
    assert engine.peek(state, T0 + 60).score == pytest.approx(engine.peek(state, T0 + 60).score)


GARBAGE = [b"", b"xx", b"ID\x09" + b"\x00" * 40, b"ID\x01" + b"\xff" * 100, bytes(range(256))]


@pytest.mark.parametrize("garbage", GARBAGE)
def test_garbage_state_starts_fresh_without_raising(engine: Engine, garbage: bytes) -> None:
    obs = engine.observe(garbage, feats(chat("hello there, how are you today?"), T0), T0)
    assert obs.verdict.requests_seen == 1
    assert not obs.verdict.errors
    envelope.decode(obs.state)


def test_a_corrupt_detector_blob_resets_only_that_detector(engine: Engine) -> None:
    state = engine.observe(None, feats(chat("a first prompt about rivers and lakes"), T0), T0).state
    env = envelope.decode(state)
    env.blobs["templates"] = b"\x01\x02"
    obs = engine.observe(envelope.encode(env), feats(chat("a second prompt about mountains"), T0 + 5), T0 + 5)
    assert obs.verdict.requests_seen == 2 and not obs.verdict.errors


def test_state_written_by_a_smaller_engine_is_kept_for_the_rest(params: CombinerParams) -> None:
    from detectors.engine import DetectorSettings

    small = Engine.from_params(params, {"timing": DetectorSettings(enabled=False)})
    full = Engine.from_params(params)
    s1 = full.observe(None, feats(chat("what is the capital of France?"), T0), T0).state
    s2 = small.observe(s1, feats(chat("and of Spain?"), T0 + 30), T0 + 30).state
    assert "timing" not in envelope.decode(s2).blobs
    assert full.observe(s2, feats(chat("and Italy?"), T0 + 60), T0 + 60).verdict.requests_seen == 3


def test_decoded_state_cache_changes_nothing(params: CombinerParams) -> None:
    """The cache keeps float64 counters where a decode would round them to float32: verdicts agree to ~1e-6."""
    cached, uncached = Engine.from_params(params), Engine.from_params(params)
    uncached.cache_size = 0
    r = random.Random(9)
    sa: bytes | None = None
    sb: bytes | None = None
    for i in range(80):
        text = f"Write a {r.choice(['short', 'long'])} poem about {r.choice(['rain', 'cats', 'trains'])} please"
        f = feats(chat(text, max_tokens=64), T0 + 7 * i)
        oa, ob = cached.observe(sa, f, f.ts), uncached.observe(sb, f, f.ts)
        assert oa.verdict.score == pytest.approx(ob.verdict.score, abs=1e-5)
        assert (oa.verdict.tier, oa.verdict.requests_seen) == (ob.verdict.tier, ob.verdict.requests_seen)
        assert oa.verdict.detector_scores == pytest.approx(ob.verdict.detector_scores, abs=1e-5)
        assert len(oa.state) == len(ob.state)
        resp = ResponseFeatures(prompt_tokens=12, completion_tokens=64, finish_reasons=("length",))
        sa = cached.apply_links(cached.observe_response(oa.state, resp, f.ts), {"x": 3}, f.ts).state
        sb = uncached.apply_links(uncached.observe_response(ob.state, resp, f.ts), {"x": 3}, f.ts).state
    assert len(cached._decoded) >= 1 and not uncached._decoded
    # bytes the cache has never seen (another replica wrote them) decode normally
    assert cached.observe(sb, f, f.ts + 1).verdict == uncached.observe(sb, f, f.ts + 1).verdict
