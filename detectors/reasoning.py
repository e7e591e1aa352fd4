"""Reasoning elicitation: prompts that demand full chain-of-thought or grade answers against a rubric.

Distillers harvest reasoning traces ("show your full reasoning step by step") and preference/grading data
("rate the following response on a scale of 1 to 10 using this rubric"). Ordinary users ask for steps now
and then; a harvester asks on nearly every prompt. The score is a shrunk share over ~250 recent prompts.
"""

from __future__ import annotations

from typing import ClassVar

from detectors.base import Counters, ramp, shrunk_share
from detectors.types import DetectorScore, RequestFeatures, ResponseFeatures

N, COT, RUBRIC = range(3)


class ReasoningElicitation:
    name: ClassVar[str] = "reasoning"
    state_bytes: ClassVar[int] = 8 + 4 * 3

    def __init__(self, cot_share: tuple[float, float] = (0.3, 0.7), rubric_share: tuple[float, float] = (0.2, 0.5)):
        self.cot_share = cot_share
        self.rubric_share = rubric_share
        # With no such prompt both shares are 0, and ramp(0, lo, hi) is 0 when lo >= 0 (the defaults)
        self._quiet_is_zero = cot_share[0] >= 0 and rubric_share[0] >= 0
        self._quiet = DetectorScore(self.name, 0.0, ())

    def new_state(self) -> Counters:
        return Counters(3)

    def dump(self, state: Counters) -> bytes:
        return state.dump()

    def load(self, data: bytes) -> Counters:
        if len(data) > 8 + 4 * 3:  # longer than 3 counters (shorter: ``decode`` raises)
            raise ValueError(f"{self.name}: trailing bytes in state")
        return Counters.decode(data, 3)

    def observe(self, state: Counters, feats: RequestFeatures, now: float) -> DetectorScore:
        state.advance(now)
        c = state.c
        c[N] += 1
        if feats.cot:  # adding a False is adding 0.0 (the counters are never -0.0): skipped
            c[COT] += 1
        if feats.rubric:
            c[RUBRIC] += 1
        return self.score(state, now)

    def observe_response(self, state: Counters, resp: ResponseFeatures, now: float) -> None:
        return None

    def score(self, state: Counters, now: float) -> DetectorScore:
        c = state.c.tolist()
        if not (c[COT] or c[RUBRIC]) and self._quiet_is_zero:
            return self._quiet  # ramp(0, lo >= 0, hi) is 0 for both terms of ``_score``: 0.0, no reasons
        return self._score(c)

    def _score(self, c: list[float]) -> DetectorScore:
        n, cot, rubric = c
        e_cot = ramp(shrunk_share(cot, n, 10.0), *self.cot_share)
        e_rubric = ramp(shrunk_share(rubric, n, 10.0), *self.rubric_share)
        reasons: list[str] = []
        if e_cot > 0:
            reasons.append(f"{cot:.0f} of the last {n:.0f} prompts demand full step-by-step reasoning")
        if e_rubric > 0:
            reasons.append(f"{rubric:.0f} of the last {n:.0f} prompts ask to grade answers against a rubric")
        return DetectorScore(self.name, max(e_cot, e_rubric), tuple(reasons))
