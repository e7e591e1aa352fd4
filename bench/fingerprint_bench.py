"""Fingerprint checks: the cost of one check round, and how the text similarity treats a greedy divergence.

    .venv/bin/python bench/fingerprint_bench.py [--rounds 20]

1. Two sim backends on loopback, a reference recorded from the first; ``FingerprintChecker.check_now`` is
   timed over ``--rounds`` rounds (2 backends x 8 probes each, logprobs on).
2. Batching nondeterminism at temperature 0 flips a near-tie token and the rest of the greedy answer
   follows another path. For 200 sim-corpus answers cut to 48 tokens, the tail after 25/50/75/90 % of the
   tokens is replaced with another answer's tail and the probe's text similarity (Jaccard of word
   3-gram shingles, ``fingerprint/match.py``) is reported: what one divergent token costs a genuine backend.

Prints markdown tables.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from fingerprint.match import jaccard, text_similarity
from fingerprint.signature import shingles
from gateway.config import FingerprintConfig, ModelConfig, RoutingConfig
from gateway.fingerprint_client import probe_backend
from gateway.fingerprinting import FingerprintChecker
from gateway.routing.router import Router
from gateway.sim.corpus import load_corpus
from gateway.sim.run import start_sim
from gateway.sim.server import SimOptions


async def round_cost(rounds: int) -> None:
    r1, p1 = await start_sim(SimOptions(seed=1))
    r2, p2 = await start_sim(SimOptions(seed=2))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            ref = Path(tmp) / "ref.json"
            ref.write_text((await probe_backend(f"http://127.0.0.1:{p1}", "sim")).dumps())
            cfg = ModelConfig.model_validate({"name": "sim", "backends": [
                {"name": f"b{i}", "url": f"http://127.0.0.1:{p}", "fingerprint_reference": str(ref)}
                for i, p in enumerate((p1, p2))]})
            router = Router([cfg], RoutingConfig(), health_checks=False)
            checker = FingerprintChecker(FingerprintConfig(), router)
            times = []
            for _ in range(rounds):
                t = time.perf_counter()
                results = await checker.check_now()
                times.append(time.perf_counter() - t)
            verdicts = ", ".join(f"{c.backend} {c.verdict} {c.similarity:.2f}" for c in results)
            print("| what | value |\n| --- | --- |")
            print(f"| round (2 backends x 8 probes), median | {statistics.median(times) * 1000:.1f} ms |")
            print(f"| round, max of {rounds} | {max(times) * 1000:.1f} ms |")
            print(f"| reference size | {ref.stat().st_size} bytes |")
            print(f"| verdicts | {verdicts} |\n")
    finally:
        await r1.cleanup()
        await r2.cleanup()


def divergence() -> None:
    corpus = [e for e in load_corpus() if len(e.tokens) >= 48][:200]
    others = corpus[::-1]
    print("| divergence after | median Jaccard of 3-gram shingles | median text similarity (what the matcher "
          "scores: max of Jaccard and the shared-prefix ratio) |\n| --- | --- | --- |")
    for frac in (0.25, 0.5, 0.75, 0.9):
        k = int(48 * frac)
        sims, scored = [], []
        for e, o in zip(corpus, others, strict=True):
            toks = list(e.tokens[:48])
            diverged = toks[:k] + list(o.tokens[k:48])
            a, b = "".join(toks), "".join(diverged)
            sims.append(jaccard(shingles(a), shingles(b)))
            scored.append(text_similarity(a, b))
        print(f"| {frac:.0%} of the tokens | {statistics.median(sims):.2f} | {statistics.median(scored):.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    asyncio.run(round_cost(args.rounds))
    divergence()


if __name__ == "__main__":
    main()
