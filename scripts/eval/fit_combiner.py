"""Fit the benign reference and the combiner on TRAIN traces; write detectors/data/combiner.json (plain JSON).

    .venv/bin/python scripts/eval/fit_combiner.py [--seed 7] [--out detectors/data/combiner.json]

Deterministic for a given seed (seeded generator, KMeans random_state, lbfgs logistic regression).
Steps: (1) benign reference from TRAIN prompts: k-means topic centroids of the hashed embedding, mean and
spread, stop-listed head/tail keys; (2) a TRAIN population of benign personas and attackers is replayed
through the engine to collect per-request detector scores; (3) a logistic regression (weights constrained
to be >= 0, so no detector can *lower* a client's score) is fitted on them; (4) tier thresholds are set so
that the throttle tier sits just above the 99.75th percentile of benign TRAIN clients' highest scores (half
the 0.5 % FPR budget).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression

from detectors.combiner import CombinerParams, TierThresholds
from detectors.engine import Engine
from detectors.features import extract
from detectors.reference import Reference
from detectors.traffic.generator import Bank
from detectors.traffic.population import build, run
from scripts.eval.common import REPO, load_bank

TOPICS = 32


def fit_reference(bank: Bank, seed: int) -> Reference:
    feats = [extract("/v1/chat/completions", {"messages": [{"role": "user", "content": t}]}, 0.0)
             for p in bank.prompts for t in p.turns]
    emb = np.array([f.embedding for f in feats])
    emb = emb[np.abs(emb).sum(axis=1) > 0]
    km = KMeans(n_clusters=TOPICS, random_state=seed, n_init=4).fit(emb)
    cent = km.cluster_centers_ / np.linalg.norm(km.cluster_centers_, axis=1, keepdims=True)
    mean = emb.mean(axis=0)
    sigma2 = float(((emb - mean) ** 2).sum(axis=1).mean())
    keys = Counter(k for f in feats for k in (f.head_key, f.tail_key) if k)
    common = frozenset(k for k, c in keys.items() if c >= 2)
    return Reference(centroids=cent, mean=mean, sigma2=sigma2, persona_offset=0.0, common_keys=common)


def persona_offset(ref: Reference, bank: Bank, seed: int) -> float:
    """p99.5 of the MMD excess of benign personas' first 50 prompts (focused users sit off the mean)."""
    rng = np.random.default_rng(seed)
    cats = ["chat", "math", "qa", "code", "instruction"]
    excess = []
    by_cat = {c: [p for p in bank.prompts if p.category == c] for c in cats}
    for _ in range(400):
        chosen = rng.choice(cats, size=rng.integers(1, 4), replace=False)
        pool = [p for c in chosen for p in by_cat[c]]
        picks = [pool[i] for i in rng.integers(0, len(pool), 50)]
        e = np.array([extract("/v1/completions", {"prompt": p.turns[0]}, 0.0).embedding for p in picks])
        e = e[np.abs(e).sum(axis=1) > 0]
        d = e.mean(axis=0) - ref.mean
        excess.append(float(d @ d) - ref.sigma2 / len(e))
    return float(np.percentile(excess, 99.5))


PRIOR = 0.05  # the score is calibrated to a population where 5 % of snapshots come from attackers


