"""Imitation experiment: does the lexical watermark survive distillation into another model?

A "distiller" collects a few thousand answers served to one client (lexically watermarked with that client's
key), fits its own language model on them — here a word-level 4-gram model with backoff — and publishes the
model's samples. We verify the samples, pooled as a corpus, against 1 000 candidate clients and report how
many imitation words are needed for a verdict. Control: the same model fitted on the *unwatermarked*
originals must not be attributed to anyone.

    .venv/bin/python scripts/eval/kgw_imitation.py      # ~1-2 min CPU, prints markdown tables

Data: ``shared/data/responses.jsonl`` without the hh-rlhf red-team answers; 3 000 training answers.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from watermark.keys import ClientKey, KeyRing
from watermark.lexical import LexicalScheme

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "responses.jsonl"
EOS = "\x00"
# A word (with inner apostrophes) or one punctuation mark, each with the whitespace before it: joining the
# tokens gives the text back, so the imitation's output keeps the spacing the scanner reads.
_TOKEN = re.compile(r"\s*(?:[A-Za-z0-9]+(?:['’][A-Za-z]+)*|[^\sA-Za-z0-9])")

log = logging.getLogger("imitation")

# Shared with imitation_torch.py (the torch student) so both students see the same answers, keys and victim.
MASTER = b"imitation-eval-master-secret-not-for-production"
VICTIM = 17  # index of the victim among the candidate clients


def load_answers(no_math: bool = False) -> list[str]:
    """The non-red-team answers (optionally without GSM8K), shuffled with seed 0; callers take a prefix."""
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").split("\n") if line.strip()]
    skip = {"hh-rlhf-harmless-base"} | ({"gsm8k-train", "gsm8k-test"} if no_math else set())
    texts = [r["response"] for r in rows if r["source"] not in skip]
    random.Random(0).shuffle(texts)
    return texts


@dataclass(frozen=True)
class Served:
    """What the distiller collected: the answers as served to the victim, and the candidates to verify."""

    scheme: LexicalScheme
    keys: list[ClientKey]  # every candidate client, the victim among them
    victim: str
    marked: list[str]  # the answers watermarked with the victim's key


def serve_to_victim(texts: list[str], n_clients: int) -> Served:
    ring = KeyRing(MASTER)
    scheme = LexicalScheme(ring.master)
    clients = [f"client-{i:04d}" for i in range(n_clients)]
    victim = clients[VICTIM]
    t0 = time.monotonic()
    marked = [scheme.embed(t, ring.key(victim)) for t in texts]
    changed = sum(a != b for a, b in zip(texts, marked, strict=True))
    log.info("watermarked %d answers (%d changed) in %.1fs", len(texts), changed, time.monotonic() - t0)
    return Served(scheme, ring.candidates(clients), victim, marked)


class NGram:
    """Counts of the next token after each context of 1..order-1 tokens; sampling backs off to the longest
    context seen (a "stupid backoff" sampler: enough to imitate word choices in context)."""

    def __init__(self, order: int) -> None:
        self.order = order
        self.next: dict[tuple[str, ...], Counter[str]] = defaultdict(Counter)

    def fit(self, texts: list[str]) -> None:
        for text in texts:
            toks = [*_TOKEN.findall(text), EOS]
            hist: list[str] = []
            for t in toks:
                for k in range(0, min(len(hist), self.order - 1) + 1):
                    self.next[tuple(hist[len(hist) - k :])][t] += 1
                hist.append(t)

    def sample(self, rng: random.Random, max_tokens: int, temperature: float = 1.0) -> str:
        hist: list[str] = []
        for _ in range(max_tokens):
            c: Counter[str] = Counter()
            for k in range(min(len(hist), self.order - 1), -1, -1):
                c = self.next.get(tuple(hist[len(hist) - k :]), c)
                if c:
                    break
            words, counts = zip(*c.items(), strict=True)
            weights = [n ** (1.0 / temperature) for n in counts]
            t = rng.choices(words, weights)[0]
            if t == EOS:
                break
            hist.append(t)
        return "".join(hist).strip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--order", type=int, default=4)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=400)
    ap.add_argument("--no-math", action="store_true", help="leave GSM8K solutions out (chat/assistant text only)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    texts = load_answers(args.no_math)[: args.train]
    served = serve_to_victim(texts, args.clients)
    scheme, keys, victim, marked = served.scheme, served.keys, served.victim, served.marked
    train_words = sum(len(t.split()) for t in marked)

    results = {}
    for label, corpus in (("watermarked", marked), ("control (unwatermarked)", texts)):
        lm = NGram(args.order)
        lm.fit(corpus)
        rng = random.Random(1)
        outs = [lm.sample(rng, 400) for _ in range(args.samples)]
        results[label] = outs
        log.info("%s: fitted and sampled %d texts", label, len(outs))

    kind = "chat/assistant answers (no GSM8K)" if args.no_math else "answers"
    print(f"## Imitation: {args.order}-gram word model fitted on {len(texts)} {kind} ({train_words:,} words) "
          f"served to one client, lexical scheme, verified among {args.clients} clients\n")
    print("| imitation words (pooled corpus) | texts | model fitted on | attributed to | family-wise p | "
          "scored tuples | verdict @1e-6 |")
    print("|---|---|---|---|---|---|---|")
    for label, outs in results.items():
        last = -1
        for target in (250, 500, 1000, 1500, 2000, 3000, 4000, 6000, 8000, 16000):
            pool, words = [], 0
            for o in outs:
                if words >= target:
                    break
                pool.append(o)
                words += len(o.split())
            if words < target:
                break
            if words == last:
                continue
            last = words
            s = scheme.score(pool, keys)
            who = s.client_id if s.client_id != victim else f"{victim} (the victim)"
            print(f"| {words} | {len(pool)} | {label} | {who} | {s.p_value:.2e} (log10 {s.log10_p_value:.1f}) | "
                  f"{s.scored} | {'watermarked' if s.watermarked(1e-6) else 'not'} |")
    ex = results["watermarked"][0]
    print("\nExample of imitation output (first 60 words):\n\n> " + " ".join(ex.split()[:60]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
