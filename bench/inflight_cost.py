"""What the in-flight cap (``max_in_flight``) costs per request: admission (``detect_and_admit``) and the
reconciliation after the answer (``admit.reconcile``, which gives the slot back), for a limit class with a cap
and one without (``max_in_flight: null``: nothing recorded), in alternating rounds in one process.

    .venv/bin/python bench/inflight_cost.py [--n 20000] [--rounds 9] [--redis-url URL]

Detection off, 1000 distinct clients. Prints the minimum and the median over rounds of µs per call (wall time
of an in-process loop: on a shared machine the minimum is the least disturbed). With ``--redis-url`` the same
through ``store.kind: redis`` (one round trip each way; latency, not only CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway.account import Exchange
from gateway.admit import detect_and_admit, reconcile
from gateway.app import open_context
from gateway.config import parse_config
from gateway.principal import Principal
from gateway.proxy.parse import parse_request

BODY = {"model": "sim", "messages": [{"role": "user", "content": "Explain what a reverse proxy does, briefly."}],
        "max_tokens": 64}


async def measure(store: dict[str, Any], n: int, rounds: int) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        secret = Path(tmp) / "s"
        secret.write_text("x" * 32)
        cfg = parse_config({
            "auth": {"jwt": {"secret_env": None, "secret_file": str(secret), "audience": "ipgate"}},
            "store": store,
            "limits": {"default": {"requests_per_minute": 1e9, "tokens_per_minute": 1e12, "max_in_flight": None},
                       "capped": {"requests_per_minute": 1e9, "tokens_per_minute": 1e12, "max_in_flight": 64}},
            "detection": {"enabled": False}, "watermark": {"enabled": False},
            "telemetry": {"access_log": False}, "fingerprint": {"enabled": False},
            "routing": {"health": {"interval_s": 3600}},
            "models": [{"name": "sim", "backends": [{"name": "a", "url": "http://127.0.0.1:9"}]}],
        }, env={})
        out: dict[str, list[float]] = {}
        async with open_context(cfg) as ctx:
            parsed = parse_request("chat", json.dumps(BODY).encode(), ctx.models)
            counter = iter(range(10**9))
            for _ in range(rounds):
                for cls in ("default", "capped"):
                    ta = tr = 0.0
                    for _ in range(n):
                        p = Principal(f"{cls}-{next(counter) % 1000}", limit_class=cls)
                        t0 = time.perf_counter()
                        adm = await detect_and_admit(ctx, p, parsed, Exchange("rid", "/v1/chat/completions", 0.0))
                        t1 = time.perf_counter()
                        await reconcile(ctx, p.client_id, adm, adm.reserved - 1)
                        ta += t1 - t0
                        tr += time.perf_counter() - t1
                    name = "no cap" if cls == "default" else "max_in_flight 64"
                    out.setdefault(f"admit, {name}", []).append(ta / n * 1e6)
                    out.setdefault(f"reconcile, {name}", []).append(tr / n * 1e6)
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--redis-url", default=None)
    args = ap.parse_args()
    stores: list[tuple[str, dict[str, Any]]] = [("memory", {"kind": "memory"})]
    if args.redis_url:
        stores.append(("redis", {"kind": "redis", "url": args.redis_url, "timeout_ms": 1000}))
    print("| store | step | min µs | median µs |\n|---|---|---:|---:|")
    for label, store in stores:
        res = asyncio.run(measure(store, args.n if label == "memory" else args.n // 4, args.rounds))
        for k, v in res.items():
            print(f"| {label} | {k} | {min(v):.2f} | {statistics.median(v):.2f} |")


if __name__ == "__main__":
    main()
