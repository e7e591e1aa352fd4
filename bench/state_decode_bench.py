"""What decoding a stored detector state costs, part by part, this tree against another checkout.

    .venv/bin/python bench/state_decode_bench.py [--compare-tree /tmp/other-checkout] [--rounds 5]

The cold path (another replica served the client last) decodes the client's state from the bytes the store
returned: the envelope header, then every enabled detector's blob. This times each part on one realistic
state (a 200-request client: template fills, logit probes, plain questions, a linked peer), and the whole
``Engine._open`` with the decoded-state cache off, with ``timeit`` (best of 7 repeats, ns per call). With
``--compare-tree`` each round runs one process per tree, in alternating order (A B B A ...), so that a change
of the host's load hits both; the table shows each part's median over the rounds and the difference.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import timeit
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _state(engine: Any) -> bytes:
    from detectors.features import extract
    from detectors.types import ResponseFeatures

    r = random.Random(3)
    state: bytes | None = None
    t = 1_800_000_000.0
    for i in range(200):
        t += r.uniform(0.5, 60.0)
        kind = r.random()
        if kind < 0.4:
            text = (f"Write a step-by-step guide to {r.choice(['baking', 'sailing', 'chess'])} for grade "
                    f"{r.randint(1, 12)} students, then list {r.randint(3, 9)} quiz questions.")
            body: dict[str, Any] = {"messages": [{"role": "user", "content": text}]}
        elif kind < 0.55:
            body = {"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 1, "logprobs": True,
                    "top_logprobs": 5, "logit_bias": {str(1000 + 20 * i + j): 100 for j in range(20)}}
        else:
            body = {"messages": [{"role": "user", "content": f"What is {r.randint(1, 99)} times "
                                                            f"{r.randint(1, 99)}, and why?"}], "max_tokens": 256}
        body["model"] = "m"
        obs = engine.observe(state, extract("/v1/chat/completions", body, t), t)
        st = engine.observe_response(obs.state, ResponseFeatures(prompt_tokens=30, completion_tokens=200), t)
        state = engine.apply_links(st, {"peer-1": 40}, t).state
    assert state is not None
    return state


def measure() -> dict[str, float]:
    from detectors import state as envelope
    from detectors.combiner import CombinerParams, default_combiner_path
    from detectors.engine import Engine

    engine = Engine.from_params(CombinerParams.from_json(default_combiner_path().read_text(encoding="utf-8")))
    data = _state(engine)
    engine.cache_size = 0
    blobs = envelope.decode(data).blobs
    parts: dict[str, Any] = {"envelope": lambda: envelope.decode(data)}
    for d in engine.detectors:
        parts[d.name] = (lambda load, blob: lambda: load(blob))(d.load, blobs[d.name])
    parts["Engine._open"] = lambda: engine._open(data)
    out = {}
    for name, fn in parts.items():
        n = 2000
        out[name] = min(timeit.repeat(fn, number=n, repeat=7)) / n * 1e9
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compare-tree", type=Path, help="another checkout to compare with")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker or args.compare_tree is None:
        result = measure()
        if args.worker:
            print(json.dumps(result))
        else:
            for name, ns in result.items():
                print(f"{name:14s} {ns:9.0f} ns")
        return
    trees = {"other": args.compare_tree.resolve(), "this": ROOT}
    runs: dict[str, list[dict[str, float]]] = {"other": [], "this": []}
    for i in range(args.rounds):
        for key in ("other", "this") if i % 2 == 0 else ("this", "other"):
            tree = trees[key]
            proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker"], cwd=tree,
                                  env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True,
                                  check=True)
            runs[key].append(json.loads(proc.stdout))
    print(f"{args.rounds} alternating rounds; this tree: {ROOT}; other: {trees['other']}")
    print(f"{'part':14s} {'other ns':>9s} {'this ns':>9s} {'this-other':>10s}")
    for name in runs["this"][0]:
        o = statistics.median(r[name] for r in runs["other"])
        t = statistics.median(r[name] for r in runs["this"])
        print(f"{name:14s} {o:9.0f} {t:9.0f} {t - o:+10.0f}")


if __name__ == "__main__":
    main()
