"""Cost of the MiniLM embedder (``detection.embedder: minilm``): the encoder off the request path, and what
lands on the request path (the semantic detector folding a vector in, the worker's ``attach``).

    .venv/bin/python bench/semantic_bench.py [--prompts 256] [--threads 1]

Prompts: the bundled sample (real prompts, ``detectors/traffic/sample_prompts.jsonl``), first turns. The
encoder runs in batches of 1, 8 and 32 on ``--threads`` torch threads (the gateway's default is 1: the
encoder must not take the event loop's core); µs per prompt is wall time / prompts. The request-path rows
time ``Engine.observe`` of the semantic detector alone (p50/p99 over a 300-request history) with 0 and 1
vectors per request, and ``EmbeddingWorker.attach`` (hand over pending vectors, queue the prompt).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import time
from importlib import resources

import numpy as np

from detectors.combiner import CombinerParams, default_combiner_path
from detectors.engine import DetectorSettings, Engine
from detectors.features import extract
from detectors.neural import load_encoder
from detectors.semantic import SemanticReference, default_semantic_path
from gateway.embedding import EmbeddingWorker


def _pct(xs: list[float]) -> str:
    a = np.array(xs) * 1e6
    return f"p50 {np.percentile(a, 50):.1f} µs, p99 {np.percentile(a, 99):.1f} µs"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    lines = (resources.files("detectors.traffic") / "sample_prompts.jsonl").read_text("utf-8").split("\n")
    texts = [json.loads(x)["turns"][0] for x in lines if x.strip()][: args.prompts]
    t0 = time.perf_counter()
    enc = load_encoder(threads=args.threads)
    print(f"model load (torch + transformers import, weights): {time.perf_counter() - t0:.1f} s")
    enc.encode(texts[:8])  # warm-up
    chars = np.mean([len(t) for t in texts])
    print(f"encoder, {len(texts)} real prompts (mean {chars:.0f} chars), {args.threads} torch thread(s):")
    vecs = None
    for bs in (1, 8, 32):
        t0 = time.perf_counter()
        vecs = enc.encode(texts, batch_size=bs)
        dt = time.perf_counter() - t0
        print(f"  batch {bs:>2}: {dt / len(texts) * 1e6:>7.0f} µs/prompt ({len(texts) / dt:.0f} prompts/s)")
    assert vecs is not None

    params = CombinerParams.from_json(default_combiner_path().read_text(encoding="utf-8"))
    ref = SemanticReference.from_json(default_semantic_path().read_text(encoding="utf-8"))
    only = {n: DetectorSettings(enabled=False) for n in Engine.from_params(params).names}
    engine = Engine.from_params(params, detectors={**only, "semantic": DetectorSettings(True, ref.weight,
                                                                                          {"reference": ref})})
    feats = extract("/v1/chat/completions", {"messages": [{"role": "user", "content": texts[0]}]}, 0.0)
    state = None
    with_vec: list[float] = []
    without: list[float] = []
    for i in range(300):
        f = dataclasses.replace(feats, neural=vecs[i % len(vecs)][None, :]) if i % 2 == 0 else feats
        t0 = time.perf_counter()
        state = engine.observe(state, f, 1000.0 + i).state
        (with_vec if i % 2 == 0 else without).append(time.perf_counter() - t0)
    print("request path (semantic detector only, steady state):")
    print(f"  Engine.observe with 1 vector:   {_pct(with_vec[20:])}")
    print(f"  Engine.observe with no vector:  {_pct(without[20:])}")
    assert state is not None
    print(f"  state: {len(state)} bytes")

    async def attach_cost() -> list[float]:
        w = EmbeddingWorker(enc, queue_size=100_000)
        w._queue = asyncio.Queue(100_000)  # not started: time attach alone, nothing is encoded
        for i in range(2000):
            w._deliver(f"c{i % 100}", vecs[i % len(vecs)])
        body = {"messages": [{"role": "user", "content": texts[1]}]}
        out = []
        for i in range(2000):
            t0 = time.perf_counter()
            w.attach(f"c{i % 100}", "/v1/chat/completions", body, feats)
            out.append(time.perf_counter() - t0)
        return out

    print(f"  EmbeddingWorker.attach:         {_pct(asyncio.run(attach_cost()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
