"""Table-driven detector tests: a request sequence in, the expected score band and reasons out.

Each row drives one detector directly (its own state, no combiner), so a failing row names the detector
whose evidence broke. Benign controls use real prompts and human timing and must stay quiet.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from detectors.base import AnyDetector
from detectors.combiner import CombinerParams
from detectors.registry import REGISTRY
from detectors.traffic.corpus import parse_prompts
from detectors.types import DetectorScore, ResponseFeatures
from tests.detectors.conftest import chat, feats, human_times

T0 = 1_767_258_000.0
Body = dict[str, Any]


@dataclass(frozen=True)
class Row:
    id: str
    detector: str
    bodies: Callable[[random.Random], Sequence[Body]]
    times: Callable[[int], Sequence[float]]
    min_score: float
    max_score: float
    reasons: tuple[str, ...] = ()  # substrings that must appear in some reason
    response: ResponseFeatures | None = None


def regular(gap: float) -> Callable[[int], list[float]]:
    return lambda n: [T0 + i * gap for i in range(n)]


def human(n: int) -> list[float]:
    return list(human_times(n))


def carlini(r: random.Random) -> list[Body]:
    q = "The quick brown fox jumps over the lazy dog and keeps running through the forest."
    return [chat(q, logit_bias={str(t): 100 for t in r.sample(range(100, 100_000), 20)}, logprobs=True,
                 top_logprobs=20, max_tokens=1) for _ in range(30)]


def argmax(r: random.Random) -> list[Body]:
    q = "Tell me a short story about a lighthouse keeper who finds a message in a bottle."
    return [{"model": "m", "prompt": q, "logit_bias": {str(r.randrange(100, 99_999)): r.uniform(-30, 30)},
             "max_tokens": 1} for _ in range(30)]


def token_ids_read(r: random.Random) -> list[Body]:
    """vLLM's ``logprob_token_ids``: the logprobs of 128 chosen ids per request, no bias at all — the full
    vocabulary's logprobs at one position in |V| / 128 requests."""
    q = "The quick brown fox jumps over the lazy dog and keeps running through the forest."
    return [chat(q, logprobs=True, logprob_token_ids=list(range(i * 128, (i + 1) * 128)), max_tokens=1)
            for i in range(30)]


def allowed_pairs(r: random.Random) -> list[Body]:
    """``allowed_token_ids`` restricting the answer to two tokens: the argmax says which has the larger logit
    (pairwise ranking; with a bias on one of them, their difference)."""
    q = "Tell me a short story about a lighthouse keeper who finds a message in a bottle."
    return [{"model": "m", "prompt": q, "allowed_token_ids": r.sample(range(100, 99_999), 2), "max_tokens": 1}
            for _ in range(30)]


def label_scoring(r: random.Random) -> list[Body]:
    """A classifier reading the logprobs of its fixed label tokens on ordinary prompts: the documented use."""
    return [chat(t, logprobs=True, logprob_token_ids=[9642, 2822], max_tokens=5) for t in _benign_texts(r, 60)]


def echo(r: random.Random) -> list[Body]:
    return [{"model": "m", "prompt": f"sample text number {r.random()} about {w}", "echo": True, "logprobs": 5,
             "max_tokens": 0} for w in ("rivers", "cats", "stars", "maps", "bread", "coins") * 5]


def ban_list(r: random.Random) -> list[Body]:
    ban = {"1234": -100, "5678": -100}
    return [chat(t, logit_bias=ban, logprobs=True, top_logprobs=3) for t in _benign_texts(r, 40)]


def template(r: random.Random) -> list[Body]:
    topics = ["photosynthesis", "the Cold War", "black holes", "jazz", "tax law", "coral reefs", "CRISPR",
              "compilers", "glaciers", "the Renaissance", "game theory", "vaccines"]
    return [chat(f"Write a detailed article about {r.choice(topics)} for {r.choice(['kids', 'experts'])}, "
                 f"with {r.randint(3, 9)} sections and a summary at the end.") for _ in range(60)]


def meta(r: random.Random) -> list[Body]:
    return [chat(f"You are asked to come up with a set of {r.choice([10, 20])} diverse task instructions. "
                 f"Example: {t}") for t in _benign_texts(r, 30)]


def cot(r: random.Random) -> list[Body]:
    return [chat(t + "\n\nShow your full reasoning step by step before giving the final answer.")
            for t in _benign_texts(r, 40)]


