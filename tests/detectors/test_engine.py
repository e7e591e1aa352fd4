"""Engine contract: configuration errors at start-up, failure isolation, tiers with hysteresis and decay."""

from __future__ import annotations

import logging
from typing import ClassVar

import pytest

from detectors.base import Counters
from detectors.combiner import CombinerParams, TierState, TierThresholds, next_tier
from detectors.engine import DetectorSettings, Engine
from detectors.traffic.corpus import parse_prompts
from detectors.types import DetectorScore, RequestFeatures, ResponseFeatures
from tests.detectors.conftest import chat, feats

T0 = 1_767_258_000.0


def test_unknown_detector_name_fails_at_start(params: CombinerParams) -> None:
    with pytest.raises(ValueError, match="unknown detector"):
        Engine.from_params(params, {"telepathy": DetectorSettings()})


def test_unknown_detector_param_fails_at_start(params: CombinerParams) -> None:
    with pytest.raises(ValueError, match="templates"):
        Engine.from_params(params, {"templates": DetectorSettings(params={"no_such_knob": 1})})


def test_disabled_detector_and_weight_override(params: CombinerParams) -> None:
    eng = Engine.from_params(params, {"timing": DetectorSettings(enabled=False),
                                      "reasoning": DetectorSettings(weight=9.0)})
    assert "timing" not in eng.names
    assert eng.weights["reasoning"] == 9.0


def test_tier_thresholds_validated() -> None:
    with pytest.raises(ValueError):
        TierThresholds(enter=(0.8, 0.5, 0.9))
    with pytest.raises(ValueError, match="malformed"):
        CombinerParams.from_json('{"weights": {}}')


class Boom:
    name: ClassVar[str] = "boom"
    state_bytes: ClassVar[int] = 28

    def new_state(self) -> Counters:
        return Counters(5)

    def load(self, data: bytes) -> Counters:
        c = Counters(5)
        c.load(data)
        return c

    def dump(self, state: Counters) -> bytes:
        return state.dump()

    def observe(self, state: Counters, feats: RequestFeatures, now: float) -> DetectorScore:
        raise RuntimeError("detector bug")

    def score(self, state: Counters, now: float) -> DetectorScore:
        raise RuntimeError("detector bug")

    def observe_response(self, state: Counters, resp: ResponseFeatures, now: float) -> None:
        raise RuntimeError("detector bug")


def test_a_raising_detector_is_isolated_logged_once_and_reported(
    engine: Engine, params: CombinerParams, caplog: pytest.LogCaptureFixture
) -> None:
    eng = Engine(params, [*engine.detectors, Boom()], {**engine.weights, "boom": 5.0}, params.tiers, 0.9)
    state = None
    with caplog.at_level(logging.ERROR, logger="detectors.engine"):
        for i in range(3):
            obs = eng.observe(state, feats(chat(f"question number {i} about birds"), T0 + i), T0 + i)
            state = eng.observe_response(obs.state, ResponseFeatures(completion_tokens=3), T0 + i)
            assert obs.verdict.errors == ("boom",) and obs.verdict.unscored
            assert "boom" not in obs.verdict.detector_scores
            assert 0.0 <= obs.verdict.score < 0.5
    assert sum("boom raised" in r.getMessage() for r in caplog.records) == 1


def test_hysteresis_climbs_at_once_and_steps_down_after_cooldown() -> None:
    th = TierThresholds(enter=(0.5, 0.8, 0.95), margin=0.1, cooldown_s=600, min_requests_to_block=10)
    st = TierState()
    next_tier(st, 0.85, T0, 0.0, 5, th)
    assert st.tier == 2
    next_tier(st, 0.99, T0 + 1, T0, 5, th)
    assert st.tier == 2  # block needs 10 requests
    next_tier(st, 0.99, T0 + 2, T0 + 1, 10, th)
    assert st.tier == 3
    next_tier(st, 0.9, T0 + 3, T0 + 2, 11, th)  # above block's exit level (0.85): stays
    assert st.tier == 3
    next_tier(st, 0.6, T0 + 4, T0 + 3, 12, th)  # below: the cool-down clock starts
    assert st.tier == 3
    next_tier(st, 0.6, T0 + 400, T0 + 4, 13, th)
    assert st.tier == 3
    next_tier(st, 0.6, T0 + 700, T0 + 400, 14, th)  # 600 s below the exit level: one step down
    assert st.tier == 2
    next_tier(st, 0.6, T0 + 800, T0 + 700, 15, th)  # below throttle's exit (0.7), but not for 600 s yet
    assert st.tier == 2
    next_tier(st, 0.1, T0 + 5000, T0 + 800, 16, th)  # a long silence counts as cool-down time
    assert st.tier <= 1


def test_engine_cools_a_client_that_stops(engine: Engine, corpus_lines: list[str]) -> None:
    state = None
    q = "Tell me about lighthouses and the people who kept them running through storms."
    for i in range(30):
        body = chat(q, logit_bias={str(1000 + 50 * i + j): 100 for j in range(20)}, logprobs=True,
                    top_logprobs=20, max_tokens=1)
        obs = engine.observe(state, feats(body, T0 + i), T0 + i)
        state = obs.state
    assert obs.verdict.tier >= 2 and obs.verdict.flagged
    assert any("logit_bias" in r for r in obs.verdict.reasons)
    # Two days of silence (counters halve daily), then a person's ordinary questions, which dilute the
    # remaining evidence: the score falls below the exit levels and the tier steps down.
    t = T0 + 2 * 86400
    texts = [p.turns[0] for p in parse_prompts(corpus_lines, "all") if p.category == "chat"][:30]
    assert len(texts) == 30
    for i, text in enumerate(texts):
        obs = engine.observe(state, feats(chat(text), t + 300 * i), t + 300 * i)
        state = obs.state
    assert obs.verdict.tier < 2
    assert obs.verdict.score < engine.tiers.enter[1]
