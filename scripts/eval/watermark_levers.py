"""Measure one lexical-watermark lever at a time on the *tune* split (the per-lever table of the evaluation).

    .venv/bin/python scripts/eval/watermark_levers.py                        # list markers off vs on
    .venv/bin/python scripts/eval/watermark_levers.py --old-table old.json   # a previous table vs the shipped one
    .venv/bin/python scripts/eval/watermark_levers.py --contexts word,repeat,first --attack substitute:0.2

Texts are built like the evaluation's (shuffled answers of the split concatenated and cut at ``--words``);
each is watermarked for one client and scored against that client's key alone (``--attack`` edits the
watermarked text first, as the evaluation's robustness section does); TPR is the share with an exact p-value
below ``--fpr``. With ``--corpus`` a third column scores corpora of 10 x 300 words against 1 000 keys.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

from watermark.keys import KeyRing
from watermark.lexical import CONTEXT_MODES, LexicalScheme
from watermark.lexicon import Lexicon, default_lexicon

sys.path.insert(0, str(Path(__file__).resolve().parent))
from watermark_lexical import DOMAINS, delete, insert, load, make_texts, substitute

MASTER = b"eval-master-secret-0123456789"


def _attack(spec: str, vocab: list[str]) -> Callable[[str, random.Random], str]:
    if spec == "none":
        return lambda t, r: t
    kind, _, frac = spec.partition(":")
    makers: dict[str, Callable[[float], Callable[[str, random.Random], str]]] = {
        "substitute": lambda f: substitute(f, vocab), "delete": delete, "insert": lambda f: insert(f, vocab)}
    return makers[kind](float(frac))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old-table", type=Path, help="compare this lexicon.json with the shipped one")
    ap.add_argument("--contexts", help=f"compare these context modes (of {','.join(CONTEXT_MODES)})")
    ap.add_argument("--markdown", choices=["on", "off"], default="off",
                    help="list markers for --old-table / --contexts comparisons")
    ap.add_argument("--attack", default="none", help="none, substitute:F, delete:F or insert:F")
    ap.add_argument("--corpus", action="store_true", help="also: 10 x 300-word corpora among 1 000 keys")
    ap.add_argument("--n", type=int, default=100, help="texts per domain")
    ap.add_argument("--words", type=int, default=800)
    ap.add_argument("--fpr", type=float, default=1e-6)
    ap.add_argument("--split", choices=["tune", "test"], default="tune")
    args = ap.parse_args(argv)
    shipped = default_lexicon()
    md = args.markdown == "on"
    if args.old_table:
        old = Lexicon.from_json(json.loads(args.old_table.read_text(encoding="utf-8")))
        variants = [("old table", LexicalScheme(MASTER, old, markdown=md)),
                    ("new table", LexicalScheme(MASTER, shipped, markdown=md))]
    elif args.contexts:
        variants = [(f"context {m}", LexicalScheme(MASTER, shipped, markdown=md, context=m))
                    for m in args.contexts.split(",")]
    else:
        variants = [("list markers off", LexicalScheme(MASTER, shipped, markdown=False)),
                    ("list markers on", LexicalScheme(MASTER, shipped, markdown=True))]
    ring = KeyRing(MASTER, 1)
    key = ring.key("client-1")
    rows_all = load(args.split)
    vocab = sorted({w for t in rows_all[:2000] for w in re.findall(r"[A-Za-z]+", t)})
    attack = _attack(args.attack, vocab)
    print(f"attack: {args.attack}; {args.words}-word texts, FPR {args.fpr:g}, split {args.split}")
    print("| domain | " + " | ".join(f"{name}: TPR (median / p10 slots, hit rate)" for name, _ in variants) + " |")
    print("|---|" + "---|" * len(variants))
    for domain in [None, *DOMAINS]:
        texts = make_texts(load(args.split, domain), args.words, args.n, random.Random(7))
        cells = []
        for _, scheme in variants:
            rng = random.Random(11)
            scores = [scheme.score(attack(scheme.embed(t, key), rng), [key]) for t in texts]
            slots = sorted(s.scored for s in scores)
            tpr = sum(s.watermarked(args.fpr) for s in scores) / len(scores)
            rate = sum(s.hits for s in scores) / max(1, sum(slots))
            cells.append(f"{tpr:.1%} ({statistics.median(slots):g} / {slots[len(slots) // 10]}, {rate:.1%})")
        print(f"| {domain or 'all sources'} | " + " | ".join(cells) + " |", flush=True)
    if args.corpus:
        keys = ring.candidates([f"client-{i:06d}" for i in range(1000)])
        rng = random.Random(5)
        corpora = [make_texts(rows_all, 300, 10, rng) for _ in range(args.n)]
        cells = []
        for _, scheme in variants:
            ok, logs = 0, []
            for i, texts in enumerate(corpora):
                k = keys[(i * 7919) % len(keys)]
                s = scheme.score([scheme.embed(t, k) for t in texts], keys)
                ok += s.watermarked(args.fpr) and s.client_id == k.client_id
                logs.append(s.log10_p_value)
            cells.append(f"{ok / len(corpora):.1%} (median log10 p {statistics.median(logs):.1f})")
        print("| corpus 10 x 300 words, 1 000 keys | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
