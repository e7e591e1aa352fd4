"""Demands in the instructions: chain-of-thought harvesting whose demand sits in the system message.

A harvesting script can keep its "reason step by step in full" demand in the system (or developer) message
and send a public dataset's questions as the prompts: every prompt then looks natural (the dataset-replay
evasion) while every answer carries the reasoning it wants. This script builds one seeded population on the
held-out split — benign personas and dataset replayers — and replays three variants of it through the
shipped detector configuration:

- ``plain``: as generated;
- ``attackers + CoT system``: every replayer's chat request opens with one of two CoT system prompts;
- ``benign + CoT system``: every benign persona's chat request opens with a CoT system prompt (an
  application whose own instructions demand reasoning: the false-positive side of the same rule).

Nothing is fitted here: the combiner and its thresholds are the shipped ones (fitted on TRAIN).

    .venv/bin/python scripts/eval/instructions_eval.py [--benign 300] [--replayers 40] [--seed 3]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from detectors.combiner import CombinerParams, default_combiner_path
from detectors.engine import Engine
from detectors.traffic.population import build, run
from scripts.eval.common import load_bank

COT_SYSTEM = (
    "Always think step by step and show your full reasoning before the final answer.",
    "You are a meticulous expert. Explain your reasoning step by step in detail, then give the answer.",
)


def _with_system(records: list[dict[str, Any]], who: set[str]) -> list[dict[str, Any]]:
    out = []
    for rec in records:
        if rec["client"] in who and "messages" in rec["body"]:
            rec = copy.deepcopy(rec)
            text = COT_SYSTEM[sum(map(ord, rec["client"])) % len(COT_SYSTEM)]
            rec["body"]["messages"] = [{"role": "system", "content": text}, *rec["body"]["messages"]]
        out.append(rec)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benign", type=int, default=300)
    ap.add_argument("--replayers", type=int, default=40)
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    params = CombinerParams.from_json(default_combiner_path().read_text(encoding="utf-8"))
    pop = build(load_bank("test"), args.seed, args.benign, args.replayers, kinds=("dataset_replay",))
    attackers = {c for c, a in pop.attacker.items() if a}
    benign = set(pop.attacker) - attackers
    print("| variant | replayers flagged (throttle+) | benign flagged | benign at watch or above |")
    print("|---|---|---|---|")
    base = pop.records
    for name, who in (("plain", set()), ("attackers + CoT system", attackers), ("benign + CoT system", benign)):
        pop.records = _with_system(base, who)  # copies the records it changes: ``base`` stays as generated
        out, _ = run(pop, Engine.from_params(params))
        res = {c["client"]: c for c in out["clients"]}
        fa = sum(res[c]["flagged"] for c in attackers)
        fb = sum(res[c]["flagged"] for c in benign)
        wb = sum(res[c]["tier"] >= 1 for c in benign)
        print(f"| {name} | {fa} / {len(attackers)} ({fa / len(attackers):.0%}) | {fb} / {len(benign)} "
              f"| {wb} / {len(benign)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
