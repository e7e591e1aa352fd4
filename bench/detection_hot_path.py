"""Hot-path cost of detection inside the gateway: ``GatewayDetection.observe`` per request, in microseconds.

What is timed is exactly what the pipeline runs between the store's ``hot_path`` and admission: feature
extraction from the parsed body (default hashed embedder), the engine folding the request into the client's
stored state bytes (deserialise, every enabled detector, combine, tier, serialise), and the gateway's
adapter (tier, metrics, evidence). ``account`` (response folding, cross-account linking, state save, alerts)
runs off the client's critical path; it is timed separately for information. ``harden`` is timed too.

Warm and cold state: the gateway's engine keeps the decoded state of the clients it served last, keyed by
the state bytes it wrote, so a replica that reads back its own bytes skips decoding (warm: the memory
store always, Redis with one replica or sticky clients). A client last served by another replica arrives
cold (decoded from bytes). ``detection.observe`` is the warm path of the gateway's own engine; the sans-IO
part is timed on the same inputs on a *second* engine that never saw those bytes, i.e. the cold path.
(Until 2026-11-26 18:00 the sans-IO comparison ran on the gateway's own engine and, every other request,
consumed its cached entry first, so half of the ``detection.observe`` samples were cold: p50s measured
before then mix the two paths.)

Traffic: real prompts from ``../shared/data/prompts.jsonl`` (non-red-team; multi-turn conversations kept
as conversations) spread over benign clients, plus logit probers and template harvesters, so states are
warm and of realistic size. Runs on the memory store, in one process, no network.

    .venv/bin/python bench/detection_hot_path.py [--requests 6000] [--clients 60] [--combiner F] [--profiles] [--json]

``--profiles``: a detection profile per plan (``detection.class_weights: {apps: {templates: 0}}``); half the
clients are on ``apps``, the others send every fifth request with an ``apps`` credential (two plans recorded:
judged by the strictest).
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

from prometheus_client import CollectorRegistry

from detectors.engine import Engine
from detectors.features import extract
from gateway.config import GatewayConfig, parse_config
from gateway.detection import GatewayDetection
from gateway.hardening import harden
from gateway.hooks import ResponseFacts
from gateway.policy import Policy
from gateway.principal import Principal
from gateway.store.base import AdmitRequest
from gateway.store.memory import MemoryStore
from gateway.telemetry.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "prompts.jsonl"
CHAT = "/v1/chat/completions"


def load_conversations(limit: int, seed: int) -> list[list[str]]:
    rows = [json.loads(x) for x in DATA.read_text(encoding="utf-8").split("\n") if x]
    convs = [r["turns"] for r in rows if r["category"] != "harmless-redteam"]
    random.Random(seed).shuffle(convs)
    return convs[:limit]


def benign_body(turns: list[str], k: int) -> dict[str, Any]:
    msgs: list[dict[str, str]] = []
    for i, t in enumerate(turns[: k + 1]):
        if i:
            msgs.append({"role": "assistant", "content": "Sure — here is an answer to that."})
        msgs.append({"role": "user", "content": t})
    return {"model": "sim", "messages": msgs, "max_tokens": 512, "temperature": 0.7}


def probe_body(i: int) -> dict[str, Any]:
    return {"model": "sim", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 1,
            "logprobs": True, "top_logprobs": 20, "logit_bias": {str(1000 + 50 * i + j): 100 for j in range(50)}}


TOPICS = ["photosynthesis", "binary search", "the French revolution", "inflation", "TCP handshakes", "vaccines"]


def harvest_body(rnd: random.Random) -> dict[str, Any]:
    text = (f"You are an expert tutor. Write a detailed, step-by-step explanation of {rnd.choice(TOPICS)} for a "
            f"student in grade {rnd.randint(5, 12)}, then give {rnd.randint(3, 9)} quiz questions with answers.")
    return {"model": "sim", "messages": [{"role": "user", "content": text}], "max_tokens": 2048}


def engine_alone(engine: Engine, state: bytes | None, body: dict[str, Any], now: float) -> tuple[int, int]:
    """What ``GatewayDetection.observe`` runs of the core: features + ``observe_pending`` (no serialisation;
    ``observe`` on builds that predate it, for side-by-side runs against an older tree)."""
    observe = getattr(engine, "observe_pending", None) or engine.observe
    e0 = time.perf_counter_ns()
    observe(state, extract(CHAT, body, now), now)
    return e0, time.perf_counter_ns()


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def run(requests: int, clients: int, seed: int, combiner: str | None, profiles: bool = False
              ) -> dict[str, Any]:
    raw: dict[str, Any] = {"models": [{"name": "sim", "backends": [{"name": "a", "url": "http://x"}]}]}
    if combiner:
        raw["detection"] = {"combiner_file": combiner}
    if profiles:
        raw.setdefault("detection", {})["class_weights"] = {"apps": {"templates": 0}}
        plan_limits = {"requests_per_minute": 600, "tokens_per_minute": 200_000}
        raw["limits"] = {"default": plan_limits, "apps": plan_limits}
    cfg: GatewayConfig = parse_config(raw, env={})
    policy = Policy.from_config(cfg)
    det = GatewayDetection.from_config(cfg, policy, metrics=Metrics(CollectorRegistry()))
    # The cold-path engine: same parameters, its own decoded-state cache, which never holds the bytes the
    # gateway's engine wrote (so it decodes every time and leaves the gateway engine's cache alone).
    cold = Engine(det.engine.params, det.engine.detectors, det.engine.weights, det.engine.tiers, det.engine.inherit)
    cold.cache_size = 0
    store = MemoryStore()
    rnd = random.Random(seed)
    convs = load_conversations(clients * 40, seed)
    kinds = ["benign"] * max(1, clients - clients // 6) + ["probe"] * (clients // 12) + ["harvest"] * (clients // 12)
    names = [f"{k}-{i}" for i, k in enumerate(kinds)]
    cursor = {n: [0, 0] for n in names}  # conversation index, turn index
    now = 1_800_000_000.0
    observe_us: list[float] = []
    observe_cpu_us: list[float] = []  # CPU time of this thread: excludes time descheduled on a busy host
    engine_us: list[float] = []
    account_us: list[float] = []
    harden_us: list[float] = []
    state_bytes: list[int] = []
    conv_i = 0
    for r in range(requests):
        name = rnd.choice(names)
        kind = name.split("-")[0]
        now += rnd.expovariate(1 / 0.5)
        if kind == "benign":
            c = cursor[name]
            if c[0] == 0 or c[1] + 1 >= len(convs[c[0] % len(convs)]):
                conv_i += 1
                c[0], c[1] = conv_i, 0
            else:
                c[1] += 1
            body = benign_body(convs[c[0] % len(convs)], c[1])
        elif kind == "probe":
            body = probe_body(r)
        else:
            body = harvest_body(rnd)
        res = await store.hot_path(AdmitRequest(name, 100, policy.limits_by_tier))
        plan = "apps" if profiles and (names.index(name) % 2 == 0 or r % 5 == 0) else "default"
        principal = Principal(name, tenant="bench", limit_class=plan)
        # The sans-IO part alone, on the same inputs (the engine is pure), for comparison. The two run in
        # alternating order: whichever runs second finds the state and body warm in the CPU caches.
        if r % 2:
            e0, e1 = engine_alone(cold, res.detector_state, body, res.now)
        c0 = time.thread_time_ns()
        t0 = time.perf_counter_ns()
        session = det.observe(principal, CHAT, body, res.detector_state, res.tier, res.now)
        t1 = time.perf_counter_ns()
        c1 = time.thread_time_ns()
        if not r % 2:
            e0, e1 = engine_alone(cold, res.detector_state, body, res.now)
        t2a = time.perf_counter_ns()
        harden(body, policy.tier(session.outcome.tier).hardening)
        t2 = time.perf_counter_ns()
        await session.account(store, ResponseFacts(status=200, prompt_tokens=50, completion_tokens=200,
                                                    finish_reasons=["stop"]))
        t3 = time.perf_counter_ns()
        if r >= requests // 10:  # the first 10 % warm caches and states up
            observe_us.append((t1 - t0) / 1000)
            observe_cpu_us.append((c1 - c0) / 1000)
            engine_us.append((e1 - e0) / 1000)
            harden_us.append((t2 - t2a) / 1000)
            account_us.append((t3 - t2) / 1000)
        if res.detector_state is not None:
            state_bytes.append(len(res.detector_state))
    return {
        "requests_timed": len(observe_us),
        "clients": len(names),
        "observe_us": {"p50": statistics.median(observe_us), "p90": pct(observe_us, 0.90),
                       "p99": pct(observe_us, 0.99), "mean": statistics.fmean(observe_us)},
        "observe_cpu_us": {"p50": statistics.median(observe_cpu_us), "p99": pct(observe_cpu_us, 0.99)},
        "cold_sans_io_us": {"p50": statistics.median(engine_us), "p99": pct(engine_us, 0.99)},
        "harden_us": {"p50": statistics.median(harden_us), "p99": pct(harden_us, 0.99)},
        "account_us_off_path": {"p50": statistics.median(account_us), "p99": pct(account_us, 0.99)},
        "state_bytes": {"p50": statistics.median(state_bytes), "max": max(state_bytes)},
        "python": sys.version.split()[0],
        "load_avg_1m": os.getloadavg()[0],
        "cpus": os.cpu_count(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=6000)
    ap.add_argument("--clients", type=int, default=60)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--combiner", help="combiner JSON (default: the shipped detectors/data/combiner.json)")
    ap.add_argument("--profiles", action="store_true", help="detection profiles per plan (see the docstring)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    result = asyncio.run(run(args.requests, args.clients, args.seed, args.combiner, args.profiles))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        o, h, a, s = result["observe_us"], result["harden_us"], result["account_us_off_path"], result["state_bytes"]
        print(f"detection.observe   p50 {o['p50']:7.1f} us  p90 {o['p90']:7.1f} us  p99 {o['p99']:7.1f} us"
              f"  ({result['requests_timed']} requests, {result['clients']} clients)")
        c = result["observe_cpu_us"]
        print(f"  thread CPU time     p50 {c['p50']:7.1f} us  p99 {c['p99']:7.1f} us")
        e = result["cold_sans_io_us"]
        print(f"cold path: features + engine, state decoded from bytes (sans-IO) p50 {e['p50']:7.1f} us"
              f"  p99 {e['p99']:7.1f} us")
        print(f"harden              p50 {h['p50']:7.1f} us  p99 {h['p99']:7.1f} us")
        print(f"account (off path)  p50 {a['p50']:7.1f} us  p99 {a['p99']:7.1f} us")
        print(f"host: {result['cpus']} CPUs, 1-minute load average {result['load_avg_1m']:.1f}")
        print(f"state size          p50 {s['p50']:7.0f} B   max {s['max']:7.0f} B")
    return 0


if __name__ == "__main__":
    sys.exit(main())
