"""Measure one lexical-watermark lever at a time on the *tune* split (the per-lever table of the evaluation).

    .venv/bin/python scripts/eval/watermark_levers.py                        # list markers off vs on
    .venv/bin/python scripts/eval/watermark_levers.py --old-table old.json   # a previous table vs the shipped one

Texts are built like the evaluation's (shuffled answers of the split concatenated and cut at ``--words``);
each is watermarked for one client and scored against that client's key alone; TPR is the share with an
exact p-value below ``--fpr``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

from watermark.keys import KeyRing
from watermark.lexical import LexicalScheme
from watermark.lexicon import Lexicon, default_lexicon

sys.path.insert(0, str(Path(__file__).resolve().parent))
from watermark_lexical import DOMAINS, load, make_texts

MASTER = b"eval-master-secret-0123456789"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old-table", type=Path, help="compare this lexicon.json (markdown off) with the shipped one")
    ap.add_argument("--n", type=int, default=100, help="texts per domain")
    ap.add_argument("--words", type=int, default=800)
    ap.add_argument("--fpr", type=float, default=1e-6)
    ap.add_argument("--split", choices=["tune", "test"], default="tune")
    args = ap.parse_args(argv)
    shipped = default_lexicon()
    if args.old_table:
        old = Lexicon.from_json(json.loads(args.old_table.read_text(encoding="utf-8")))
        variants = [("old table", LexicalScheme(MASTER, old, markdown=False)),
                    ("new table", LexicalScheme(MASTER, shipped, markdown=False))]
    else:
        variants = [("list markers off", LexicalScheme(MASTER, shipped, markdown=False)),
                    ("list markers on", LexicalScheme(MASTER, shipped, markdown=True))]
    key = KeyRing(MASTER, 1).key("client-1")
    print("| domain | " + " | ".join(f"{name}: TPR (median / p10 slots)" for name, _ in variants) + " |")
    print("|---|" + "---|" * len(variants))
    for domain in [None, *DOMAINS]:
        texts = make_texts(load(args.split, domain), args.words, args.n, random.Random(7))
        cells = []
        for _, scheme in variants:
            scores = [scheme.score(scheme.embed(t, key), [key]) for t in texts]
            slots = sorted(s.scored for s in scores)
            tpr = sum(s.watermarked(args.fpr) for s in scores) / len(scores)
            cells.append(f"{tpr:.1%} ({statistics.median(slots):g} / {slots[len(slots) // 10]})")
        print(f"| {domain or 'all sources'} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
