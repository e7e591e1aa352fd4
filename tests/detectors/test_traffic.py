"""The traffic generator is pure and seeded; the TRAIN/TEST split is disjoint; labels say what was sent."""

from __future__ import annotations

import itertools
import random

from detectors.traffic.corpus import TEMPLATES, in_split, parse_prompts, split_phrases
from detectors.traffic.generator import ATTACK_KINDS, EPOCH, Bank, attacker_client, benign_client, hydra


def _bank(lines: list[str]) -> Bank:
    return Bank(parse_prompts(lines[:4000], "test"), "test")


def test_same_seed_same_trace(corpus_lines: list[str]) -> None:
    bank = _bank(corpus_lines)
    def trace() -> list[dict[str, object]]:
        return benign_client(random.Random(3), bank, "u", EPOCH) + attacker_client(
            random.Random(4), bank, "a", "cot", 50, EPOCH)

    assert trace() == trace()


def test_split_is_disjoint_and_red_team_excluded(corpus_lines: list[str]) -> None:
    train = {p.id for p in parse_prompts(corpus_lines, "train")}
    test = {p.id for p in parse_prompts(corpus_lines, "test")}
    assert train and test and not train & test
    assert not any(i.startswith("hh-rlhf") for i in train | test)
    assert not set(split_phrases(TEMPLATES, "train")) & set(split_phrases(TEMPLATES, "test"))
    assert in_split("x", "all")


def test_every_attack_kind_and_labels(corpus_lines: list[str]) -> None:
    bank = _bank(corpus_lines)
    rng = random.Random(8)
    for kind in ATTACK_KINDS:
        recs = attacker_client(rng, bank, "a", kind, 40, EPOCH)
        assert len(recs) == 40 and all(r["label"]["attacker"] and r["label"]["kind"] == kind for r in recs)
        assert all(r["ts"] >= EPOCH for r in recs) and [r["ts"] for r in recs] == sorted(r["ts"] for r in recs)
    mixed = attacker_client(rng, bank, "m", "template", 400, EPOCH, share=0.25)
    share = sum(r["label"]["attack"] for r in mixed) / len(mixed)
    assert 0.18 < share < 0.32 and mixed[0]["label"]["kind"] == "mixed_template"
    members = hydra(rng, bank, "h", 5, 30, EPOCH, kind="template")
    assert len(members) == 5 and all(m[0]["label"]["cluster"] == "h" for m in members)


def test_benign_persona_is_human_paced(corpus_lines: list[str]) -> None:
    bank = _bank(corpus_lines)
    rng = random.Random(1)
    hours = []
    for i in range(30):
        recs = benign_client(rng, bank, f"u{i}", EPOCH, n=40)
        if recs[0]["label"]["kind"] == "benign":
            gaps = [b["ts"] - a["ts"] for a, b in itertools.pairwise(recs)]
            assert min(gaps) >= 3.0
            hours += [int(r["ts"] % 86400 // 3600) for r in recs]
    assert hours and len(set(hours)) > 12  # time zones differ, but nobody is flat around the clock alone
