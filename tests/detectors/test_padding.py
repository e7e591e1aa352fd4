"""Review session 16 (padding): a template harvester that wraps every fill in fresh random padding, replayed
through the shipped engine. Sent plainly it is flagged at request 5; before the anchors
(``detectors/anchors.py``) 40 words of padding before and 20 after kept it unflagged (combined score
0.11-0.28), whatever the padding (word salad or other people's questions) and however long. See
/work/team/docs/review-session16-padding.md."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import pytest

from detectors.combiner import CombinerParams
from detectors.engine import DetectorSettings, Engine
from detectors.replay import replay
from tests.detectors.conftest import CHAT
from tests.detectors.test_review_session14b import _fill

Pad = Callable[[random.Random, int], str]


@pytest.fixture(scope="module")
def benign_prompts(corpus_lines: list[str]) -> list[str]:
    rows = [json.loads(x) for x in corpus_lines if x.strip()]
    return [r["turns"][0] for r in rows if r["category"] != "harmless-redteam" and r["turns"]]


def word_salad(prompts: list[str]) -> Pad:
    vocab = sorted({w.strip(".,;:?!()\"'").lower() for p in prompts[:2000] for w in p.split()} - {""})
    return lambda rng, n: " ".join(rng.choice(vocab) for _ in range(n))


def sentences(prompts: list[str]) -> Pad:
    def pad(rng: random.Random, n: int) -> str:
        out: list[str] = []
        while sum(len(s.split()) for s in out) < n:
            out.append(rng.choice(prompts))
        return " ".join(out)
    return pad


def _padded_harvester(client: str, pad: Pad, before: int, after: int, n: int = 60) -> list[dict[str, Any]]:
    rng = random.Random(client)
    ts, out = 1_767_258_000.0, []
    for _ in range(n):
        ts += rng.uniform(2, 6)
        text = f"{pad(rng, before)}\n\n{_fill(rng)}\n\n{pad(rng, after)}"
        out.append({"ts": ts, "client": client, "endpoint": CHAT,
                    "body": {"model": "m", "messages": [{"role": "user", "content": text}], "max_tokens": 600}})
    return out


# (padding, words before the fill, words after it); before: none flagged within 60 requests
PADDINGS = [
    (word_salad, 40, 20),
    (word_salad, 200, 70),  # the documented case: past the 192 + 64 tokens the prompt sketches read
    (word_salad, 500, 400),  # a long prompt, anchors read all of it (up to 1 024 tokens)
    (sentences, 40, 20),  # other people's questions as padding: their common phrases recur too
    (sentences, 200, 70),
]


@pytest.mark.parametrize(("make", "before", "after"), PADDINGS,
                         ids=[f"{m.__name__}-{b}+{a}" for m, b, a in PADDINGS])
def test_a_fill_in_fresh_random_padding_is_flagged(
    engine: Engine, benign_prompts: list[str], make: Callable[[list[str]], Pad], before: int, after: int,
) -> None:
    trace = _padded_harvester(f"{make.__name__}-{before}-{after}", make(benign_prompts), before, after)
    (c,) = replay(trace, engine)["clients"]
    assert c["flagged"] and c["first_flag_index"] <= 15, c
    assert any("template" in r for r in c["reasons"]), c


def test_benign_long_prompts_are_not_flagged(engine: Engine, benign_prompts: list[str]) -> None:
    # people whose prompts are long (code, pasted text): their common phrases must not read as a template
    long = [p for p in benign_prompts if 400 <= len(p) <= 6000]
    rng = random.Random(8)
    trace: list[dict[str, Any]] = []
    for k in range(12):
        ts = 1_767_258_000.0 + k
        for text in rng.sample(long, 40):
            ts += rng.choice((31.0, 140.0, 75.0, 400.0, 260.0, 58.0, 1900.0))
            trace.append({"ts": ts, "client": f"benign-{k}", "endpoint": CHAT,
                          "body": {"model": "m", "messages": [{"role": "user", "content": text}]}})
    trace.sort(key=lambda r: r["ts"])
    for c in replay(trace, engine)["clients"]:
        assert c["tier"] == 0, c


INSTRUCTION = "Use only the sources below, cite each claim as [n], and say so plainly when they do not answer it."


def _retrieval_app(client: str, questions: list[str], passages: list[str]) -> list[dict[str, Any]]:
    """An application that writes one fixed instruction into every user turn, between the user's question and
    two passages retrieved for it (all fresh but the instruction)."""
    rng = random.Random(client)
    ts, out = 1_767_258_000.0, []
    for q in rng.sample(questions, 40):
        ts += rng.choice((31.0, 140.0, 75.0, 400.0, 260.0, 58.0))
        text = f"{q}\n\n{INSTRUCTION}\n\n[1] {rng.choice(passages)[:600]}\n\n[2] {rng.choice(passages)[:600]}"
        out.append({"ts": ts, "client": client, "endpoint": CHAT,
                    "body": {"model": "m", "messages": [{"role": "user", "content": text}]}})
    return out


@pytest.mark.parametrize(("needle_min", "harvester_flagged", "app_flagged"), [
    (None, True, True),  # shipped: a fixed passage anywhere in the turn is a template, as one at its start is
    (0, False, False),  # the anchors off (templates param ``needle_min: 0``): the build before them
])
def test_the_anchors_switch_reads_fixed_passages_in_the_middle_or_not(
    params: CombinerParams, benign_prompts: list[str], needle_min: int | None, harvester_flagged: bool,
    app_flagged: bool,
) -> None:
    settings = {} if needle_min is None else {"templates": DetectorSettings(params={"needle_min": needle_min})}
    engine = Engine.from_params(params, detectors=settings)
    harvester = _padded_harvester("switch", sentences(benign_prompts), 200, 70)
    short = [p for p in benign_prompts if len(p) < 200]
    app = _retrieval_app("app", short, [p for p in benign_prompts if len(p) >= 300])
    (h,) = replay(harvester, engine)["clients"]
    (a,) = replay(app, engine)["clients"]
    assert (h["flagged"], a["flagged"]) == (harvester_flagged, app_flagged), (h, a)


@pytest.mark.parametrize("make", [word_salad, sentences])
def test_accounts_of_one_padded_campaign_are_linked(
    engine: Engine, benign_prompts: list[str], make: Callable[[list[str]], Pad],
) -> None:
    # the needle clusters' skeletons (the template's recurring anchors) are the same in every account
    pad = make(benign_prompts)
    trace = [r for k in range(5) for r in _padded_harvester(f"acct{k}", pad, 200, 70, n=40)]
    rng = random.Random(3)
    long = [p for p in benign_prompts if len(p) > 400]
    for b in range(5):
        ts = 1_767_258_000.0
        for text in rng.sample(long, 30):
            ts += rng.uniform(30, 300)
            trace.append({"ts": ts, "client": f"benign{b}", "endpoint": CHAT,
                          "body": {"model": "m", "messages": [{"role": "user", "content": text}]}})
    trace.sort(key=lambda r: r["ts"])
    assert replay(trace, engine)["clusters"] == [[f"acct{k}" for k in range(5)]]
