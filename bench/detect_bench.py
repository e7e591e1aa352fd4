"""Hot-path cost of detection: feature extraction + ``Engine.observe`` per request, default embedder.

    .venv/bin/python bench/detect_bench.py [--requests 3000] [--clients 20]

Requests come from the bundled prompt sample through the traffic generator (benign personas and
harvesters); each client's state is carried from request to request as the gateway does, so the figures
are steady-state (a 200-request history), not a fresh client. Prints p50/p90/p99 in microseconds for
``extract``, ``observe`` and both (the request path), plus ``observe_response`` and ``apply_links``
(which the gateway runs after the response, off the client's path), and the largest state seen.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from importlib import resources

import numpy as np

from detectors.combiner import CombinerParams, default_combiner_path
from detectors.engine import Engine
from detectors.features import extract
from detectors.replay import response_features
from detectors.traffic.corpus import parse_prompts
from detectors.traffic.generator import EPOCH, Bank, attacker_client, benign_client


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--clients", type=int, default=20)
    args = ap.parse_args()
    lines = (resources.files("detectors.traffic") / "sample_prompts.jsonl").read_text("utf-8").split("\n")
    bank = Bank(parse_prompts(lines), "all")
    engine = Engine.from_params(CombinerParams.from_json(default_combiner_path().read_text(encoding="utf-8")))
    rng = random.Random(5)
    records = []
    per = args.requests // args.clients + 200
    for i in range(args.clients):
        if i % 4 == 3:
            records += attacker_client(rng, bank, f"a{i}", rng.choice(["template", "cot", "self_instruct"]), per, EPOCH)
        else:
            records += benign_client(rng, bank, f"b{i}", EPOCH, n=per)
    records.sort(key=lambda r: r["ts"])
    states: dict[str, bytes | None] = {}
    seen: dict[str, int] = {}
    t_ext, t_obs, t_resp, t_link, sizes = [], [], [], [], []
    clock = time.perf_counter_ns
    for r in records:
        c = r["client"]
        seen[c] = seen.get(c, 0) + 1
        t0 = clock()
        f = extract(r["endpoint"], r["body"], r["ts"])
        t1 = clock()
        obs = engine.observe(states.get(c), f, r["ts"])
        t2 = clock()
        resp = response_features(r, r["body"])
        st = engine.observe_response(obs.state, resp, r["ts"]) if resp else obs.state
        t3 = clock()
        st = engine.apply_links(st, {"peer-x": 1}, r["ts"]).state
        t4 = clock()
        states[c] = st
        if seen[c] > 200:  # steady state only: a client with a 200-request history
            t_ext.append(t1 - t0)
            t_obs.append(t2 - t1)
            t_resp.append(t3 - t2)
            t_link.append(t4 - t3)
            sizes.append(len(st))
    ext, obs_ = np.array(t_ext) / 1e3, np.array(t_obs) / 1e3
    print(f"{len(ext)} steady-state requests, {args.clients} clients, {len(engine.detectors)} detectors")
    print("| step | p50 us | p90 us | p99 us |")
    print("|---|---|---|---|")
    for name, xs in (("extract", ext), ("observe", obs_), ("extract + observe (request path)", ext + obs_),
                     ("observe_response (after response)", np.array(t_resp) / 1e3),
                     ("apply_links (after response)", np.array(t_link) / 1e3)):
        print(f"| {name} | {np.percentile(xs, 50):.0f} | {np.percentile(xs, 90):.0f} | {np.percentile(xs, 99):.0f} |")
    print(f"state bytes: p50 {int(np.percentile(sizes, 50))}, max {max(sizes)} (budget 32768)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
