"""Table revisions: does text served under an older lexicon table keep its power after the table grows?

    .venv/bin/python scripts/eval/watermark_revisions.py [--n 300] [--words 800] [--split test]

The table is append-only; each group records the revision that added it (``since``). Three ways to score:

- *as served*: the scheme of the table the text was served with (revision 1: the shipped table without the
  groups added later), i.e. the power the text had before the table grew;
- *revision views* (what ``ipgate verify`` does): the current table, each revision's groups a Bonferroni view;
- *flat*: the current table as one view (what verification did before revisions existed).

Two populations of 800-word test texts (one client key, FPR 1e-6, exact p-values): served under revision 1
and served under the current revision. Prints a markdown table: TPR and median log10 p per scoring and domain.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from watermark.keys import KeyRing
from watermark.lexical import LexicalScheme
from watermark.lexicon import Lexicon

sys.path.insert(0, str(Path(__file__).resolve().parent))
from watermark_lexical import DOMAINS, load, make_texts

MASTER = b"eval-master-secret-0123456789"


def _table() -> dict[str, Any]:
    out: dict[str, Any] = json.loads(
        resources.files("watermark.data").joinpath("lexicon.json").read_text(encoding="utf-8"))
    return out


def lexicon_at(revision: int | None) -> Lexicon:
    """The shipped table as of ``revision`` (None: every group as one revision, the pre-revision scoring)."""
    t = _table()
    if revision is None:
        t["groups"] = [{k: v for k, v in g.items() if k != "since"} for g in t["groups"]]
    else:
        t["groups"] = [g for g in t["groups"] if g.get("since", 1) <= revision]
    return Lexicon.from_json(t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300, help="texts per population and domain row")
    ap.add_argument("--words", type=int, default=800)
    ap.add_argument("--fpr", type=float, default=1e-6)
    ap.add_argument("--split", choices=["tune", "test"], default="test")
    args = ap.parse_args(argv)
    key = KeyRing(MASTER).key("client-000001")
    current = LexicalScheme(MASTER)
    old = LexicalScheme(MASTER, lexicon_at(1))
    flat = LexicalScheme(MASTER, lexicon_at(None))
    print(f"{args.words}-word {args.split} texts, {args.n} per row, one key, FPR {args.fpr:g}; "
          "TPR (median log10 p)\n")
    print("| served under | domain | as served | revision views (shipped) | flat (one view) |")
    print("|---|---|---|---|---|")
    for served_name, embedder in (("revision 1", old), ("revision 2 (current)", current)):
        for domain in [None, *DOMAINS]:
            texts = make_texts(load(args.split, domain), args.words, args.n, random.Random(17))
            marked = [embedder.embed(t, key) for t in texts]
            cells = []
            for scorer in (embedder, current, flat):
                scores = [scorer.score(m, [key]) for m in marked]
                tpr = sum(s.p_value < args.fpr for s in scores) / len(scores)
                med = statistics.median(s.log10_p_value for s in scores)
                cells.append(f"{tpr:.1%} ({med:.1f})")
            print(f"| {served_name} | {domain or 'all sources'} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
