"""Evaluate the shipped detectors on TEST traces (prompts, templates and phrasings the fit never saw).

    .venv/bin/python scripts/eval/evaluate.py [--benign 1000] [--per-kind 40] [--seed 11] [--json out.json]

Prints markdown tables: per attack kind (TPR, queries to detection), benign FPR, TPR against attack share,
hydra linking against K. ``flagged`` = reached the throttle tier (the default policy's flag tier).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from detectors.combiner import CombinerParams
from detectors.engine import Engine
from detectors.traffic.population import build, run
from scripts.eval.common import REPO, load_bank

BUDGET = {"logit_probe": 30}
DEFAULT_BUDGET = 300


def _q(xs: list[int], p: float) -> str:
    return f"{np.percentile(xs, p):.0f}" if xs else "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benign", type=int, default=1000)
    ap.add_argument("--per-kind", type=int, default=40)
    ap.add_argument("--hydra-campaigns", type=int, default=5, help="campaigns per K (kinds cycle)")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--split", default="test", choices=["train", "test"])
    ap.add_argument("--combiner", type=Path, default=REPO / "detectors" / "data" / "combiner.json")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--inherit-floor", type=float, help="override the own score a client needs to inherit")
    args = ap.parse_args()
    t0 = time.perf_counter()
    params = CombinerParams.from_json(args.combiner.read_text(encoding="utf-8"))
    engine = Engine.from_params(params)
    if args.inherit_floor is not None:
        engine.inherit_floor = args.inherit_floor
    bank = load_bank(args.split)
    pop = build(bank, args.seed, args.benign, args.per_kind, shares=(0.1, 0.25, 0.5),
                hydra_ks=[k for k in (5, 10, 20) for _ in range(args.hydra_campaigns)],
                hydra_kinds=("template", "self_instruct", "topic_sweep", "cot", "dataset_replay"))
    out, _ = run(pop, engine)
    elapsed = time.perf_counter() - t0
    res = {c["client"]: c for c in out["clients"]}
    result: dict[str, Any] = {"split": args.split, "seed": args.seed, "records": len(pop.records),
                              "clients": len(res), "seconds": round(elapsed, 1)}

    # -- benign FPR --
    benign = [c for c in res if not pop.attacker[c]]
    flagged_b = [c for c in benign if res[c]["flagged"]]
    watch_b = [c for c in benign if res[c]["tier"] >= 1 or res[c]["max_score"] >= params.tiers.enter[0]]
    fpr = len(flagged_b) / max(len(benign), 1)
    print(f"\n## Benign clients ({args.split} split, seed {args.seed})\n")
    print("| clients | requests | flagged (throttle+) | FPR | reached watch |")
    print("|---|---|---|---|---|")
    breq = sum(res[c]["requests"] for c in benign)
    watch_share = len(watch_b) / max(len(benign), 1)
    print(f"| {len(benign)} | {breq} | {len(flagged_b)} | {fpr:.2%} | {len(watch_b)} ({watch_share:.1%}) |")
    by_kind: dict[str, list[str]] = defaultdict(list)
    for c in benign:
        by_kind[pop.kind[c]].append(c)
    for k, cs in sorted(by_kind.items()):
        print(f"| - {k}: {len(cs)} | {sum(res[c]['requests'] for c in cs)} | {sum(res[c]['flagged'] for c in cs)} | "
              f"{sum(res[c]['flagged'] for c in cs) / len(cs):.2%} | |")
    result["benign"] = {"clients": len(benign), "flagged": len(flagged_b), "fpr": fpr,
                        "flagged_ids": flagged_b[:20]}

    # -- per attack kind --
    # A threshold-free view as well: the client-level max score at which 0.5 % of benign clients would fire.
    bmax = np.array([res[c]["max_score"] for c in benign])
    thr = float(np.percentile(bmax, 99.5)) if len(bmax) else 1.0
    result["benign"]["max_score_p99_5"] = thr
    print(f"\n## Attackers by kind (operating point: throttle tier, benign FPR {fpr:.2%}; "
          f"max-score threshold at 0.5 % benign FPR: {thr:.3f})\n")
    print("| kind | attackers | flagged | TPR | TPR within budget | budget | median queries | p90 queries "
          "| TPR @ 0.5 % FPR (max score) |")
    print("|---|---|---|---|---|---|---|---|---|")
    kinds: dict[str, list[str]] = defaultdict(list)
    for c in res:
        if pop.attacker[c] and pop.share[c] >= 1.0 and pop.cluster[c] is None:
            kinds[pop.kind[c]].append(c)
    result["kinds"] = {}
    for k, cs in sorted(kinds.items()):
        q = [res[c]["first_flag_index"] for c in cs if res[c]["flagged"]]
        budget = BUDGET.get(k, DEFAULT_BUDGET)
        within = sum(1 for x in q if x <= budget)
        at_fpr = sum(1 for c in cs if res[c]["max_score"] > thr) / len(cs)
        print(f"| {k} | {len(cs)} | {len(q)} | {len(q) / len(cs):.1%} | {within / len(cs):.1%} | {budget} | "
              f"{_q(q, 50)} | {_q(q, 90)} | {at_fpr:.1%} |")
        result["kinds"][k] = {"n": len(cs), "tpr": len(q) / len(cs), "tpr_budget": within / len(cs),
                              "median": float(np.median(q)) if q else None, "tpr_at_fpr": at_fpr,
                              "p90": float(np.percentile(q, 90)) if q else None}

    # -- attack share --
    print("\n## Mixed clients: TPR against attack share (harvesting kinds, human timing)\n")
    print("| attack share | clients | flagged | TPR | TPR within 300 | median queries | p90 queries |")
    print("|---|---|---|---|---|---|---|")
    result["shares"] = {}
    for share in (0.1, 0.25, 0.5):
        cs = [c for c in res if pop.attacker[c] and pop.cluster[c] is None and abs(pop.share[c] - share) < 1e-9]
        q = [res[c]["first_flag_index"] for c in cs if res[c]["flagged"]]
        within = sum(1 for x in q if x <= DEFAULT_BUDGET)
        print(f"| {share:.0%} | {len(cs)} | {len(q)} | {len(q) / max(len(cs), 1):.1%} | "
              f"{within / max(len(cs), 1):.1%} | {_q(q, 50)} | {_q(q, 90)} |")
        result["shares"][str(share)] = {"n": len(cs), "tpr": len(q) / max(len(cs), 1),
                                        "tpr_budget": within / max(len(cs), 1)}

    # -- hydra --
    print("\n## Hydra clusters: linking against K (each member 60 requests, 50 % campaign traffic)\n")
    print("| K | campaign kind | members | linked to own campaign | flagged | benign linked to any campaign |")
    print("|---|---|---|---|---|---|")
    member_cluster: dict[str, int] = {}
    for gi, group in enumerate(out["clusters"]):
        for c in group:
            member_cluster[c] = gi
    benign_in_attack: set[str] = set()
    for group in out["clusters"]:
        if any(pop.cluster.get(c) for c in group):
            benign_in_attack.update(c for c in group if not pop.attacker[c])
    result["hydra"] = {}
    campaigns = {cl for cl in pop.cluster.values() if cl}
    for kk in (5, 10, 20):
        for camp in sorted(cl for cl in campaigns if cl.startswith(f"hydra{kk}-")):
            members = [c for c in res if pop.cluster[c] == camp]
            linked = 0
            for c in members:
                g = member_cluster.get(c)
                if g is not None and any(pop.cluster.get(o) == camp and o != c for o in out["clusters"][g]):
                    linked += 1
            flagged = sum(res[c]["flagged"] for c in members)
            kind = camp.split("-")[1]
            print(f"| {kk} | {kind} | {len(members)} | {linked / max(len(members), 1):.1%} | "
                  f"{flagged / max(len(members), 1):.1%} | {len(benign_in_attack)} |")
            result["hydra"][camp] = {"k": kk, "kind": kind, "members": len(members),
                                     "linked": linked / max(len(members), 1),
                                     "flagged": flagged / max(len(members), 1)}
    result["benign_linked_to_attack"] = sorted(benign_in_attack)
    benign_clustered = sorted(c for g in out["clusters"] for c in g if not pop.attacker[c])
    result["benign_in_any_cluster"] = len(benign_clustered)
    print(f"\nBenign clients in any cluster (benign-only clusters included): {len(benign_clustered)} of "
          f"{len(benign)}; linked to an attack campaign: {len(benign_in_attack)}")
    print(f"\n{len(pop.records)} requests, {len(res)} clients, {elapsed:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
