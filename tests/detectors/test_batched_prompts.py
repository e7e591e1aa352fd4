"""Batched completions (``prompt: [...]``): the request is scored by one of its prompts drawn at random, so a
harvester cannot hide its template fills behind a harmless first prompt; the draw is uniform and replays are
reproducible."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter
from typing import Any

from detectors.engine import Engine
from detectors.features import prompt_of, seeded_draws
from detectors.replay import replay
from tests.detectors.conftest import COMPLETIONS

TEMPLATE = ("Write a detailed, vivid short story of about 500 words about a {a} who lives in {c} and learns to "
            "{v}. Include dialogue.")
ANIMALS = ["cat", "dog", "owl", "fox", "bear", "wolf", "lion", "frog", "hawk", "deer", "mole", "seal"]
CITIES = ["Paris", "Lima", "Oslo", "Rome", "Cairo", "Delhi", "Tokyo", "Quito", "Accra", "Hanoi"]
VERBS = ["sing", "cook", "swim", "paint", "fly", "dance", "read", "code", "sail", "skate"]


def _trace(client: str, first: str | None, n: int = 200, k: int = 8) -> list[dict[str, Any]]:
    rng = random.Random(client)
    ts, out = 1_767_258_000.0, []
    for _ in range(n):
        ts += rng.uniform(2, 6)
        fills = [TEMPLATE.format(a=rng.choice(ANIMALS), c=rng.choice(CITIES), v=rng.choice(VERBS)) for _ in range(k)]
        prompt: Any = [first, *fills] if first is not None else fills[0]
        out.append({"ts": ts, "client": client, "endpoint": COMPLETIONS,
                    "body": {"model": "m", "prompt": prompt, "max_tokens": 600}})
    return out


def test_a_harmless_first_prompt_does_not_hide_a_batch_of_template_fills(engine: Engine) -> None:
    trace = _trace("single", None) + _trace("batched", "What is the capital of France?")
    result = {c["client"]: c for c in replay(trace, engine)["clients"]}
    for name in ("single", "batched"):
        c = result[name]
        assert c["flagged"] and c["first_flag_index"] <= 30, c
        assert any("template" in r for r in c["reasons"]), c["reasons"]


def test_the_scored_prompt_is_drawn_uniformly_and_replays_are_reproducible(engine: Engine) -> None:
    body = {"prompt": [f"prompt number {w}" for w in ("zero", "one", "two", "three")]}
    with seeded_draws(3):
        counts = Counter(prompt_of(COMPLETIONS, body)[0] for _ in range(4000))
    assert set(counts) == set(body["prompt"]) and min(counts.values()) > 850, counts  # 1000 each expected
    assert prompt_of(COMPLETIONS, {"prompt": ["only"]}) == ("only", 1)
    assert prompt_of(COMPLETIONS, {"prompt": [[1, 2], [3]]}) == ("", 1)  # token ids: unreadable
    assert prompt_of(COMPLETIONS, {"prompt": []}) == ("", 1)

    trace = _trace("batched", "What is the capital of France?", n=60)
    first, second = replay(trace, engine), replay(trace, engine)
    assert first == second


def test_the_draw_differs_between_processes() -> None:
    # Seeded from the OS per process, never a constant a client could replay against.
    code = ("from detectors.features import prompt_of; b = {'prompt': [str(i) for i in range(1000)]}; "
            "print([prompt_of('/v1/completions', b)[0] for _ in range(20)])")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(2)}
    assert len(runs) == 2, runs
