"""Hashed vs MiniLM embedder on TEST traffic: what the semantic detector buys, side by side in one run.

    PYTHONPATH=. .venv/bin/python scripts/eval/semantic_eval.py [--seed 11] [--bank 1500] [--benign 200] \
        [--per-kind 10] [--kinds topic_sweep,dataset_replay,template] [--json out.json]

Both runs replay the same TEST population (prompts, topics and phrasings the fits never saw) through the
shipped engine (``detectors/data/combiner.json``, untouched); the minilm run adds the ``semantic`` detector
with its TRAIN-fitted reference and weight (``detectors/data/semantic.json``) and feeds each client's MiniLM
vectors one request late, as the gateway's background encoder does. The bank is a seeded sample of the TEST
prompts (``--bank``) so the encoding stays at a few thousand texts (cached in var/minilm-cache.npz).
``flagged`` = reached the throttle tier; queries to detection = 1-based index of the first flagged request.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from detectors.combiner import CombinerParams, default_combiner_path
from detectors.engine import Engine
from detectors.replay import replay
from detectors.traffic.population import Population, build
from gateway.config import DetectionConfig
from gateway.embedding import load_semantic_reference, semantic_settings
from scripts.eval.evaluate import DEFAULT_BUDGET, _q
from scripts.eval.semantic_common import DEFAULT_CACHE, VectorCache, load_one_thread, record_texts, sub_bank

KINDS = ("topic_sweep", "dataset_replay", "template")


def table(out: dict[str, Any], pop: Population, kinds: tuple[str, ...]) -> dict[str, Any]:
    res = {c["client"]: c for c in out["clients"]}
    benign = [c for c in res if not pop.attacker[c]]
    flagged_b = [c for c in benign if res[c]["flagged"]]
    bmax = np.array([res[c]["max_score"] for c in benign])
    thr = float(np.percentile(bmax, 99.5))
    row: dict[str, Any] = {"benign": len(benign), "benign_flagged": len(flagged_b),
                           "fpr": len(flagged_b) / max(len(benign), 1), "benign_max_p99_5": thr, "kinds": {}}
    for kind in kinds:
        cs = [c for c in res if pop.attacker[c] and pop.kind[c] == kind]
        q = [res[c]["first_flag_index"] for c in cs if res[c]["flagged"]]
        row["kinds"][kind] = {
            "n": len(cs), "tpr": len(q) / max(len(cs), 1),
            "tpr_budget": sum(1 for x in q if x <= DEFAULT_BUDGET) / max(len(cs), 1),
            "median": _q(q, 50), "p90": _q(q, 90),
            "tpr_at_fpr": sum(1 for c in cs if res[c]["max_score"] > thr) / max(len(cs), 1),
        }
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--bank", type=int, default=1500, help="TEST prompts sampled (bounds the encoding bill)")
    ap.add_argument("--benign", type=int, default=200)
    ap.add_argument("--per-kind", type=int, default=10)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--split", default="test", choices=["train", "test"])
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--kinds", default=",".join(KINDS), help="attack kinds (comma-separated)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.perf_counter()
    kinds = tuple(k for k in args.kinds.split(",") if k)
    bank = sub_bank(args.split, args.bank, args.seed)
    pop = build(bank, args.seed, args.benign, args.per_kind, n_attack=args.requests, kinds=kinds, shares=(),
                hydra_ks=())
    vecs = VectorCache(args.cache).encode(record_texts(pop.records), load_one_thread)
    params = CombinerParams.from_json(default_combiner_path().read_text(encoding="utf-8"))
    ref = load_semantic_reference()
    hashed = replay(pop.records, Engine.from_params(params))
    sem = semantic_settings(DetectionConfig(embedder="minilm"), ref)
    minilm = replay(pop.records, Engine.from_params(params, detectors={"semantic": sem}), neural=list(vecs))
    rows = {"hashed": table(hashed, pop, kinds), "minilm": table(minilm, pop, kinds)}

    print(f"\n## Hashed vs MiniLM ({args.split} split, seed {args.seed}, {len(bank.prompts)}-prompt bank, "
          f"semantic weight {sem.weight})\n")
    print("| embedder | benign clients | benign flagged | FPR | " + " | ".join(
        f"{k} TPR (≤ {DEFAULT_BUDGET}) | {k} median / p90 queries | {k} TPR @ 0.5 % FPR" for k in kinds) + " |")
    print("|---|---|---|---|" + "---|---|---|" * len(kinds))
    for name, r in rows.items():
        cells = []
        for k in kinds:
            x = r["kinds"][k]
            cells += [f"{x['tpr_budget']:.0%} ({x['n']})", f"{x['median']} / {x['p90']}", f"{x['tpr_at_fpr']:.0%}"]
        print(f"| {name} | {r['benign']} | {r['benign_flagged']} | {r['fpr']:.2%} | " + " | ".join(cells) + " |")
    elapsed = time.perf_counter() - t0
    print(f"\n{len(pop.records)} requests, {len(set(record_texts(pop.records)))} distinct prompts, {elapsed:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"cache": str(args.cache), "json": str(args.json)},
                                         "weight": sem.weight, **rows}, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
