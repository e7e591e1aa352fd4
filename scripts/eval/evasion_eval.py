"""Hiding the harvested prompt from the detectors: the same harvesters, re-shaped the ways a script can hide
what the model answers, replayed through the shipped detector configuration.

Each harvesting attacker's (template, self-instruct, topic sweep, chain-of-thought) requests are rewritten:

- ``plain``: as generated;
- ``batch, harmless first``: a completions request whose ``prompt`` is a batch ``[harmless question, fill]``
  (each prompt of a batch is answered);
- ``split turn``: the fill, then a separate short user message ("Go ahead.");
- ``made-up history``: the fill as an earlier user turn, a made-up assistant reply, and a short "please answer
  that" as the last turn (the model answers the fill);

- ``fill in the system prompt``: the fill as the system message, "Go ahead." as the user turn;

and, for the false-positive side, every benign persona's chat request opens with a fixed made-up exchange (a
few-shot example the application writes into every conversation: history the client never sent as a last
turn), with a system prompt holding the time and a session number, or with retrieved documents in the system
prompt.

Nothing is fitted here: the combiner and its thresholds are the shipped ones (fitted on TRAIN); prompts come
from the held-out split.

    .venv/bin/python scripts/eval/evasion_eval.py [--benign 300] [--per-kind 20] [--seed 5]
"""

from __future__ import annotations

import argparse
import copy
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
HARMLESS = ("What is the capital of France?", "Say hello.", "What day comes after Monday?")
GO = ("Please answer the question above.", "Go ahead.", "Continue please", "ok, do it", "Answer it now.")
FEW_SHOT = ({"role": "user", "content": "Translate to French: good morning"},
            {"role": "assistant", "content": "Bonjour"})

Rewrite = Callable[[dict[str, Any], int], dict[str, Any]]


def batch(body: dict[str, Any], i: int) -> dict[str, Any]:
    fill = user_text(body)
    if fill is None:
        return body
    out = {k: v for k, v in body.items() if k != "messages"}
    out["prompt"] = [HARMLESS[i % len(HARMLESS)], fill]
    return out


def _chat(body: dict[str, Any], i: int, make: Callable[[str, str], list[dict[str, str]]]) -> dict[str, Any]:
    fill = user_text(body)
    if fill is None:
        return body
    out = {k: v for k, v in body.items() if k != "prompt"}
    out["messages"] = make(fill, GO[i % len(GO)])
    return out


def split(body: dict[str, Any], i: int) -> dict[str, Any]:
    return _chat(body, i, lambda f, g: [{"role": "user", "content": f}, {"role": "user", "content": g}])


def history(body: dict[str, Any], i: int) -> dict[str, Any]:
    return _chat(body, i, lambda f, g: [{"role": "user", "content": f},
                                        {"role": "assistant", "content": "Happy to help with that."},
                                        {"role": "user", "content": g}])


def system_fill(body: dict[str, Any], i: int) -> dict[str, Any]:
    return _chat(body, i, lambda f, g: [{"role": "system", "content": f}, {"role": "user", "content": g}])


def _with_system(body: dict[str, Any], text: str) -> dict[str, Any]:
    msgs = body.get("messages")
    if not isinstance(msgs, list):
        return body
    return {**body, "messages": [{"role": "system", "content": text}, *msgs]}


def dated_system(body: dict[str, Any], i: int) -> dict[str, Any]:
    # an application that writes the time and a session number into its system prompt on every request
    when = f"2026-11-{1 + i % 28:02d} {i % 24:02d}:{(7 * i) % 60:02d} UTC"
    return _with_system(body, f"You are a helpful assistant for Acme Corp. The current time is {when}, session "
                              f"{1000 + i}. Answer concisely.")


def rag_system(body: dict[str, Any], i: int) -> dict[str, Any]:
    # retrieval-augmented: passages (here: other prompts of the split, standing in for documents) in the system
    # prompt of every request
    docs = "\n\n".join(f"[{k + 1}] {PASSAGES[(7 * i + 13 * k) % len(PASSAGES)]}" for k in range(2))
    return _with_system(body, f"Answer the user's question using only the documents below. Cite them as [n].\n\n{docs}")


PASSAGES: list[str] = []


def few_shot(body: dict[str, Any], i: int) -> dict[str, Any]:
    msgs = body.get("messages")
    if not isinstance(msgs, list):
        return body
    return {**body, "messages": [*FEW_SHOT, *msgs]}


def _rewrite(records: list[dict[str, Any]], who: set[str], fn: Rewrite | None) -> list[dict[str, Any]]:
    if fn is None:
        return records
    out = []
    for i, rec in enumerate(records):
        if rec["client"] in who:
            rec = copy.deepcopy(rec)
            body = fn(rec["body"], i)
            rec["endpoint"] = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
            rec["body"] = body
        out.append(rec)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benign", type=int, default=300)
    ap.add_argument("--per-kind", type=int, default=20)
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()
    params = CombinerParams.from_json(default_combiner_path().read_text(encoding="utf-8"))
    bank = load_bank("test")
    PASSAGES.extend(p.turns[0][:600] for p in list(bank.prompts)[:500])
    pop = build(bank, args.seed, args.benign, args.per_kind, kinds=KINDS)
    attackers = {c for c, a in pop.attacker.items() if a}
    benign = set(pop.attacker) - attackers
    print("| variant | harvesters flagged within 300 | median requests to flag | benign flagged | "
          "benign at watch or above |")
    print("|---|---|---|---|---|")
    base = pop.records
    variants: list[tuple[str, set[str], Rewrite | None]] = [
        ("plain", set(), None), ("batch, harmless first", attackers, batch), ("split turn", attackers, split),
        ("made-up history", attackers, history), ("fill in the system prompt", attackers, system_fill),
        ("benign + few-shot history", benign, few_shot), ("benign + dated system prompt", benign, dated_system),
        ("benign + retrieved documents in the system prompt", benign, rag_system)]
    for name, who, fn in variants:
        pop.records = _rewrite(base, who, fn)  # copies the records it changes: ``base`` stays as generated
        out, _ = run(pop, Engine.from_params(params))
        print(variant_row(name, out, attackers, benign))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
