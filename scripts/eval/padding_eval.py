"""A fill hidden in fresh random padding: the harvesters of ``evasion_eval`` with every prompt wrapped in text
drawn anew for each request, replayed through the shipped detector configuration.

Variants (``before + after`` words around each harvesting prompt):

- ``word salad``: words drawn uniformly from the split's prompt vocabulary;
- ``sentences``: whole prompts of the split (other people's questions) until the word count is reached;

and, for the false-positive side, benign personas that paste one fixed document (a long prompt of the
split, 800-4000 characters) before or after every prompt, the way a user debugging one piece of code asks
question after question about it; and two retrieval applications that write one fixed instruction into
every user turn, before the prompt or between the prompt and two passages retrieved for it (other prompts
of the split), which is a template application whichever way it is read.

Nothing is fitted here: the shipped combiner and thresholds; prompts and padding come from the chosen split
(TEST by default, held out from every fit).

    .venv/bin/python scripts/eval/padding_eval.py [--benign 300] [--per-kind 20] [--seed 5] [--split test]
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from detectors.combiner import CombinerParams, default_combiner_path
from detectors.engine import Engine
from detectors.traffic.population import build, run
from scripts.eval.common import load_bank, user_text, variant_row

KINDS = ("template", "self_instruct", "topic_sweep", "cot")
Pad = Callable[[random.Random, int], str]
Rewrite = Callable[[str, random.Random], str]
VOCAB: list[str] = []
SENTENCES: list[str] = []
DOCS: list[str] = []


def word_salad(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def sentences(rng: random.Random, n: int) -> str:
    out: list[str] = []
    while sum(len(s.split()) for s in out) < n:
        out.append(rng.choice(SENTENCES))
    return " ".join(out)


def padded(pad: Pad, before: int, after: int) -> Rewrite:
    return lambda text, rng: f"{pad(rng, before)}\n\n{text}\n\n{pad(rng, after)}"


def _set_text(body: dict[str, Any], text: str) -> dict[str, Any]:
    out = copy.deepcopy(body)
    if "messages" in out:
        out["messages"][-1]["content"] = text
    else:
        out["prompt"] = text
    return out


def _rewrite(records: list[dict[str, Any]], who: set[str], fn: Rewrite | None,
             per_client: Callable[[str], Rewrite] | None = None) -> list[dict[str, Any]]:
    out = []
    for i, rec in enumerate(records):
        text = user_text(rec["body"]) if rec["client"] in who else None
        if text is not None:
            f = per_client(rec["client"]) if per_client else fn
            assert f is not None
            rec = {**rec, "body": _set_text(rec["body"], f(text, random.Random(f"{rec['client']}/{i}")))}
        out.append(rec)
    return out


def _doc_for(client: str) -> Rewrite:
    """A benign persona that pastes one fixed document with each prompt (before or after it, by persona)."""
    rng = random.Random(client)
    doc = rng.choice(DOCS)
    if rng.random() < 0.5:
        return lambda text, _: f"{doc}\n\n{text}"
    return lambda text, _: f"{text}\n\n{doc}"


INSTRUCTION = ("Use only the sources below, cite each claim as [n], and say so plainly when the sources do not "
               "answer the question.")


def instruction_first(text: str, rng: random.Random) -> str:
    # an application that puts one fixed instruction before every user prompt (a template app: flagged before)
    return f"{INSTRUCTION}\n\n{text}"


def instruction_between(text: str, rng: random.Random) -> str:
    # retrieval in the user turn: the question, a fixed instruction, then passages retrieved for it (fresh)
    passages = "\n\n".join(f"[{k + 1}] {rng.choice(SENTENCES)[:600]}" for k in range(2))
    return f"{text}\n\n{INSTRUCTION}\n\n{passages}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benign", type=int, default=300)
    ap.add_argument("--per-kind", type=int, default=20)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--split", choices=("train", "test"), default="test")
    args = ap.parse_args()
    params = CombinerParams.from_json(default_combiner_path().read_text(encoding="utf-8"))
    bank = load_bank(args.split)
    prompts = [p.turns[0] for p in bank.prompts]
    SENTENCES.extend(prompts)
    VOCAB.extend(sorted({w.strip(".,;:?!()\"'").lower() for p in prompts[:3000] for w in p.split()} - {""}))
    DOCS.extend(p for p in prompts if 800 <= len(p) <= 4000)
    pop = build(bank, args.seed, args.benign, args.per_kind, kinds=KINDS)
    attackers = {c for c, a in pop.attacker.items() if a}
    benign = set(pop.attacker) - attackers
    print(f"{args.split.upper()} split, seed {args.seed}: {len(benign)} benign personas, {len(attackers)} harvesters "
          f"({', '.join(KINDS)})\n")
    print("| variant | harvesters flagged within 300 | median requests to flag | benign flagged | "
          "benign at watch or above |")
    print("|---|---|---|---|---|")
    base = pop.records
    variants: list[tuple[str, set[str], Rewrite | None, Callable[[str], Rewrite] | None]] = [
        ("plain", set(), None, None),
        ("word salad, 40 + 20 words", attackers, padded(word_salad, 40, 20), None),
        ("word salad, 200 + 70 words", attackers, padded(word_salad, 200, 70), None),
        ("sentences, 40 + 20 words", attackers, padded(sentences, 40, 20), None),
        ("sentences, 200 + 70 words", attackers, padded(sentences, 200, 70), None),
        ("benign + one fixed document pasted with every prompt", benign, None, _doc_for),
        ("benign + a fixed instruction before every prompt", benign, instruction_first, None),
        ("benign + question, fixed instruction, retrieved passages (all in the user turn)", benign,
         instruction_between, None),
    ]
    for name, who, fn, per_client in variants:
        pop.records = _rewrite(base, who, fn, per_client)  # copies the records it changes
        out, _ = run(pop, Engine.from_params(params))
        print(variant_row(name, out, attackers, benign), flush=True)
    # The same applications on a plan of their own whose detection profile mutes the templates detector
    # (`detection.class_weights: {apps: {templates: 0}}`), and what that plan gives up: the harvesters on it.
    engine = Engine.from_params(params)
    apps = {"apps": engine.weights_for({"templates": 0.0})}
    planned: list[tuple[str, set[str], Rewrite | None, Callable[[str], Rewrite] | None]] = [
        ("plan `templates: 0`: benign + one fixed document pasted with every prompt", benign, None, _doc_for),
        ("plan `templates: 0`: benign + a fixed instruction before every prompt", benign, instruction_first, None),
        ("plan `templates: 0`: benign + question, fixed instruction, retrieved passages", benign,
         instruction_between, None),
        ("plan `templates: 0`: benign, no application text", benign, None, None),
        ("plan `templates: 0`: the harvesters", attackers, None, None),
    ]
    for name, who, fn, per_client in planned:
        records = _rewrite(base, who, fn, per_client) if (fn or per_client) else base
        pop.records = [{**r, "limit_class": "apps"} if r["client"] in who else r for r in records]
        out, _ = run(pop, Engine.from_params(params), class_weights=apps)
        print(variant_row(name, out, attackers, benign), flush=True)
    # The harvesters on that plan holding a second key, of a plan without a profile, used once (their first
    # request): a client is judged by the strictest profile among every plan it was seen with.
    seen: set[str] = set()
    pop.records = []
    for r in sorted(base, key=lambda r: float(r["ts"])):  # replay's order (a stable sort by time)
        c = r["client"]
        pop.records.append({**r, "limit_class": "apps"} if c in attackers and c in seen else r)
        seen.add(c)
    out, _ = run(pop, Engine.from_params(params), class_weights=apps)
    print(variant_row("plan `templates: 0`: the harvesters, each sending its first request on a key of "
                      "another plan", out, attackers, benign), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