def rubric(r: random.Random) -> list[Body]:
    return [chat(f"Grade the following answer on a scale of 1 to 10 using this rubric: accuracy, clarity.\n"
                 f"Answer: {t}") for t in _benign_texts(r, 40)]


def numbers_only(r: random.Random) -> list[Body]:
    return [chat(f"Compute {r.randint(1, 999)} plus {r.randint(1, 999)} times {r.randint(1, 99)} please")
            for _ in range(60)]


def bulk_n(r: random.Random) -> list[Body]:
    return [chat(t, n=4, max_tokens=512, temperature=r.choice([0.1, 0.5, 0.9, 1.3]), top_p=r.random())
            for t in _benign_texts(r, 200)]


_TEXTS: list[str] = []
_CODE: list[str] = []


def _benign_texts(r: random.Random, n: int) -> list[str]:
    return r.sample(_TEXTS, n)


def benign(r: random.Random) -> list[Body]:
    return [chat(t) for t in _benign_texts(r, 60)]


def mixed_template(r: random.Random) -> list[Body]:
    """A template campaign hidden in a person's stream: a quarter of 300 prompts, the rest ordinary."""
    fills = iter(template(r) * 2)
    texts = iter(_benign_texts(r, 300))
    return [next(fills) if r.random() < 0.25 else chat(next(texts)) for _ in range(300)]


def slow(n: int) -> list[float]:
    """Human gaps at a tenth of the pace: about 34 requests a day, so 300 requests span nine days."""
    ts = list(human_times(n))
    return [T0 + 10.0 * (t - T0) for t in ts]


def focused(r: random.Random) -> list[Body]:
    """A person with one interest (here: code questions); a uniform draw over every topic is a sweep."""
    return [chat(t) for t in r.sample(_CODE, 60)]


ROWS = [
    Row("probe-carlini", "logit_probing", carlini, regular(2.0), 0.95, 1.0,
        ("distinct tokens, 20 logprobs read per position", "changing logit_bias or token-id list with logprobs",
         "max_tokens <= 2")),
    Row("probe-argmax", "logit_probing", argmax, regular(1.0), 0.9, 1.0,
        ("same prompt repeated", "max_tokens <= 2")),
    Row("probe-token-ids", "logit_probing", token_ids_read, regular(1.0), 0.9, 1.0,
        ("token-id targeting on", "128 logprobs read per position", "max_tokens <= 2")),
    Row("probe-allowed-pairs", "logit_probing", allowed_pairs, regular(1.0), 0.9, 1.0,
        ("same prompt repeated", "max_tokens <= 2")),
    Row("probe-benign-labels", "logit_probing", label_scoring, human, 0.0, 0.05),
    Row("probe-echo", "logit_probing", echo, regular(1.0), 0.9, 1.0, ("echo with logprobs",)),
    Row("probe-benign-banlist", "logit_probing", ban_list, human, 0.0, 0.05),
    Row("templates-fill", "templates", template, regular(5.0), 0.9, 1.0, ("fill 1 template", "top template share")),
    Row("templates-meta", "templates", meta, regular(5.0), 0.9, 1.0, ("self-instruct meta-prompts",)),
    Row("templates-benign", "templates", benign, human, 0.0, 0.05),
    Row("templates-mixed-slow", "templates", mixed_template, slow, 0.9, 1.0, ("recent prompts fill one template",)),
    Row("templates-benign-slow", "templates", lambda r: [chat(t) for t in _benign_texts(r, 300)], slow, 0.0, 0.05),
    Row("coverage-neardup", "coverage", numbers_only, regular(5.0), 0.9, 1.0, ("near-duplicate",)),
    Row("coverage-benign", "coverage", focused, human, 0.0, 0.2),
    Row("volume-bulk", "volume", bulk_n, regular(0.5), 0.9, 1.0,
        ("requests/min", "n > 1", "sampling parameters changed"),
        ResponseFeatures(prompt_tokens=20, completion_tokens=2048, finish_reasons=("length",) * 4)),
    Row("volume-benign", "volume", benign, human, 0.0, 0.1,
        response=ResponseFeatures(prompt_tokens=40, completion_tokens=200, finish_reasons=("stop",))),
    Row("timing-regular", "timing", benign, regular(10.0), 0.9, 1.0, ("machine-regular",)),
    Row("timing-parallel", "timing", benign, lambda n: [T0 + i * 0.2 for i in range(n)], 0.9, 1.0, ("< 1 s after",)),
    Row("timing-benign", "timing", benign, human, 0.0, 0.1),
    Row("reasoning-cot", "reasoning", cot, human, 0.9, 1.0, ("step-by-step reasoning",)),
    Row("reasoning-rubric", "reasoning", rubric, human, 0.9, 1.0, ("rubric",)),
    Row("reasoning-benign", "reasoning", benign, human, 0.0, 0.05),
]


