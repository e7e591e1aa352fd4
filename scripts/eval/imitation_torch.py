"""Imitation experiment with a torch student: does the lexical watermark survive distillation into a neural LM?

The protocol of ``kgw_imitation.py`` (same answers, keys, victim and verification) with a neural student in
place of the word 4-gram model: a distiller collects the answers served to one client (lexically watermarked
with that client's key), trains a byte-level BPE tokenizer (``tokenizers``) and the 2-layer GRU language model
of ``kgw_lm.py`` on them (CPU, torch), samples texts (``--temperature``, default 1) from the start-of-text token, and
publishes them. We pool the samples as a corpus (what ``ipgate verify --jsonl FILE --corpus`` does) and
verify them against 1 000 candidate clients with the shipped ``LexicalScheme``, reporting the victim's own
p-value and rank at growing corpus sizes and the number of generated words at which it is first attributed at
family-wise p < 1e-6. Control: the same student (same seed, same steps) trained on the *unwatermarked*
originals; it must never be attributed.

    .venv/bin/python scripts/eval/imitation_torch.py     # 17 min wall on 2 shared CPU cores (2026-11-26)
    .venv/bin/python scripts/eval/imitation_torch.py --reuse --samples 2048   # resample only, ~5 min

Most of the time is training: 2 000 steps per student at 0.17-1 s per step on 2 threads, depending on what
else the machine runs (10.9 and 6.0 min per student in the reported run). Everything is seeded (``--seed``:
torch init, training windows, sampling); repeated runs gave identical samples and tables (bitwise only
where CPU kernels allow: BLAS results may depend on memory alignment). The students (``<label>.pt``,
``<label>-tokenizer.json``) and their samples (``<label>.jsonl``, ``{"id", "text"}`` per line, for
``ipgate verify --jsonl FILE --corpus``) are written to ``var/imitation_torch/``; ``--reuse`` loads students
trained with the same settings and only samples (with the same ``--sample-batch`` a larger ``--samples``
extends the same list of texts).

Data: ``shared/data/responses.jsonl`` without the hh-rlhf red-team answers, shuffled with seed 0 (as in
``kgw_imitation.py``); the first ``--train`` answers train the student, the next ``--heldout`` give its
held-out perplexity.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

# Sibling scripts: importable because Python puts the running script's directory on sys.path.
from kgw_imitation import load_answers, serve_to_victim
from kgw_lm import GruLM, sample, train, train_tokenizer
from tokenizers import Tokenizer

from watermark.keys import ClientKey
from watermark.lexical import LexicalScheme

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "var" / "imitation_torch"
TARGETS = (250, 500, 1000, 1500, 2000, 3000, 4000, 6000, 8000, 12000, 16000, 24000, 32000, 48000, 64000, 96000,
           128000, 192000, 256000)
FPR = 1e-6

log = logging.getLogger("imitation_torch")


@dataclass(frozen=True, slots=True)
class Student:
    label: str
    train_loss: float  # nats/token, running mean over the last ~50 steps
    heldout_loss: float  # nats/token on held-out answers (in the same form: watermarked or not)
    sample_entropy: float  # mean entropy (nats/token) of the distributions sampled from
    tokens: int  # training tokens
    seconds: float  # tokenizer + training + sampling
    texts: list[str]


@dataclass(frozen=True, slots=True)
class Row:
    words: int
    texts: int
    top: str  # best candidate
    top_fw_log10: float  # its family-wise log10 p
    victim_log10: float  # the victim's own (uncorrected) log10 p
    victim_fw_log10: float
    victim_rank: int  # 1 = best of all candidates
    hits: int
    scored: int


def encode(tok: Tokenizer, texts: list[str], eot: int) -> torch.Tensor:
    stream: list[int] = []
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        stream.extend(enc.ids)
        stream.append(eot)
    return torch.tensor(stream, dtype=torch.long)


@torch.no_grad()
def mean_loss(model: GruLM, stream: torch.Tensor, seq: int, batch: int = 32, max_batches: int = 40) -> float:
    """Mean next-token NLL (nats) over consecutive windows of the stream, as in training (fresh state)."""
    model.eval()
    n = (len(stream) - 1) // seq
    total, count = 0.0, 0
    for lo in range(0, min(n, batch * max_batches), batch):
        starts = range(lo * seq, min(n, lo + batch) * seq, seq)
        x = torch.stack([stream[i : i + seq] for i in starts])
        y = torch.stack([stream[i + 1 : i + seq + 1] for i in starts])
        logits, _ = model(x)
        total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, model.vocab), y.reshape(-1),
                                                         reduction="sum"))
        count += y.numel()
    model.train()
    return total / max(1, count)


def fit_and_sample(label: str, corpus: list[str], heldout: list[str], args: argparse.Namespace) -> Student:
    """Train (or with ``--reuse`` load) one student, then sample ``--samples`` texts from it."""
    t0 = time.monotonic()
    tok_path, ckpt_path = OUT / f"{label}-tokenizer.json", OUT / f"{label}.pt"
    # Everything the student depends on: a checkpoint is reused only for the same settings.
    config = {k: getattr(args, k) for k in ("train", "no_math", "vocab", "emb", "hidden", "steps", "seq",
                                            "batch", "seed")}
    ckpt = torch.load(ckpt_path, weights_only=True) if args.reuse and ckpt_path.exists() else None
    if args.reuse and (ckpt is None or ckpt["config"] != config):
        raise SystemExit(f"--reuse: no checkpoint {ckpt_path} trained with {config}")
    if ckpt is None:
        train_tokenizer(corpus, args.vocab, tok_path)  # the distiller's own tokenizer, fitted on what it has
    tok = Tokenizer.from_file(str(tok_path))
    eot = tok.token_to_id("<|endoftext|>")
    if eot is None:
        raise RuntimeError("tokenizer lacks <|endoftext|>")
    torch.manual_seed(args.seed)  # the same initial weights for both students
    model = GruLM(tok.get_vocab_size(), args.emb, args.hidden)
    if ckpt is None:
        data = encode(tok, corpus, eot)
        log.info("%s: %d texts, %d tokens, vocab %d", label, len(corpus), len(data), tok.get_vocab_size())
        train_loss = train(model, data, args.steps, seq=args.seq, batch=args.batch, seed=args.seed)
        held = mean_loss(model, encode(tok, heldout, eot), args.seq)
        tokens = len(data)
        torch.save({"state": model.state_dict(), "config": config, "train_loss": train_loss,
                    "heldout_loss": held, "tokens": tokens}, ckpt_path)
    else:
        model.load_state_dict(ckpt["state"])
        train_loss, held, tokens = ckpt["train_loss"], ckpt["heldout_loss"], ckpt["tokens"]
    log.info("%s: train loss %.3f (ppl %.1f), held-out %.3f (ppl %.1f) nats/token after %d steps, %.0fs",
             label, train_loss, math.exp(train_loss), held, math.exp(held), args.steps, time.monotonic() - t0)
    # One generator for all batches: with the same --sample-batch, a larger --samples extends the same list.
    gen = torch.Generator().manual_seed(args.seed + 1)
    texts: list[str] = []
    ent_sum = 0.0
    batches = math.ceil(args.samples / args.sample_batch)
    for _ in range(batches):
        prompts = torch.full((args.sample_batch, 1), eot, dtype=torch.long)
        ids, ent, _nll = sample(model, prompts, args.max_tokens, None, args.temperature, gen)
        ent_sum += ent
        for row in ids.tolist():
            cut = row.index(eot) if eot in row else len(row)  # an answer ends at the separator it learned
            text = tok.decode(row[:cut]).strip()
            if text:
                texts.append(text)
    log.info("%s: sampled %d texts (%d words), entropy %.2f nats/token, %.0fs in all", label, len(texts),
             sum(len(t.split()) for t in texts), ent_sum / batches, time.monotonic() - t0)
    return Student(label, train_loss, held, ent_sum / batches, tokens, time.monotonic() - t0, texts)


def score_prefix(scheme: LexicalScheme, pool: list[str], keys: list[ClientKey], victim: str) -> Row:
    s = scheme.score(pool, keys, top=len(keys))  # every candidate, best first: the victim's rank and p
    fam = math.log10(s.family_size)
    rank, cand = next((i + 1, c) for i, c in enumerate(s.candidates) if c.client_id == victim)
    return Row(sum(len(t.split()) for t in pool), len(pool), s.client_id or "-", s.log10_p_value,
               cand.log10_p_value, min(0.0, cand.log10_p_value + fam), rank, cand.hits, s.scored)


def first_crossing(scheme: LexicalScheme, texts: list[str], keys: list[ClientKey], victim: str, lo: int,
                   hi: int) -> Row | None:
    """The smallest prefix of texts (lo < n <= hi texts) attributed to the victim at family-wise < FPR."""
    for n in range(lo + 1, hi + 1):
        r = score_prefix(scheme, texts[:n], keys, victim)
        if r.top == victim and r.top_fw_log10 < math.log10(FPR):
            return r
    return None


def table(student: Student, scheme: LexicalScheme, keys: list[ClientKey], victim: str) -> tuple[list[Row], Row | None]:
    rows: list[Row] = []
    prev_n, crossing = 0, None
    for target in TARGETS:
        pool, words = [], 0
        for t in student.texts:
            if words >= target:
                break
            pool.append(t)
            words += len(t.split())
        if words < target:
            break  # the samples ran out
        if rows and len(pool) == rows[-1].texts:
            continue  # one long text spans two targets
        r = score_prefix(scheme, pool, keys, victim)
        if crossing is None and r.top == victim and r.top_fw_log10 < math.log10(FPR):
            crossing = first_crossing(scheme, student.texts, keys, victim, prev_n, len(pool))
        prev_n = len(pool)
        rows.append(r)
    if student.texts and (not rows or rows[-1].texts < len(student.texts)):  # and all the samples pooled
        r = score_prefix(scheme, student.texts, keys, victim)
        if crossing is None and r.top == victim and r.top_fw_log10 < math.log10(FPR):
            crossing = first_crossing(scheme, student.texts, keys, victim, prev_n, len(student.texts))
        rows.append(r)
    return rows, crossing


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=3000, help="training answers (as kgw_imitation.py)")
    ap.add_argument("--heldout", type=int, default=200, help="held-out answers for the perplexity")
    ap.add_argument("--no-math", action="store_true", help="leave GSM8K solutions out (chat/assistant text only)")
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--vocab", type=int, default=4096, help="BPE vocabulary size")
    ap.add_argument("--emb", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--steps", type=int, default=2000, help="training steps per student")
    ap.add_argument("--seq", type=int, default=64, help="training window (tokens)")
    ap.add_argument("--batch", type=int, default=32, help="training windows per step")
    ap.add_argument("--samples", type=int, default=512, help="texts sampled per student")
    ap.add_argument("--sample-batch", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=512, help="tokens per sampled text at most")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the student")
    ap.add_argument("--only", choices=("watermarked", "control"), help="run one student only")
    ap.add_argument("--reuse", action="store_true",
                    help="load the students saved under var/imitation_torch/ by a run with the same settings and "
                         "only sample (e.g. with a larger --samples)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    start = time.monotonic()

    answers = load_answers(args.no_math)
    texts, held_texts = answers[: args.train], answers[args.train : args.train + args.heldout]
    served = serve_to_victim(texts + held_texts, args.clients)
    scheme, keys, victim = served.scheme, served.keys, served.victim
    marked, held_marked = served.marked[: len(texts)], served.marked[len(texts) :]
    train_words = sum(len(t.split()) for t in marked)

    OUT.mkdir(parents=True, exist_ok=True)
    students: list[Student] = []
    for label, corpus, held in (("watermarked", marked, held_marked), ("control", texts, held_texts)):
        if args.only not in (None, label):
            continue
        st = fit_and_sample(label, corpus, held, args)
        students.append(st)
        with (OUT / f"{label}.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps({"id": f"{label}-{i}", "text": t}) + "\n" for i, t in enumerate(st.texts))

    kind = "chat/assistant answers (no GSM8K)" if args.no_math else "answers"
    params = sum(p.numel() for p in GruLM(args.vocab, args.emb, args.hidden).parameters())
    print(f"## Imitation with a torch student: {args.emb}/{args.hidden} 2-layer GRU ({params / 1e6:.2f} M "
          f"parameters, BPE {args.vocab}) trained {args.steps} steps of {args.batch} x {args.seq} tokens on "
          f"{len(texts)} {kind} ({train_words:,} words) served to one client; lexical scheme, verified among "
          f"{args.clients} clients (seed {args.seed})\n")
    print("| student | training tokens | train loss (ppl) | held-out loss (ppl) | sample entropy | texts | "
          "words | wall time |")
    print("|---|---|---|---|---|---|---|---|")
    for st in students:
        print(f"| {st.label} | {st.tokens:,} | {st.train_loss:.3f} ({math.exp(st.train_loss):.1f}) | "
              f"{st.heldout_loss:.3f} ({math.exp(st.heldout_loss):.1f}) | {st.sample_entropy:.2f} nats | "
              f"{len(st.texts)} | {sum(len(t.split()) for t in st.texts):,} | {st.seconds / 60:.1f} min |")
    for st in students:
        rows, crossing = table(st, scheme, keys, victim)
        what = "watermarked answers" if st.label == "watermarked" else "unwatermarked originals (control)"
        print(f"\n### Student trained on the {what}\n")
        print("| generated words (pooled) | texts | scored tuples | victim hits | victim log10 p | victim rank | "
              "victim family-wise p | top candidate (family-wise p) | verdict @ 1e-6 |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            top = f"{r.top}{' (the victim)' if r.top == victim else ''} ({10 ** r.top_fw_log10:.2g})"
            verdict = f"{r.top}" if r.top_fw_log10 < math.log10(FPR) else "not"
            print(f"| {r.words} | {r.texts} | {r.scored} | {r.hits} | {r.victim_log10:.1f} | {r.victim_rank} | "
                  f"{10 ** r.victim_fw_log10:.2g} (log10 {r.victim_fw_log10:.1f}) | {top} | {verdict} |")
        best = min(rows, key=lambda r: r.top_fw_log10) if rows else None
        if st.label == "watermarked":
            if crossing is not None:
                print(f"\nFirst attributed to the victim at family-wise p < 1e-6 after **{crossing.words} generated "
                      f"words** ({crossing.texts} texts, p = {10 ** crossing.top_fw_log10:.2g}).")
            elif rows:
                last = rows[-1]
                print(f"\nNot attributed at family-wise p < 1e-6 within {last.words} generated words: the victim "
                      f"reached family-wise p {10 ** last.victim_fw_log10:.2g} (rank {last.victim_rank}).")
        elif best is not None:
            attributed = "YES" if best.top_fw_log10 < math.log10(FPR) else "never"
            print(f"\nControl: smallest family-wise p of any candidate {10 ** best.top_fw_log10:.2g} "
                  f"({best.top}, {best.words} words); attributed at 1e-6: {attributed}.")
    if students and students[0].label == "watermarked" and students[0].texts:
        ex = max(students[0].texts[:10], key=len)
        print("\nExample of the watermarked student's output (first 60 words):\n\n> " + " ".join(ex.split()[:60]))
    log.info("total %.1f min", (time.monotonic() - start) / 60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
