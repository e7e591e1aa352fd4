"""The detection hot path's warm and cold cases, this tree against another checkout, in lock-step.

    .venv/bin/python bench/detection_cold_ab.py --compare-tree /tmp/other-checkout [--rounds 30] [--chunk 200]

Cold means the client's state must be decoded from the bytes the store returned (another replica served the
client last: the normal case with several replicas and no sticky routing); warm means this replica's engine
still holds it decoded. The workload is ``detection_hot_path.py``'s (60 clients: benign conversations from
real prompts, logit probers, template harvesters) through ``GatewayDetection.observe`` and ``account`` on the
memory store. Per request, each worker times

- ``warm``: ``GatewayDetection.observe`` (the gateway's own engine: its decoded-state cache hits),
- ``cold``: feature extraction + ``Engine.observe_pending`` on a second engine with no decoded-state cache,
  on the same stored bytes (what ``detection_hot_path.py`` reports as the cold path),
- ``decode``: that second engine's state decoding alone (``Engine._open``) on the same bytes,

in the order warm, cold, decode on even requests and cold, decode, warm on odd ones (whichever runs second
finds the body and state in the CPU caches). The memory store hands back the very bytes object the engine
wrote (Python has its hash already); ``--fresh-bytes`` gives the cold path and the decoding a new, equal
object instead, as Redis does, so that looking the bytes up in the decoded-state cache costs what it costs
there. Two worker processes, one per tree, run chunks alternately
(A B B A A B ...) after a 1 000-request warm-up, so a change of the host's load hits both alike. Wall-clock
p50 (``perf_counter``) and thread-CPU p50 are printed per tree with their ratio.
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
from pathlib import Path
from typing import Any

import ab_workers  # bench/ is sys.path[0] when run as a script

ROOT = Path(__file__).resolve().parents[1]
CHAT = "/v1/chat/completions"
PARTS = ("warm", "cold", "decode")


def _worker(chunk_size: int, fresh: bool) -> None:
    sys.path.insert(0, str(Path.cwd() / "bench"))  # the worker's own tree: its copy of the helpers
    import detection_hot_path as dhp
    from prometheus_client import CollectorRegistry

    from detectors.engine import Engine
    from detectors.features import extract
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
    e = det.engine
    cold = Engine(e.params, e.detectors, e.weights, e.tiers, e.inherit)
    cold.cache_size = 0
    store = MemoryStore()
    rnd = random.Random(1)
    convs = dhp.load_conversations(60 * 40, 1)
    names = [f"benign-{i}" for i in range(50)] + [f"probe-{i}" for i in range(5)] + [f"harvest-{i}" for i in range(5)]
    cursor = {n: [0, 0] for n in names}
    clock = {"now": 1_800_000_000.0}
    count = {"i": 0, "conv": 0}

    def body_for(name: str, i: int) -> dict[str, Any]:
        kind = name.split("-")[0]
        if kind == "probe":
            return dhp.probe_body(i)
        if kind == "harvest":
            return dhp.harvest_body(rnd)
        c = cursor[name]
        if c[0] == 0 or c[1] + 1 >= len(convs[c[0] % len(convs)]):
            count["conv"] += 1
            c[0], c[1] = count["conv"], 0
        else:
            c[1] += 1
        return dhp.benign_body(convs[c[0] % len(convs)], c[1])

    def timed(fn: Any, *args: Any) -> tuple[int, int]:
        c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
        fn(*args)
        return time.perf_counter_ns() - t0, time.thread_time_ns() - c0

    def warm(out: list[Any], name: str, data: bytes | None, tier: int, body: dict[str, Any], now: float) -> None:
        out.append(det.observe(Principal(name), CHAT, body, data, tier, now))

    def cold_path(data: bytes | None, body: dict[str, Any], now: float) -> None:
        cold.observe_pending(data, extract(CHAT, body, now), now)

    async def run(n: int) -> dict[str, list[tuple[int, int]]]:
        out: dict[str, list[tuple[int, int]]] = {p: [] for p in PARTS}
        for _ in range(n):
            name = rnd.choice(names)
            i = count["i"] = count["i"] + 1
            clock["now"] += rnd.expovariate(2.0)
            body = body_for(name, i)
            res = await store.hot_path(AdmitRequest(name, 100, policy.limits_by_tier))
            data, now = res.detector_state, clock["now"]
            # Redis hands back a new bytes object each time; the memory store the very object the engine wrote
            cold_data = bytes(bytearray(data)) if fresh and data is not None else data
            session: list[Any] = []
            steps = {
                "warm": (warm, session, name, data, res.tier, body, now),
                "cold": (cold_path, cold_data, body, now),
                "decode": (cold._open, cold_data and bytes(bytearray(cold_data)) if fresh else cold_data),
            }
            for part in PARTS if i % 2 == 0 else ("cold", "decode", "warm"):
                if part == "decode" and data is None:
                    continue
                out[part].append(timed(*steps[part]))
            await session[0].account(store, ResponseFacts(status=200, prompt_tokens=50, completion_tokens=200,
                                                          finish_reasons=["stop"]))
        return out

    loop = asyncio.new_event_loop()
    loop.run_until_complete(run(1000))  # warm-up: states grow to their usual size, caches fill
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        print(json.dumps(loop.run_until_complete(run(chunk_size))), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--compare-tree", type=Path, required=True, help="the other checkout (e.g. the build before)")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--chunk", type=int, default=200, help="requests per chunk")
    ap.add_argument("--fresh-bytes", action="store_true",
                    help="hand the cold path a new bytes object equal to the stored one, as Redis does")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _worker(args.chunk, args.fresh_bytes)
        return 0
    trees = {"other": args.compare_tree.resolve(), "this": ROOT}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--compare-tree", ".", "--worker", "--chunk", str(args.chunk)]
    cmd += ["--fresh-bytes"] if args.fresh_bytes else []
    procs = ab_workers.spawn(cmd, trees)  # cwd and PYTHONPATH select the tree a worker imports
    samples: dict[str, dict[str, list[tuple[int, int]]]] = {k: {p: [] for p in PARTS} for k in trees}
    load0 = os.getloadavg()[0]
    t0 = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    for r in range(args.rounds):
        for k in list(trees) if r % 2 == 0 else list(trees)[::-1]:
            p = procs[k]
            assert p.stdin is not None and p.stdout is not None
            p.stdin.write(f"{r}\n")
            p.stdin.flush()
            for part, xs in json.loads(p.stdout.readline()).items():
                samples[k][part] += [tuple(x) for x in xs]
    for p in procs.values():
        assert p.stdin is not None
        p.stdin.write("quit\n")
        p.stdin.flush()
        p.wait()
    t1 = time.strftime("%H:%M:%S", time.gmtime())
    fresh = ", fresh bytes objects (as from Redis)" if args.fresh_bytes else ""
    print(f"{args.rounds} alternating rounds of {args.chunk} requests{fresh}, {t0}-{t1} UTC, "
          f"load average {load0:.2f} -> {os.getloadavg()[0]:.2f}")
    print(f"this tree: {ROOT}; other: {trees['other']}")
    for part in PARTS:
        for j, what in ((0, "wall"), (1, "thread CPU")):
            o = statistics.median(x[j] for x in samples["other"][part]) / 1e3
            t = statistics.median(x[j] for x in samples["this"][part]) / 1e3
            print(f"  {part:6s} p50 {what:10s}: other {o:7.1f} us   this {t:7.1f} us   this/other {t / o:.3f}"
                  f"   ({len(samples['this'][part])} requests)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
