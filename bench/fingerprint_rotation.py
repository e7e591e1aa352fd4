"""How fast does a backend that records every probe it is sent learn a rotating private probe set?

    .venv/bin/python bench/fingerprint_rotation.py [--trials 2000] [--k 8]

For sets of n probes with k sent per round (``fingerprint.probes_per_check``), drawn as the checker draws
them (``fingerprint.probeset.sample`` with ``secrets.SystemRandom``), reports the rounds until every probe
has been sent at least once (median and 10th percentile over ``--trials`` runs) and the share of the set
sent after 1, 5 and 10 rounds. A round is one check; a check that mismatches sends a second, confirming
round. No network: this measures the sampling, which is all rotation adds.

Prints a markdown table.
"""

from __future__ import annotations

import argparse
import secrets
import statistics

from fingerprint import Probe
from fingerprint.probeset import sample

CHECKPOINTS = (1, 5, 10)


def run(n: int, k: int, trials: int) -> tuple[float, int, dict[int, float]]:
    """(median rounds to cover the set, 10th percentile, share of the set sent after each checkpoint)."""
    rng = secrets.SystemRandom()
    probes = tuple(Probe(f"p{i}", f"question {i}") for i in range(n))
    rounds: list[int] = []
    shares: dict[int, list[float]] = {c: [] for c in CHECKPOINTS}
    for _ in range(trials):
        seen: set[str] = set()
        r, covered_at = 0, 0
        while not covered_at or r < max(CHECKPOINTS):
            r += 1
            seen |= {p.id for p in sample(probes, k, rng)}
            if r in shares:
                shares[r].append(len(seen) / n)
            if len(seen) == n and not covered_at:
                covered_at = r
        rounds.append(covered_at)
    rounds.sort()
    return statistics.median(rounds), rounds[len(rounds) // 10], {c: statistics.mean(v) for c, v in shares.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=2000)
    ap.add_argument("--k", type=int, default=8)
    args = ap.parse_args()
    print(f"| probes in the set | rounds until all were sent (median / p10) | "
          f"{' | '.join(f'share sent after {c}' for c in CHECKPOINTS)} |")
    print("| --- | --- | " + " | ".join("---" for _ in CHECKPOINTS) + " |")
    for n in (args.k, 3 * args.k, 5 * args.k, 100):
        median, p10, share = run(n, args.k, args.trials)
        print(f"| {n} | {median:.0f} / {p10} | " + " | ".join(f"{share[c]:.2f}" for c in CHECKPOINTS) + " |")


if __name__ == "__main__":
    main()
