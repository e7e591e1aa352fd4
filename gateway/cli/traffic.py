"""``ipgate traffic``: write a synthetic trace (benign personas + attackers) for ``ipgate replay`` and demos.

    ipgate traffic -o trace.jsonl [--prompts FILE] [--benign 50] [--attack template=3 --attack cot=2 ...]
                   [--mixed 0.25=2] [--hydra 5] [--seed 1]

Benign personas draw real prompts from ``--prompts`` (the corpus JSONL format; red-team prompts are dropped)
or, by default, from the 300-prompt sample bundled with ipgate (licences in detectors/traffic/NOTICE).
Attack kinds: logit_probe, template, self_instruct, topic_sweep, cot, slow_low. Each record carries a
``label`` that replay ignores and evaluations read.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from detectors.traffic.corpus import BENIGN_CATEGORIES, Prompt, parse_prompts
from detectors.traffic.generator import (
    ATTACK_KINDS,
    EPOCH,
    HARVEST_KINDS,
    Bank,
    Record,
    attacker_client,
    benign_client,
    hydra,
)


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("traffic", help="generate a synthetic trace for replay/demos")
    p.add_argument("-o", "--output", type=Path, required=True, help="trace file to write (JSONL)")
    p.add_argument("--prompts", type=Path, help="prompt corpus JSONL (default: the bundled sample)")
    p.add_argument("--benign", type=int, default=50, help="benign personas (default 50)")
    p.add_argument("--attack", action="append", default=[], metavar="KIND=N",
                   help=f"N attackers of KIND, one of {', '.join(ATTACK_KINDS)} (repeatable)")
    p.add_argument("--mixed", action="append", default=[], metavar="SHARE=N",
                   help="N benign personas that mix in harvesting at SHARE (0-1) of their traffic (repeatable)")
    p.add_argument("--hydra", type=int, action="append", default=[], metavar="K",
                   help="a hydra campaign over K accounts (repeatable)")
    p.add_argument("--requests", type=int, default=300, help="requests per harvesting attacker (default 300)")
    p.add_argument("--seed", type=int, default=1, help="the trace is a function of the seed (default 1)")
    p.set_defaults(func=run)


def _pairs(values: list[str], what: str) -> list[tuple[str, int]]:
    out = []
    for v in values:
        key, sep, n = v.partition("=")
        if not sep or not n.isdigit():
            raise ValueError(f"--{what} expects KEY=N, got {v!r}")
        out.append((key, int(n)))
    return out


def _prompts(lines: list[str], path: Path) -> list[Prompt]:
    """The corpus's prompts, a bad line named ``--prompts FILE:LINE`` (a line that is not an object, or a benign
    record without its ``id``, was an "internal error" naming neither the file nor the line)."""
    out: list[Prompt] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"--prompts {path}:{n}: not valid JSON: {e.msg}") from None
        except RecursionError:
            raise ValueError(f"--prompts {path}:{n}: not valid JSON: nested too deeply") from None
        if not isinstance(rec, dict):
            raise ValueError(f"--prompts {path}:{n}: expected a JSON object "
                             '({"id", "category", "turns"}, as in the corpus format)')
        if rec.get("category") in BENIGN_CATEGORIES:
            if "id" not in rec:
                raise ValueError(f"--prompts {path}:{n}: field 'id' is missing")
            if not isinstance(rec.get("turns", []), list):  # a string's characters would become the turns
                raise ValueError(f"--prompts {path}:{n}: field 'turns' must be a list of strings")
        out += parse_prompts([line])
    return out


def _check(args: argparse.Namespace, attacks: list[tuple[str, int]], mixed: list[tuple[float, int]],
           have_prompts: bool) -> str | None:
    """The first problem with the arguments, named (argparse takes any int: negatives included)."""
    unknown = [k for k, _ in attacks if k not in ATTACK_KINDS]
    if unknown:
        return f"--attack: unknown kind(s) {unknown}; known: {', '.join(ATTACK_KINDS)}"
    if not have_prompts:
        return "--prompts: no usable prompts in the corpus"
    bad = [s for s, _ in mixed if not 0 < s < 1]
    if bad:
        return f"--mixed: SHARE must be between 0 and 1 (exclusive), got {bad}"
    if args.benign < 0:
        return f"--benign must be >= 0, got {args.benign}"
    if args.requests < 1:
        return f"--requests must be >= 1, got {args.requests}"
    small = [k for k in args.hydra if k < 2]
    if small:
        return f"--hydra: a campaign needs K >= 2 accounts, got {small}"
    return None


def run(args: argparse.Namespace) -> int:
    try:
        if args.prompts is not None:
            text = args.prompts.read_text(encoding="utf-8-sig")  # a byte-order mark is not part of line 1
            bank = Bank(_prompts(text.split("\n"), args.prompts), "all")  # not splitlines(): U+2028 in strings
        else:
            lines = (resources.files("detectors.traffic") / "sample_prompts.jsonl").read_text("utf-8").split("\n")
            bank = Bank(parse_prompts(lines), "all")
        attacks = _pairs(args.attack, "attack")
        mixed = [(float(s), n) for s, n in _pairs(args.mixed, "mixed")]
    except (OSError, ValueError) as e:
        print(f"ipgate traffic: {e}", file=sys.stderr)
        return 2
    problem = _check(args, attacks, mixed, bool(bank.prompts))
    if problem:
        print(f"ipgate traffic: {problem}", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    records: list[Record] = []
    for i in range(args.benign):
        records += benign_client(rng, bank, f"user-{i}", EPOCH + rng.uniform(0, 86400))
    # Client ids are numbered per prefix across repeated options: "--attack cot=1 --attack cot=1" is two
    # attackers, not one client with both streams merged (which would silently change what is evaluated).
    seen: dict[str, int] = {}

    def next_id(prefix: str) -> str:
        i = seen[prefix] = seen.get(prefix, -1) + 1
        return f"{prefix}-{i}"

    for kind, n in attacks:
        for _ in range(n):
            size = 100 if kind == "logit_probe" else args.requests
            records += attacker_client(rng, bank, next_id(kind), kind, size, EPOCH + rng.uniform(0, 86400))
    for share, n in mixed:
        for _ in range(n):
            kind = rng.choice(HARVEST_KINDS)
            records += attacker_client(rng, bank, next_id(f"mixed{int(share * 100)}"), kind, args.requests,
                                       EPOCH + rng.uniform(0, 86400), share)
    for j, k in enumerate(args.hydra):
        for members in hydra(rng, bank, f"hydra{j}", k, 60, EPOCH):
            records += members
    records.sort(key=lambda r: r["ts"])
    try:
        with args.output.open("w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    except OSError as e:
        print(f"ipgate traffic: cannot write {args.output}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(f"wrote {len(records)} requests from {len({r['client'] for r in records})} clients to {args.output}")
    return 0