def _detector(name: str, params: CombinerParams) -> AnyDetector:
    cls = REGISTRY[name]
    det: AnyDetector = cls(reference=params.reference) if getattr(cls, "uses_reference", False) else cls()
    return det


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_row(row: Row, params: CombinerParams, corpus_lines: list[str]) -> None:
    if not _TEXTS:
        prompts = [p for p in parse_prompts(corpus_lines, "test") if len(p.turns[0]) < 600]
        _TEXTS.extend(p.turns[0] for p in prompts[::7])
        _CODE.extend(p.turns[0] for p in prompts if p.category == "code")
    det = _detector(row.detector, params)
    state = det.new_state()
    bodies = row.bodies(random.Random(row.id))
    out: DetectorScore | None = None
    for body, ts in zip(bodies, row.times(len(bodies)), strict=True):
        out = det.observe(state, feats(body, ts), ts)
        if row.response is not None:
            det.observe_response(state, row.response, ts)
    assert out is not None
    final = det.score(state, ts)
    assert row.min_score <= final.score <= row.max_score, (final.score, final.reasons)
    joined = " | ".join(final.reasons)
    for want in row.reasons:
        assert want in joined, f"{want!r} not in {joined!r}"
    if row.max_score < 0.3:
        assert final.reasons == () or final.score < 0.3


def test_linking_links_after_enough_shared_sketches() -> None:
    det = REGISTRY["linking"](link_min=12, min_shared=3)
    st = det.new_state()
    assert det.fold_links(st, {"peer-a": 5}, T0) == ()
    assert det.fold_links(st, {"peer-b": 2}, T0) == ()  # below the per-request match: never adds up
    assert det.fold_links(st, {"peer-a": 8, "peer-b": 2}, T0 + 10) == ("peer-a",)
    assert "peer-b" not in st.peers
    s = det.score(st, T0 + 20)
    assert s.score > 0 and "shares prompt templates with 1 other account" in s.reasons[0]
    # a day and a half later the link has decayed below the threshold
    assert det.score(st, T0 + 1.5 * 86400).score == 0.0


def test_linking_ignores_sketches_shared_with_very_many_accounts() -> None:
    det = REGISTRY["linking"](link_min=12, min_shared=3)
    st = det.new_state()
    crowd = {f"user-{i}": 5 for i in range(200)}  # a phrase hundreds of accounts use
    for k in range(10):
        assert det.fold_links(st, crowd, T0 + k) == ()
    campaign = {f"acct-{i}": 5 for i in range(19)}  # a K=20 campaign
    det.fold_links(st, campaign, T0 + 20)
    det.fold_links(st, campaign, T0 + 21)
    assert len(det.fold_links(st, campaign, T0 + 22)) == 16  # linked to all, state keeps MAX_PEERS


def test_templates_slow_campaign_needs_the_week_long_memory(params: CombinerParams, corpus_lines: list[str]) -> None:
    """Why the template table remembers a week: with a one-day memory and share-only evidence (the earlier
    design) the same slow, mixed campaign as the ``templates-mixed-slow`` row stays below the watch level."""
    test_row(ROWS[0], params, corpus_lines)  # fills the shared prompt lists
    bodies = mixed_template(random.Random("templates-mixed-slow"))
    times = slow(len(bodies))
    scores = {}
    for label, kwargs in (("week", {}), ("day", {"half_life_s": 86400.0, "fills": (1e9, 1e9)})):
        det = REGISTRY["templates"](reference=params.reference, **kwargs)
        state = det.new_state()
        for body, ts in zip(bodies, times, strict=True):
            det.observe(state, feats(body, ts), ts)
        scores[label] = det.score(state, times[-1]).score
    assert scores["week"] >= 0.9 > 0.5 > scores["day"], scores
