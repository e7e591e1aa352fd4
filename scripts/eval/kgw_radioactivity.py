"""Does the KGW watermark survive distillation into a neural student? (radioactivity)

A distiller queries our KGW-watermarked model (the evaluation's GRU language model, ``var/kgw/lm.pt`` from
``kgw_lm.py``, serving one client with the default green-list parameters) for many completions, trains its
own GRU language model from scratch on them, and publishes the student's samples. We score the student's
token ids against 1 000 candidate client keys (family-wise Bonferroni p) at growing amounts of student output.
Control: the same student trained on the teacher's *unwatermarked* completions.

    .venv/bin/python scripts/eval/kgw_lm.py                 # once: the teacher (if var/kgw/lm.pt is missing)
    .venv/bin/python scripts/eval/kgw_radioactivity.py      # ~10 min on 2 CPU threads

Both students share the teacher's tokenizer (a distiller fine-tuning on text would re-tokenize; the ids are
what the student learns either way). Scored on ids (exact: what the student sampled), the tuples of each
sample counted once across the pooled corpus, the sample's own first tokens (its prompt) excluded.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path
from typing import cast

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kgw_lm import OUT, GruLM, Processor, load_model, load_texts, sample, train

from watermark.keys import KeyRing
from watermark.kgw import detect
from watermark.kgw.hf import KgwLogitsProcessor
from watermark.kgw.params import KgwParams

log = logging.getLogger("radioactivity")
VICTIM = 17


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=2048, help="teacher completions the distiller collects")
    ap.add_argument("--tokens", type=int, default=160, help="tokens per teacher completion")
    ap.add_argument("--steps", type=int, default=1500, help="student training steps (32 x 64 tokens)")
    ap.add_argument("--samples", type=int, default=512, help="student samples (of --tokens tokens)")
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    tok, teacher = load_model()
    params = KgwParams()
    ring = KeyRing(b"kgw-radioactivity-master-secret-not-for-production")
    clients = [f"client-{i:04d}" for i in range(args.clients)]
    keys = ring.candidates(clients)
    victim = keys[VICTIM]
    scheme = detect.KgwScheme(detect.tokenizer_encoder(str(OUT / "tokenizer.json")), params)
    # Queries: the first 8 tokens of answers the teacher never trained on (kgw_lm trains on the first 4 000).
    texts = load_texts(4000 + args.queries + args.samples)[4000:]
    query_ids = [tok.encode(t, add_special_tokens=False).ids[:8] for t in texts]
    query_ids = [q for q in query_ids if len(q) == 8]
    queries = torch.tensor(query_ids[: args.queries])
    student_prompts = torch.tensor(query_ids[args.queries : args.queries + args.samples])
    print(f"## KGW radioactivity: teacher GRU ({params}), {len(queries)} completions of {args.tokens} tokens "
          f"collected by one client; student GRU trained {args.steps} steps; {args.clients} candidate keys\n")
    print("| student trained on | student tokens scored | scored tuples | victim log10 p | victim rank | "
          "victim family-wise p | best other candidate (family-wise p) | verdict @1e-6 |")
    print("|---|---|---|---|---|---|---|---|")
    runs: list[tuple[str, Processor | None]] = [("watermarked completions",
                                                 cast(Processor, KgwLogitsProcessor(victim.key, params))),
                                                ("unwatermarked completions (control)", None)]
    for label, proc in runs:
        t0 = time.monotonic()
        gen = torch.Generator().manual_seed(args.seed)
        outs = []
        for lo in range(0, len(queries), 256):
            ids, _, _ = sample(teacher, queries[lo : lo + 256], args.tokens, proc, args.temperature, gen)
            outs.append(torch.cat([queries[lo : lo + 256], ids], dim=1))
        data = torch.cat(outs).reshape(-1)
        log.info("%s: %d teacher tokens in %.0fs", label, data.numel(), time.monotonic() - t0)
        torch.manual_seed(args.seed)
        student = GruLM(teacher.vocab)
        loss = train(student, data, args.steps, seed=args.seed)
        log.info("%s: student loss %.3f after %d steps (%.0fs)", label, loss, args.steps, time.monotonic() - t0)
        gen = torch.Generator().manual_seed(args.seed + 1)
        seqs: list[list[int]] = []
        for lo in range(0, len(student_prompts), 256):
            ids, _, _ = sample(student, student_prompts[lo : lo + 256], args.tokens, None, args.temperature, gen)
            seqs.extend(ids.tolist())
        prompts = student_prompts.tolist()
        for n in (8, 32, 64, 128, 256, 512):
            if n > len(seqs):
                break
            res = scheme.score_ids(seqs[:n], keys, prompts=prompts[:n], top=len(keys))
            rank = next(i for i, c in enumerate(res.candidates, 1) if c.client_id == victim.client_id)
            cand = next(c for c in res.candidates if c.client_id == victim.client_id)
            fam = min(0.0, cand.log10_p_value + math.log10(len(keys)))  # Bonferroni over the candidates
            other = next(c for c in res.candidates if c.client_id != victim.client_id)
            other_fam = min(0.0, other.log10_p_value + math.log10(len(keys)))
            verdict = "attributed" if res.client_id == victim.client_id and res.p_value < 1e-6 else "not"
            print(f"| {label} | {n * args.tokens:,} | {res.scored} | {cand.log10_p_value:.1f} | {rank} | "
                  f"10^{fam:.1f} | {other.client_id} (10^{other_fam:.1f}) | {verdict} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
