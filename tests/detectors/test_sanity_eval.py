"""A small-scale end-to-end evaluation on held-out (TEST split) prompts: fails if detection breaks.

Far smaller than ``scripts/eval/evaluate.py`` (seconds, not minutes), with loose bounds: every attacker
kind that the shipped combiner is meant to catch is caught, no benign persona is flagged, and a hydra
campaign is linked without pulling a benign account into it.
"""

from __future__ import annotations

import random

from detectors.engine import Engine
from detectors.replay import replay
from detectors.traffic.corpus import parse_prompts
from detectors.traffic.generator import EPOCH, Bank, Record, attacker_client, benign_client, hydra


def test_small_population(engine: Engine, corpus_lines: list[str]) -> None:
    bank = Bank(parse_prompts(corpus_lines, "test"), "test")
    rng = random.Random(2024)
    records: list[Record] = []
    for i in range(40):
        records += benign_client(rng, bank, f"benign-{i}", EPOCH + rng.uniform(0, 86400))
    kinds = ("logit_probe", "template", "self_instruct", "topic_sweep", "cot")
    for kind in kinds:
        for i in range(2):
            n = 60 if kind == "logit_probe" else 200
            records += attacker_client(rng, bank, f"{kind}-{i}", kind, n, EPOCH + rng.uniform(0, 86400))
    for recs in hydra(rng, bank, "hydra", 5, 60, EPOCH, kind="template"):
        records += recs
    out = replay(records, engine)
    res = {c["client"]: c for c in out["clients"]}
    benign_flagged = [c for c in res if c.startswith("benign-") and res[c]["flagged"]]
    assert benign_flagged == []
    for kind in kinds:
        for i in range(2):
            c = res[f"{kind}-{i}"]
            budget = 30 if kind == "logit_probe" else 200
            assert c["flagged"] and c["first_flag_index"] <= budget, (kind, c)
            assert c["reasons"], c
    campaign = {f"hydra-{i}" for i in range(5)}
    best: set[str] = max((set(g) & campaign for g in out["clusters"]), key=len, default=set())
    assert len(best) >= 4, out["clusters"]
    for g in out["clusters"]:
        assert not any(c.startswith("benign-") for c in g), g
