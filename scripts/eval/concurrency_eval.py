"""Harvesters that run their requests concurrently, through the real gateway.

``ipgate replay`` (and the main evaluation) feeds each client's requests one after another. A distillation
pipeline does not wait for one answer before sending the next request: it keeps many in flight. This script
sends each held-out harvester's first 300 requests (template, self-instruct, topic sweep, chain-of-thought;
TEST split, shipped combiner, nothing fitted) through an in-process gateway (memory store, or one real
``redis-server`` shared by two gateways taking turns) in front of the simulated backend with a fixed answer
latency, with ``--concurrency`` requests of the client in flight at a time, all harvesters at once. It prints
per concurrency: the share of the client's requests that reached its detector state, the share of harvesters
flagged (stored tier >= the throttle tier) after their 300 requests, and the median number of requests
served (200) before the first refusal (429/403).

    .venv/bin/python scripts/eval/concurrency_eval.py [--per-kind 5] [--requests 300] [--latency-ms 40]
        [--concurrency 1,4,16] [--replicas 1|2] [--seed 7]

With ``--replicas 2`` it starts a private ``redis-server`` (Debian's, on a free port) and two gateways on it;
each harvester's requests alternate between them (a round-robin load balancer).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import openai

from detectors import state as envelope
from detectors.traffic.population import build
from gateway.store.base import AdmitRequest, Limits
from scripts.eval.common import load_bank
from tests.support.harness import GatewayHandle, gateway_config, running_gateway, settled, sim_backend

KINDS = ("template", "self_instruct", "topic_sweep", "cot")
THROTTLE = 2  # the default policy's first throttling tier (normal, watch, throttle, block)
PROBE = Limits(requests_per_minute=10**6, tokens_per_minute=10**9, burst_requests=10**6, burst_tokens=10**9)


async def attack(gws: list[GatewayHandle], client: str, bodies: list[dict[str, Any]], concurrency: int
                 ) -> list[int]:
    """Send ``bodies`` with ``concurrency`` in flight; statuses in the order the answers came back."""
    clients = [gw.openai_client(client, timeout=60) for gw in gws]
    sem = asyncio.Semaphore(concurrency)
    out: list[int] = []

    async def one(i: int, body: dict[str, Any]) -> None:
        async with sem:
            c = clients[i % len(clients)]
            kw = {k: v for k, v in body.items() if k not in ("model", "messages", "prompt", "stream")}
            kw["max_tokens"] = min(int(kw.get("max_tokens") or 64), 64)
            try:
                if "messages" in body:
                    await c.chat.completions.create(model="sim", messages=body["messages"], **kw)
                else:
                    await c.completions.create(model="sim", prompt=body["prompt"], **kw)
                out.append(200)
            except openai.RateLimitError:
                out.append(429)
            except openai.PermissionDeniedError:
                out.append(403)
            except openai.APIStatusError as e:  # 400, a 503 when the backend's slots are full, ...
                out.append(e.status_code)
            except openai.APIConnectionError:  # the load generator's own limits (thousands of sockets)
                out.append(0)

    await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))
    for c in clients:
        await c.close()
    return out


async def measure(args: argparse.Namespace, concurrency: int, attackers: dict[str, list[dict[str, Any]]],
                  redis_url: str | None) -> dict[str, float]:
    async with sim_backend(latency_ms=args.latency_ms) as sim:
        store = {"kind": "redis", "url": redis_url, "failure_mode": "closed", "timeout_ms": 2000,
                 "key_prefix": f"ceval{concurrency}:"} if redis_url else {"kind": "memory"}
        cfg = gateway_config(sim.url, detection={"enabled": True}, store=store)
        async with running_gateway(cfg) as a:
            gws = [a]
            if args.replicas == 2:
                second = running_gateway(cfg)
                gws.append(await second.__aenter__())
            try:
                t0 = time.monotonic()
                statuses = await asyncio.gather(*(attack(gws, cid, bodies, concurrency)
                                                  for cid, bodies in attackers.items()))
                wall = time.monotonic() - t0
                for gw in gws:
                    await settled(gw, 30.0)
                seen, flagged, served = [], 0, []
                for (cid, bodies), st in zip(attackers.items(), statuses, strict=True):
                    res = await a.ctx.store.hot_path(AdmitRequest(cid, 0, (PROBE,) * 4, 3600.0))
                    n = envelope.decode(res.detector_state).requests_seen if res.detector_state else 0
                    seen.append(n / len(bodies))
                    rec = await a.ctx.store.get_client(cid)
                    flagged += rec is not None and rec.detector_tier >= THROTTLE
                    first = next((i for i, s in enumerate(st) if s in (429, 403)), len(st))
                    served.append(first)
            finally:
                if args.replicas == 2:
                    await second.__aexit__(None, None, None)
    return {"seen": statistics.fmean(seen), "seen_min": min(seen), "flagged": flagged / len(attackers),
            "served_median": statistics.median(served), "wall_s": wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-kind", type=int, default=5)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--latency-ms", type=float, default=40.0)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--replicas", type=int, choices=(1, 2), default=1)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    bank = load_bank("test")
    pop = build(bank, args.seed, 0, args.per_kind, kinds=KINDS)
    attackers: dict[str, list[dict[str, Any]]] = {}
    for rec in pop.records:
        bodies = attackers.setdefault(rec["client"], [])
        if len(bodies) < args.requests:
            bodies.append(rec["body"])
    redis = None
    if args.replicas == 2:
        from tests.conftest import RedisProcess

        redis = RedisProcess().start()
    try:
        print(f"{len(attackers)} harvesters x {args.requests} requests, answers after {args.latency_ms:g} ms, "
              f"{args.replicas} gateway(s){' on one redis-server' if redis else ', memory store'}")
        print("| requests in flight per client | requests in the state (mean / min) | flagged after "
              f"{args.requests} | requests served before the first 429/403 (median) | wall s |")
        print("|---|---|---|---|---|")
        for c in (int(x) for x in args.concurrency.split(",")):
            r = asyncio.run(measure(args, c, attackers, redis.url if redis else None))
            print(f"| {c} | {100 * r['seen']:.1f} % / {100 * r['seen_min']:.1f} % | {100 * r['flagged']:.0f} % "
                  f"| {r['served_median']:g} | {r['wall_s']:.1f} |", flush=True)
    finally:
        if redis is not None:
            redis.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
