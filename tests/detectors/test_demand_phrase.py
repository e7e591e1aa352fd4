"""Table-driven tests: a chain-of-thought demand phrase is the reasoning detector's evidence, not a template.

An honest user who appends "Let's think step by step." to a share of unrelated questions used to fill a
"template" whose only fixed part is that phrase; with the reasoning detector counting the same demand, the
combination flagged such users (all five benign clients flagged on TEST). A CoT prompt whose cluster shares
only a phrase (skeleton under ``MIN_SKELETON`` tokens) now adds ``DEMAND_PHRASE_WEIGHT`` of a fill. Each row
runs the templates detector twice, with the shipped weight and with the old full count (1.0), so every row
shows what the change does and would fail if the weighting were undone or applied to the wrong prompts.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from detectors.combiner import CombinerParams
from detectors.engine import Engine
from detectors.templates import DEMAND_PHRASE_WEIGHT, Templates
from detectors.traffic.corpus import parse_prompts
from tests.detectors.conftest import chat, feats, human_times

T0 = 1_767_258_000.0
Body = dict[str, Any]
PHRASES = ("\nLet's think step by step.", " Explain step by step.", " Show your work.")
LONG_SUFFIX = "\n\nThink step by step and show all of your reasoning before giving the final answer."
_TEXTS: list[str] = []


def _texts(r: random.Random, n: int) -> list[str]:
    return r.sample(_TEXTS, n)


def persona(share: float, n: int = 160) -> Callable[[random.Random], list[Body]]:
    """A person who asks for steps on ``share`` of their (real, unrelated) questions, in three phrasings."""
    def make(r: random.Random) -> list[Body]:
        return [chat(t + r.choice(PHRASES)) if r.random() < share else chat(t) for t in _texts(r, n)]
    return make


def harvester(suffix: str, share: float = 1.0, n: int = 160) -> Callable[[random.Random], list[Body]]:
    """One fixed CoT demand on (nearly) every question: the chain-of-thought harvesting shape."""
    def make(r: random.Random) -> list[Body]:
        return [chat(t + suffix) if r.random() < share else chat(t) for t in _texts(r, n)]
    return make


def cot_template(r: random.Random) -> list[Body]:
    """A real template (long fixed text, a slot) that also demands reasoning: counts as a template in full."""
    topics = ["photosynthesis", "the Cold War", "black holes", "jazz", "tax law", "coral reefs", "CRISPR",
              "compilers", "glaciers", "the Renaissance", "game theory", "vaccines"]
    return [chat(f"Write a detailed exam question about {r.choice(topics)} for {r.choice(['kids', 'experts'])}"
                 f" with {r.randint(3, 9)} parts, then solve it. Show your full reasoning step by step.")
            for _ in range(60)]


@dataclass(frozen=True)
class Row:
    id: str
    bodies: Callable[[random.Random], Sequence[Body]]
    shipped: tuple[float, float]  # band of the templates score with the shipped weight
    full_count_min: float  # the score with the old full count is at least this (what the row guards against)


ROWS = [
    # Honest users: quiet now, template-like before (the TEST false positives had shares 0.4-0.6).
    Row("persona-half-steps", persona(0.5), (0.0, 0.2), 0.5),
    Row("persona-60pc-steps", persona(0.6), (0.0, 0.2), 0.6),
    # Harvesters appending one phrase to every prompt keep strong template evidence ...
    Row("harvester-short-phrase", harvester("\nLet's think step by step."), (0.5, 1.0), 0.95),
    Row("harvester-long-suffix", harvester(LONG_SUFFIX), (0.6, 1.0), 0.95),
    Row("harvester-90pc", harvester(LONG_SUFFIX, 0.9), (0.5, 1.0), 0.95),
    # ... and a real template that happens to demand reasoning is untouched (skeleton >= MIN_SKELETON).
    Row("template-with-cot", cot_template, (0.9, 1.0), 0.9),
]


def _score(bodies: Sequence[Body], params: CombinerParams, weight: float) -> float:
    det = Templates(params.reference, demand_phrase_weight=weight)
    st = det.new_state()
    ts = T0
    for body, ts in zip(bodies, human_times(len(bodies)), strict=True):
        det.observe(st, feats(body, ts), ts)
    return det.score(st, ts).score


@pytest.fixture(scope="module", autouse=True)
def _fill_texts(corpus_lines: list[str]) -> None:
    if not _TEXTS:
        # Short questions (under 16 tokens the head/tail keys are 3 tokens, so "... by step." is the whole
        # tail key): where a shared phrase is most of the prompt and the old full count hurt most.
        _TEXTS.extend(p.turns[0] for p in parse_prompts(corpus_lines, "test") if 20 < len(p.turns[0]) < 90)


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_demand_phrase_row(row: Row, params: CombinerParams) -> None:
    bodies = row.bodies(random.Random(row.id))
    shipped = _score(bodies, params, DEMAND_PHRASE_WEIGHT)
    full = _score(bodies, params, 1.0)
    lo, hi = row.shipped
    assert lo <= shipped <= hi, (shipped, full)
    assert full >= row.full_count_min, (shipped, full)
    assert shipped <= full + 1e-9  # the weighting only ever removes evidence


def test_weight_is_validated() -> None:
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="demand_phrase_weight"):
            Templates(demand_phrase_weight=bad)


def test_step_by_step_persona_is_not_flagged_but_the_harvester_is(params: CombinerParams) -> None:
    """End to end through the shipped combiner: the same real questions at human pace, once from a person
    asking for steps on half of them, once from a harvester demanding full reasoning on all of them."""
    r = random.Random("e2e")
    honest = persona(0.5, 200)(r)
    harvest = harvester(LONG_SUFFIX, 1.0, 200)(random.Random("e2e"))
    throttle = params.tiers.enter[1]
    results = {}
    for label, bodies in (("honest", honest), ("harvest", harvest)):
        eng = Engine.from_params(params)
        state: bytes | None = None
        best = 0.0
        for body, ts in zip(bodies, human_times(len(bodies)), strict=True):
            obs = eng.observe(state, feats(body, ts), ts)
            state = obs.state
            best = max(best, obs.verdict.score)
        results[label] = best
    assert results["honest"] < 0.5 < throttle <= results["harvest"], results
