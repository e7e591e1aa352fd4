"""KGW evaluation: TPR at FPR 1e-3 / 1e-6 for 100 and 200 tokens, false positives on unwatermarked and human
text, attribution among 1 000 client keys, on the small LM trained by ``kgw_lm.py`` (entropy reported).

    .venv/bin/python scripts/eval/kgw_lm.py      # once: tokenizer + GRU LM under var/kgw/ (~5 min CPU)
    .venv/bin/python scripts/eval/kgw_eval.py    # ~2-4 min CPU; prints the markdown tables

Generation goes through the Hugging Face adapter (``KgwLogitsProcessor`` called on (input_ids, scores) at
every step, as ``generate`` calls it), so the torch core and its per-row keys are what is evaluated.
Detection is the numpy detector (``KgwScheme``), two ways:

- *ids*: the sampled token ids with the prompt ids known (exact; e.g. from a serving log);
- *text*: decode, then re-encode with ``tokenizer.json`` and no prompt — what ``ipgate verify --scheme kgw``
  does with leaked text (the first h tokens have no context and are not scored).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import time
from typing import cast

import numpy as np
import numpy.typing as npt
import torch

# The sibling script: importable because Python puts the running script's directory on sys.path.
from kgw_lm import DATA, OUT, Processor, load_model, load_texts, sample

from watermark import stats
from watermark.keys import ClientKey, KeyRing
from watermark.kgw import detect
from watermark.kgw.hf import KgwLogitsProcessor
from watermark.kgw.params import KgwParams

log = logging.getLogger("kgw_eval")


def _pvals(
    scheme: detect.KgwScheme, seqs: list[list[int]], keys: list[ClientKey], prompts: list[list[int]] | None
) -> npt.NDArray[np.float64]:
    return np.asarray(
        [
            scheme.score_ids([s], [k], prompts=None if prompts is None else [prompts[i]]).p_value
            for i, (s, k) in enumerate(zip(seqs, keys, strict=True))
        ]
    )


def _edit(text: str, kind: str, rate: float, vocab: list[str], other: str, rng: random.Random) -> str:
    """Word-level edits of a watermarked text (whitespace words; replacements from human answers)."""
    words = text.split()
    if kind == "substitute":
        words = [rng.choice(vocab) if rng.random() < rate else w for w in words]
    elif kind == "delete":
        words = [w for w in words if rng.random() >= rate]
    elif kind == "insert":
        words = [x for w in words for x in ([w, rng.choice(vocab)] if rng.random() < rate else [w])]
    elif kind == "truncate":
        words = words[: len(words) // 2]
    elif kind == "mix":  # as many unwatermarked words appended
        words = words + other.split()[: len(words)]
    return " ".join(words)


def robustness(
    scheme: detect.KgwScheme, texts: list[str], owners: list[ClientKey], keys: list[ClientKey],
    human: list[str], temperature: float,
) -> None:
    rng = random.Random(5)
    vocab = [w for t in human[:2000] for w in t.split()]
    long_human = [t for t in human if len(t.split()) >= 200]
    print(f"\n## Robustness (T = {temperature}, 200-token samples, detected from text; edits on words)\n")
    print("| edit | TPR @1e-6 (right key) | attribution @1e-6 among 1000 | median p (right key) |")
    print("|---|---|---|---|")
    conditions = [("none", 0.0), ("substitute", 0.1), ("substitute", 0.2), ("substitute", 0.3),
                  ("delete", 0.2), ("insert", 0.2), ("truncate", 0.5), ("mix", 0.5)]
    for kind, rate in conditions:
        edited = [_edit(t, kind, rate, vocab, long_human[i % len(long_human)], rng) for i, t in enumerate(texts)]
        p_right = np.asarray([scheme.score(t, [o]).p_value for t, o in zip(edited, owners, strict=True)])
        attrib = [scheme.score(t, keys) for t in edited]
        pairs = zip(attrib, owners, strict=True)
        correct = np.mean([a.client_id == o.client_id and a.p_value < 1e-6 for a, o in pairs])
        label = {"none": "none", "truncate": "truncate to half", "mix": "+ equal length of human text"}.get(
            kind, f"{kind} {rate:.0%} of words")
        print(f"| {label} | {np.mean(p_right < 1e-6):.3f} | {correct:.3f} | {np.median(p_right):.1e} |")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=300, help="watermarked (and as many plain) samples per setting")
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--temperatures", default="1.0,0.7,0.5")
    ap.add_argument("--delta", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--robust-temperature", type=float, default=0.7, help="samples used for the edit table")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    tok, model = load_model()
    params = KgwParams(delta=args.delta)
    ring = KeyRing(b"kgw-eval-master-secret-not-for-production")
    client_ids = [f"client-{i:04d}" for i in range(args.clients)]
    keys = ring.candidates(client_ids)
    encode = detect.tokenizer_encoder(str(OUT / "tokenizer.json"))
    scheme = detect.KgwScheme(encode, params)

    # Prompts: the first 16 tokens of held-out answers (not among the LM's training texts).
    held_out = load_texts(4000 + args.samples)[4000:]
    prompts = torch.tensor([tok.encode(t, add_special_tokens=False).ids[:16] for t in held_out])
    owners = [keys[i % len(keys)] for i in range(args.samples)]
    print(f"## KGW evaluation (params {params}, {args.samples} samples per setting, {args.clients} client keys)\n")
    print("| temperature | entropy/token (nats) | ppl plain | ppl wm | tokens | detect on | "
          "TPR @1e-3 | TPR @1e-6 | FPR @1e-3 (plain) | attribution @1e-6 among 1000 | median p (wm) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    all_plain: list[list[int]] = []
    robust_src: list[str] = []
    for temp in (float(t) for t in args.temperatures.split(",")):
        t0 = time.monotonic()
        g = torch.Generator().manual_seed(1)
        proc = cast(Processor, KgwLogitsProcessor([k.key for k in owners], params))
        wm, ent_wm, nll_wm = sample(model, prompts, 200, proc, temp, g)
        plain, ent, nll = sample(model, prompts, 200, None, temp, g)
        log.info("T=%.1f: generated in %.0fs (entropy %.2f / %.2f)", temp, time.monotonic() - t0, ent, ent_wm)
        all_plain.extend(plain.tolist())
        for n_tok in (100, 200):
            wm_ids = [r[:n_tok] for r in wm.tolist()]
            plain_ids = [r[:n_tok] for r in plain.tolist()]
            pr = prompts.tolist()
            for mode in ("ids", "text"):
                if mode == "ids":
                    p_wm = _pvals(scheme, wm_ids, owners, pr)
                    p_plain = _pvals(scheme, plain_ids, owners, pr)
                    attrib = [scheme.score_ids([s], keys, prompts=[pr[i]]) for i, s in enumerate(wm_ids)]
                else:
                    wm_txt = [tok.decode(s) for s in wm_ids]
                    plain_txt = [tok.decode(s) for s in plain_ids]
                    p_wm = np.asarray([scheme.score(t, [k]).p_value for t, k in zip(wm_txt, owners, strict=True)])
                    p_plain = np.asarray(
                        [scheme.score(t, [k]).p_value for t, k in zip(plain_txt, owners, strict=True)]
                    )
                    attrib = [scheme.score(t, keys) for t in wm_txt]
                    if temp == args.robust_temperature and n_tok == 200:
                        robust_src = wm_txt
                pairs = list(zip(attrib, owners, strict=True))
                correct = np.mean([a.client_id == o.client_id and a.p_value < 1e-6 for a, o in pairs])
                wrong = sum(a.client_id != o.client_id and a.p_value < 1e-6 for a, o in pairs)
                print(
                    f"| {temp} | {ent:.2f} | {math.exp(nll):.1f} | {math.exp(nll_wm):.1f} | {n_tok} | {mode} | "
                    f"{np.mean(p_wm < 1e-3):.3f} | {np.mean(p_wm < 1e-6):.3f} | {np.mean(p_plain < 1e-3):.3f} | "
                    f"{correct:.3f} ({wrong} wrong) | {np.median(p_wm):.1e} |"
                )
        sys.stdout.flush()

    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").split("\n") if line.strip()]
    human = [r["response"] for r in rows]
    if robust_src:
        robustness(scheme, robust_src, owners, keys, human, args.robust_temperature)

    # False positives on unwatermarked text: human answers (all of responses.jsonl) and the plain samples,
    # each tested against many keys. Per (text, key) test, P(p < a) <= a under H0.
    human_ids = [ids[:200] for ids in encode(human)]
    t0 = time.monotonic()
    n_keys = 100
    fp_keys = keys[:n_keys]
    counts = dict.fromkeys((1e-3, 1e-4, 1e-6), 0)
    tests = 0
    family_false = 0
    for i, seq in enumerate(human_ids + all_plain):
        tuples = detect.collect_tuples([seq], params)
        if tuples.n == 0:
            continue
        scored, hits = detect.green_counts(tuples, detect.keys_array([k.key for k in fp_keys]), params)
        tail = np.asarray(
            [stats.binom_log_sf(int(h), int(n), params.p_green) for n, h in zip(scored, hits, strict=True)]
        )
        for a in counts:
            counts[a] += int((tail < math.log(a)).sum())
        tests += len(fp_keys)
        if i < 1000:  # attribution among all keys with Bonferroni: a false claim would be any verdict
            s = detect.score_tuples(tuples, keys, params)
            family_false += s.p_value < 1e-6
    print(
        f"\n## False positives on unwatermarked text\n\n{len(human_ids)} human/assistant answers from "
        f"responses.jsonl (first 200 tokens) + {len(all_plain)} unwatermarked LM samples, each against "
        f"{n_keys} keys = {tests} (text, key) tests ({time.monotonic() - t0:.0f}s):\n"
    )
    print("| per-test threshold | expected at most | observed | observed rate |")
    print("|---|---|---|---|")
    for a, c in counts.items():
        print(f"| p < {a:g} | {a * tests:.0f} | {c} | {c / tests:.2e} |")
    print(f"\nAttribution among {len(keys)} keys (Bonferroni, family-wise p < 1e-6) on the first 1000 of those "
          f"texts: {family_false} false attributions.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
