"""Detection's CPU per request, this tree against another checkout, in lock-step (for a shared, noisy host).

    .venv/bin/python bench/detection_ab.py --compare-tree ../other-checkout [--mode hot|wrk|extract] [--rounds 30]

Two worker processes, one per tree, run the same workload in chunks, alternately (A B B A A B ...), so a
change of the host's load over the run hits both alike; each measures the *thread CPU time* of its steps
(time descheduled by other processes does not count). Modes: ``hot`` is ``detection_hot_path.py``'s traffic
(60 clients: benign conversations, logit probers, template harvesters), ``wrk`` the throughput benchmark's
(512 clients, 4 096 first-turn prompts, 0.5 ms apart), both through ``GatewayDetection.observe`` and
``account`` on the memory store after a 3 000-request warm-up; ``extract`` times feature extraction alone
over both sets of bodies. Prints the mean per request of each step for both trees and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ab_workers  # bench/ is sys.path[0] when run as a script

ROOT = Path(__file__).resolve().parents[1]
CHAT = "/v1/chat/completions"


def _worker(mode: str) -> None:
    sys.path.insert(0, str(Path.cwd() / "bench"))  # the worker's own tree: its copy of the helpers
    import detection_hot_path as dhp
    from detection_gateway_throughput import bodies

    from detectors.features import extract

    rnd = random.Random(7)
    chunk: Callable[[int], dict[str, Any]]
    if mode == "extract":
        items = [json.loads(b) for b in bodies(2000)]
        items += [dhp.benign_body(c, rnd.randrange(len(c))) for c in dhp.load_conversations(1000, 1)]
        items += [dhp.harvest_body(rnd) for _ in range(100)] + [dhp.probe_body(i) for i in range(100)]
        rnd.shuffle(items)
        for b in items:  # warm the token caches
            extract(CHAT, b, 1.0)

        def chunk(k: int) -> dict[str, Any]:
            start = (k * 500) % len(items)
            t0 = time.thread_time()
            for b in items[start : start + 500]:
                extract(CHAT, b, 1.0)
            return {"extract": time.thread_time() - t0, "n": len(items[start : start + 500])}
    else:
        from prometheus_client import CollectorRegistry

        from gateway.config import parse_config
        from gateway.detection import GatewayDetection
        from gateway.hooks import ResponseFacts
        from gateway.policy import Policy
        from gateway.principal import Principal
        from gateway.store.base import AdmitRequest
        from gateway.store.memory import MemoryStore
        from gateway.telemetry.metrics import Metrics

        cfg = parse_config({"models": [{"name": "sim", "backends": [{"name": "a", "url": "http://x"}]}]}, env={})
        policy = Policy.from_config(cfg)
        det = GatewayDetection.from_config(cfg, policy, metrics=Metrics(CollectorRegistry()))
        store = MemoryStore()
        if mode == "wrk":
            wrk_bodies = [json.loads(b) for b in bodies(4096)]

            def nxt(i: int) -> tuple[str, dict[str, Any], float]:
                return f"bench-{rnd.randrange(512)}", wrk_bodies[rnd.randrange(4096)], 0.0005
        else:
            convs = dhp.load_conversations(60 * 40, 1)
            names = [f"benign-{i}" for i in range(50)] + [f"probe-{i}" for i in range(5)]
            names += [f"harvest-{i}" for i in range(5)]
            cursor = {n: [0, 0] for n in names}
            conv_i = [0]

            def nxt(i: int) -> tuple[str, dict[str, Any], float]:
                name = rnd.choice(names)
                kind = name.split("-")[0]
                if kind == "probe":
                    return name, dhp.probe_body(i), rnd.expovariate(2.0)
                if kind == "harvest":
                    return name, dhp.harvest_body(rnd), rnd.expovariate(2.0)
                c = cursor[name]
                if c[0] == 0 or c[1] + 1 >= len(convs[c[0] % len(convs)]):
                    conv_i[0] += 1
                    c[0], c[1] = conv_i[0], 0
                else:
                    c[1] += 1
                return name, dhp.benign_body(convs[c[0] % len(convs)], c[1]), rnd.expovariate(2.0)

        clock = {"now": 1_800_000_000.0, "i": 0}

        async def run(n: int) -> tuple[float, float, list[int]]:
            observe_ns = account_ns = 0
            samples: list[int] = []
            for _ in range(n):
                client, body, dt = nxt(clock["i"])
                clock["i"] += 1
                clock["now"] += dt
                res = await store.hot_path(AdmitRequest(client, 100, policy.limits_by_tier))
                t0 = time.thread_time_ns()
                s = det.observe(Principal(client), CHAT, body, res.detector_state, res.tier, clock["now"])
                t1 = time.thread_time_ns()
                await s.account(store, ResponseFacts(status=200, prompt_tokens=50, completion_tokens=16,
                                                     finish_reasons=["length"]))
                t2 = time.thread_time_ns()
                observe_ns += t1 - t0
                account_ns += t2 - t1
                samples.append(t1 - t0)
            return observe_ns / 1e9, account_ns / 1e9, samples

        loop = asyncio.new_event_loop()
        loop.run_until_complete(run(3000))  # warm-up: states, caches

        def chunk(k: int) -> dict[str, Any]:
            o, a, s = loop.run_until_complete(run(200))
            return {"observe": o, "account": a, "n": 200, "samples": s}

    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        print(json.dumps(chunk(int(line))), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--compare-tree", type=Path, required=True, help="the other checkout (e.g. the build before)")
    ap.add_argument("--mode", choices=("hot", "wrk", "extract"), default="hot")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _worker(args.worker)
        return 0
    trees = {"other": args.compare_tree.resolve(), "this": ROOT}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--compare-tree", ".", "--worker", args.mode]
    procs = ab_workers.spawn(cmd, trees)  # cwd and PYTHONPATH select the tree a worker imports
    totals: dict[str, dict[str, float]] = {k: {} for k in trees}
    samples: dict[str, list[int]] = {k: [] for k in trees}
    load0 = os.getloadavg()[0]
    for r in range(args.rounds):
        for k in list(trees) if r % 2 == 0 else list(trees)[::-1]:
            p = procs[k]
            assert p.stdin is not None and p.stdout is not None
            p.stdin.write(f"{r}\n")
            p.stdin.flush()
            res = json.loads(p.stdout.readline())
            samples[k] += res.pop("samples", [])
            for part, v in res.items():
                totals[k][part] = totals[k].get(part, 0.0) + v
    for p in procs.values():
        assert p.stdin is not None
        p.stdin.write("quit\n")
        p.stdin.flush()
        p.wait()
    print(f"mode {args.mode}, {args.rounds} alternating rounds, load average {load0:.2f} -> {os.getloadavg()[0]:.2f}")
    print(f"this tree: {ROOT}; other: {trees['other']}")
    for part in [x for x in totals["other"] if x != "n"]:
        o = totals["other"][part] / totals["other"]["n"] * 1e6
        t = totals["this"][part] / totals["this"]["n"] * 1e6
        print(f"  {part:8s} mean thread CPU per request: other {o:7.1f} us   this {t:7.1f} us   this/other {t / o:.3f}")
    if samples["other"]:
        o, t = statistics.median(samples["other"]) / 1e3, statistics.median(samples["this"]) / 1e3
        print(f"  observe  p50 thread CPU:                other {o:7.1f} us   this {t:7.1f} us   "
              f"this/other {t / o:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
