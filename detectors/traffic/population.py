"""Seeded populations of benign and attacking clients, and a replay that keeps every verdict (pure).

Used by the evaluation and fitting scripts (``scripts/eval/``) and the sanity test; the caller supplies the
prompt ``Bank`` (it reads the corpus) and a seed, so a population is reproducible on any machine.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from detectors.engine import Engine
from detectors.replay import replay
from detectors.traffic.generator import EPOCH, Bank, Record, attacker_client, benign_client, hydra
from detectors.types import Verdict


@dataclass
class Population:
    records: list[Record] = field(default_factory=list)
    kind: dict[str, str] = field(default_factory=dict)  # client -> label kind
    attacker: dict[str, bool] = field(default_factory=dict)
    share: dict[str, float] = field(default_factory=dict)
    cluster: dict[str, str | None] = field(default_factory=dict)

    def add(self, recs: Sequence[Record], share: float = 1.0) -> None:
        if not recs:
            return
        lab = recs[0]["label"]
        c = recs[0]["client"]
        self.records.extend(recs)
        self.kind[c], self.attacker[c], self.cluster[c] = lab["kind"], lab["attacker"], lab["cluster"]
        self.share[c] = share


def build(
    bank: Bank, seed: int, benign: int, attackers_per_kind: int, n_attack: int = 400, n_probe: int = 100,
    shares: Sequence[float] = (), hydra_ks: Sequence[int] = (), hydra_each: int = 60,
    kinds: Sequence[str] = ("logit_probe", "template", "self_instruct", "topic_sweep", "cot", "slow_low",
                            "dataset_replay"),
    hydra_kinds: Sequence[str] = ("template", "self_instruct", "topic_sweep", "cot"),
) -> Population:
    rng = random.Random(seed)
    pop = Population()
    start = EPOCH
    for i in range(benign):
        pop.add(benign_client(rng, bank, f"benign-{i}", start + rng.uniform(0, 86400)))
    for kind in kinds:
        for i in range(attackers_per_kind):
            n = n_probe if kind == "logit_probe" else n_attack
            pop.add(attacker_client(rng, bank, f"{kind}-{i}", kind, n, start + rng.uniform(0, 86400)))
    for share in shares:
        for i in range(attackers_per_kind):
            kind = rng.choice(("template", "self_instruct", "topic_sweep", "cot"))
            cid = f"mixed{int(share * 100)}-{kind}-{i}"
            pop.add(attacker_client(rng, bank, cid, kind, n_attack, start + rng.uniform(0, 86400), share), share)
    for j, k in enumerate(hydra_ks):
        kind = hydra_kinds[j % len(hydra_kinds)]
        for members in hydra(rng, bank, f"hydra{k}-{kind}-{rng.randrange(10**6)}", k, hydra_each, start, kind=kind):
            pop.add(members, 0.5)
    return pop


def run(pop: Population, engine: Engine, class_weights: Mapping[str, Mapping[str, float]] | None = None,
        ) -> tuple[dict[str, Any], dict[str, list[Verdict]]]:
    """Replay the population; return the replay output and every client's verdict sequence. ``class_weights``:
    detection profiles for records that carry a ``limit_class`` (``detectors.replay.replay``)."""
    seq: dict[str, list[Verdict]] = {}

    def hook(client: str, index: int, v: Verdict, rec: Any) -> None:
        seq.setdefault(client, []).append(v)

    out = replay(pop.records, engine, on_verdict=hook, class_weights=class_weights)
    return out, seq