def fit_weights(x: np.ndarray, y: np.ndarray, names: list[str]) -> tuple[float, dict[str, float]]:
    active = list(range(len(names)))
    pos, neg = float(y.sum()), float(len(y) - y.sum())
    sample_weight = np.where(y > 0, PRIOR / (1 - PRIOR) * neg / pos, 1.0)
    while True:
        # C=10: seven features and tens of thousands of snapshots; stronger shrinkage kept a detector that
        # separates perfectly (logit probing) from flagging on its own.
        lr = LogisticRegression(C=10.0, max_iter=2000).fit(x[:, active], y, sample_weight=sample_weight)
        coef = lr.coef_[0]
        if (coef >= 0).all():
            weights = dict.fromkeys(names, 0.0)
            weights.update({names[j]: float(w) for j, w in zip(active, coef, strict=True)})
            return float(lr.intercept_[0]), weights
        active = [j for j, w in zip(active, coef, strict=True) if w >= 0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--benign", type=int, default=600)
    ap.add_argument("--per-kind", type=int, default=15)
    ap.add_argument("--out", type=Path, default=REPO / "detectors" / "data" / "combiner.json")
    args = ap.parse_args()
    bank = load_bank("train")
    ref = fit_reference(bank, args.seed)
    ref = Reference(ref.centroids, ref.mean, ref.sigma2, persona_offset(ref, bank, args.seed), ref.common_keys)
    print(f"reference: {len(bank.prompts)} TRAIN prompts, {len(ref.common_keys)} stop-listed keys, "
          f"persona offset {ref.persona_offset:.4f}")

    pop = build(bank, args.seed, args.benign, args.per_kind, shares=(0.1, 0.25, 0.5), hydra_ks=(5, 20))
    # The linking detector is not a feature: a cluster acts through inheritance (each member takes 0.9 x the
    # best own score among its linked peers), so shared phrasing alone never raises anyone's score.
    names = ["logit_probing", "templates", "coverage", "volume", "timing", "reasoning"]
    # Bootstrap pass: equal weights, so detector scores (and the linking inheritance) can be observed.
    boot = CombinerParams(intercept=-3.0, weights=dict.fromkeys(names, 2.0), reference=ref)
    names_all = [*names, "linking"]
    _, seq = run(pop, Engine.from_params(boot))
    xs, ys = [], []
    for client, verdicts in seq.items():
        label = 1.0 if pop.attacker[client] else 0.0
        step = max(1, len(verdicts) // 40)  # at most ~40 snapshots per client, so no client dominates
        # An attacker's first requests carry no evidence yet; labelling them 1 would only raise the
        # intercept (and every benign score with it). Benign snapshots are all kept.
        first = 10 if label else 0
        for v in verdicts[first::step]:
            row = [v.detector_scores.get(n, 0.0) for n in names]
            xs.append(row)
            ys.append(label)
            if label:
                # Evasion augmentation: the same attacker with any one detector evaded. Without it the fit
                # leans on whichever detector happens to fire on every generated attacker and zeroes the
                # rest (they are collinear here), leaving no second line once that one is evaded.
                for j in range(len(names)):
                    if row[j] > 0:
                        xs.append([0.0 if k == j else r for k, r in enumerate(row)])
                        ys.append(label)
    x, y = np.array(xs), np.array(ys)
    intercept, weights = fit_weights(x, y, names)
    weights["linking"] = 0.0
    print(f"fitted on {len(y)} snapshots ({int(y.sum())} attacker): intercept {intercept:.3f}, weights {weights}")

    # Thresholds: replay TRAIN with the fitted weights; throttle just above the benign clients' max scores at
    # half the FPR budget (the 99.75th percentile: 0.25 % of TRAIN benign clients, leaving room for TEST).
    params = CombinerParams(intercept=intercept, weights=weights, reference=ref,
                            tiers=TierThresholds(enter=(0.5, 0.9, 0.99)))
    _, seq = run(pop, Engine.from_params(params))
    benign_max = np.array([max(v.score for v in vs) for c, vs in seq.items() if not pop.attacker[c]])
    top = sorted(((max(v.score for v in vs), c) for c, vs in seq.items() if not pop.attacker[c]), reverse=True)
    for s, c in top[:3]:  # what pushes the most suspicious benign clients up (for the README's limits)
        v = max(seq[c], key=lambda x: x.score)
        print(f"  benign {c} ({pop.kind[c]}, {len(seq[c])} requests): max {s:.3f}, "
              f"{ {k: round(x, 2) for k, x in v.detector_scores.items() if x > 0} } {list(v.reasons[:2])}")
    q = float(np.percentile(benign_max, 99.75))
    throttle = float(min(max(q + 0.02, 0.6), 0.95))
    watch = float(min(max(np.percentile(benign_max, 99.0), 0.3), throttle - 0.1))
    block = float(max(min(throttle + 0.5 * (1 - throttle), 0.995), throttle + 0.01))
    tiers = TierThresholds(enter=(round(watch, 3), round(throttle, 3), round(block, 3)))
    print(f"benign TRAIN max score: p99 {np.percentile(benign_max, 99):.3f}, p99.75 {q:.3f}, "
          f"max {benign_max.max():.3f} -> tiers {tiers.enter}")
    final = CombinerParams(
        intercept=intercept, weights=weights, tiers=tiers, reference=ref,
        meta={"fitted_by": "scripts/eval/fit_combiner.py", "seed": args.seed, "split": "train",
              "benign_clients": args.benign, "attackers_per_kind": args.per_kind, "snapshots": len(y),
              "detectors": names_all},
    )
    args.out.write_text(final.to_json(), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
