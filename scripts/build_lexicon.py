#!/usr/bin/env python3
"""Build the lexical watermark's substitution table (``watermark/data/lexicon.json``) from WordNet 3.0.

Usage: .venv/bin/python scripts/build_lexicon.py [--wordnet /usr/share/wordnet] [--out watermark/data/lexicon.json]

How the table is made. A lexical watermark may only swap words where *every* variant is safe in *every*
context where any variant occurs, because the detector cannot do sense disambiguation. So the table is a
curated list (``CURATED`` in ``scripts/lexicon_table.py``) in which each content-word group is checked against
WordNet: every pair of variants must share a synset or be linked by WordNet's similar-to relation (adjectives)
in the part of speech given, or the group is dropped (listed on stderr). Function-word alternations that
WordNet does not cover (contractions, connectives followed by a comma) are marked ``source="grammar"`` and are
kept by rule. Each group
carries the context conditions that make it safe (e.g. a contraction is never made at the end of a clause:
"I know who you are." must not become "...who you're."). Numbers are never involved; British/American spelling
pairs are deliberately absent (they would make the watermark visible).

The product reads only the JSON file; WordNet is needed only to rebuild it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# The curated groups and their word lists live beside this script (sys.path[0] when it runs); they are data,
# this file is the build.
from lexicon_table import CURATED, REJECTED
from lexicon_words import (
    ADVERB_ADJECTIVES,
    ADVERB_CHAIN,
    HAS_LOOKAHEAD_ADVERBS,
    LOOKAHEAD_PARTICIPLES,
    PARTICIPLE_HINTS,
    QUANTITIES,
)


class WordNet:
    def __init__(self, root: Path) -> None:
        self.index: dict[tuple[str, str], list[str]] = {}
        self.similar: dict[str, set[str]] = {}
        for pos, name in (("n", "noun"), ("v", "verb"), ("a", "adj"), ("r", "adv")):
            with open(root / f"index.{name}", encoding="latin-1") as f:
                for line in f:
                    if line.startswith(" "):
                        continue
                    parts = line.split()
                    lemma, p_cnt = parts[0], int(parts[3])
                    sense_cnt = int(parts[4 + p_cnt])
                    self.index[(lemma, pos)] = parts[-sense_cnt:]
        with open(root / "data.adj", encoding="latin-1") as f:  # similar-to ('&') links between adjectives
            for line in f:
                if line.startswith(" "):
                    continue
                head, _, _ = line.partition("|")
                parts = head.split()
                w_cnt = int(parts[3], 16)
                p_at = 4 + 2 * w_cnt
                p_cnt = int(parts[p_at])
                ptrs = parts[p_at + 1 : p_at + 1 + 4 * p_cnt]
                sims = {ptrs[i + 1] for i in range(0, len(ptrs), 4) if ptrs[i] == "&"}
                self.similar.setdefault(parts[0], set()).update(sims)

    def synsets(self, word: str, pos: str) -> set[str]:
        key = word.lower().replace(" ", "_")
        got = set(self.index.get((key, pos), []))
        if pos == "a":
            got |= set(self.index.get((key, "s"), []))
        return got

    def related(self, a: str, b: str, pos: str) -> bool:
        sa, sb = self.synsets(a, pos), self.synsets(b, pos)
        if sa & sb:
            return True
        if pos == "a":
            near_a = set().union(*(self.similar.get(s, set()) for s in sa)) | sa
            near_b = set().union(*(self.similar.get(s, set()) for s in sb)) | sb
            return bool(near_a & sb or near_b & sa or (near_a & near_b))
        return False


def build(wn: WordNet) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    seen: set[tuple[str, bool | None]] = set()
    for g in CURATED:
        variants = [v for v in g.variants if v.lower() not in REJECTED]
        for v in g.variants:
            if v.lower() in REJECTED:
                print(f"rejected {v!r}: {REJECTED[v.lower()]}", file=sys.stderr)
        if g.pos and not g.curated and not g.context:
            lemma = dict(zip(g.variants, g.lemmas or g.variants, strict=True))
            keep = [variants[0]]
            for v in variants[1:]:
                if all(wn.related(lemma[k], lemma[v], g.pos) for k in keep):
                    keep.append(v)
                else:
                    print(f"dropped {v!r} from {variants}: no shared WordNet synset ({g.pos})", file=sys.stderr)
            variants = keep
        if len(variants) < 2:
            print(f"dropped group {g.variants}: fewer than two variants left", file=sys.stderr)
            continue
        for v in variants:
            # a phrase may sit in two groups only when their sentence-start conditions exclude each other
            slot = (v.lower(), g.sentence_start)
            clash = [(v.lower(), x) for x in (None, True, False) if (v.lower(), x) in seen]
            if clash and (g.sentence_start is None or any(x is None or x == g.sentence_start for _, x in clash)):
                raise SystemExit(f"variant {v!r} appears in two groups")
            seen.add(slot)
        suffix = {None: "", True: "@start", False: "@inside"}[g.sentence_start]
        out.append({
            "id": "|".join(v.lower() for v in variants) + suffix,
            "variants": variants,
            "source": (f"curated: {g.curated}" if g.curated else f"context: {g.context}" if g.context
                       else f"wordnet:{g.pos}" if g.pos else "grammar"),
            "need_next_word": g.need_next_word,
            "comma_after": g.comma_after,
            "next_not": sorted(set(g.next_not)),
            "next_in": sorted(set(g.next_in)),
            "prev_not": sorted(set(g.prev_not)),
            "next_not_participle": g.next_not_participle,
            "participle_hints": PARTICIPLE_HINTS if g.next_not_participle else [],
            "prev_in": sorted(set(g.prev_in)),
            "after_comma": g.after_comma,
            "next_number": g.next_number,
            "next_word_only": g.next_word_only,
            "sentence_start": g.sentence_start,
            "after_quantity": g.after_quantity,
            "quantities": (QUANTITIES if g.quantities is None else g.quantities) if g.after_quantity else [],
            "before_punct": g.before_punct,
            "after_break": g.after_break,
            "level": g.level,
            # only where set, so the entries of the other groups stay as they were
            **({"adverb_lookahead": sorted(set(HAS_LOOKAHEAD_ADVERBS)), "adverb_chain": sorted(set(ADVERB_CHAIN)),
                "adverb_participles": sorted(set(PARTICIPLE_HINTS + LOOKAHEAD_PARTICIPLES)),
                "adverb_adjectives": sorted(set(ADVERB_ADJECTIVES))} if g.adverb_lookahead else {}),
            **({"next_not_suffix": sorted(set(g.next_not_suffix)), "suffix_nouns": sorted(set(g.suffix_nouns)),
                "suffix_prev_ok": sorted(set(g.suffix_prev_ok))} if g.next_not_suffix else {}),
            **({"next_not_date": True} if g.next_not_date else {}),
            **({"since": g.since} if g.since > 1 else {}),
            **({"retired": g.retired} if g.retired else {}),
            **({"next_relation": sorted(set(g.next_relation))} if g.next_relation else {}),
            **({"next_needs_number": sorted(set(g.next_needs_number))} if g.next_needs_number else {}),
            **({"parallel": True} if g.parallel else {}),
        })
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wordnet", type=Path, default=Path("/usr/share/wordnet"))
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "watermark/data/lexicon.json")
    ap.add_argument("--licence", type=Path, default=Path("/usr/share/doc/wordnet-base/copyright"))
    args = ap.parse_args()
    wn = WordNet(args.wordnet)
    groups = build(wn)
    table = {
        "format": 1,
        "generated_by": "scripts/build_lexicon.py",
        "wordnet_notice": "Content-word groups were checked against WordNet 3.0. WordNet 3.0 Copyright 2006 by "
        "Princeton University. All rights reserved. See watermark/data/LICENSE.wordnet.",
        "groups": groups,
    }
    args.out.write_text(json.dumps(table, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    lic = args.out.parent / "LICENSE.wordnet"
    text = args.licence.read_text(encoding="utf-8")
    start = text.index("License: WordNet3.0")
    end = text.find("\nFiles:", start)
    body = text[start:end if end > 0 else None]
    lic.write_text("\n".join(ln[1:] if ln.startswith(" ") else ln for ln in body.splitlines()).replace("\n.\n", "\n\n")
                   + "\n", encoding="utf-8")
    print(f"wrote {len(groups)} groups to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
