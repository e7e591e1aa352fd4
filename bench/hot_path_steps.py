"""Per-step CPU cost of the request path, in-process, against the hot-path budget in ARCHITECTURE.md.

    .venv/bin/python bench/hot_path_steps.py [--n 20000]

Each step runs on a real ``AppContext`` (memory store, JWT auth) exactly as the pipeline calls it; no
sockets (the forward step's I/O is what the side-by-side benchmark measures). Prints a markdown table of
microseconds per call (median of 5 rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt

from gateway.account import Exchange
from gateway.admit import detect_and_admit, reconcile
from gateway.app import open_context
from gateway.config import parse_config
from gateway.principal import Principal
from gateway.proxy.forward import forward_headers
from gateway.proxy.parse import parse_request
from gateway.proxy.relay import StreamRelay
from gateway.routing.router import Outcome
from gateway.shape import upstream_body

JWT_SECRET = "bench-secret-0123456789abcdef0123456789abcdef"

BODY = {"model": "sim", "messages": [{"role": "system", "content": "You are helpful."},
                                     {"role": "user", "content": "Explain what a reverse proxy does, briefly."}],
        "max_tokens": 64, "temperature": 0.7}
CHUNK = (b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"sim",'
         b'"choices":[{"index":0,"delta":{"content":" proxy"},"logprobs":null,"finish_reason":null}]}\n\n')
BUDGET = {"auth (cached JWT)": 20, "parse + validate": 30, "detect + admit (detection off)": 200,
          "detect + admit (detection on)": 200, "shape + route (acquire/release) + headers": 50,
          "relay one SSE chunk (decoded)": 50, "relay one SSE chunk (fast path)": 50}


def _time(fn: Callable[[], Any], n: int) -> float:
    rounds = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        rounds.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(rounds)


async def _atime(fn: Callable[[], Awaitable[Any]], n: int) -> float:
    rounds = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            await fn()
        rounds.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(rounds)


async def _measure(detection: bool, secret: Path, n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    cfg = parse_config({
        "auth": {"jwt": {"secret_env": None, "secret_file": str(secret), "audience": "ipgate"}},
        "limits": {"default": {"requests_per_minute": 1e9, "tokens_per_minute": 1e12}},
        "detection": {"enabled": detection}, "watermark": {"enabled": False},
        "telemetry": {"access_log": False}, "fingerprint": {"enabled": False},
        "routing": {"health": {"interval_s": 3600}},
        "models": [{"name": "sim", "backends": [{"name": "a", "url": "http://127.0.0.1:9"}]}],
    }, env={})
    async with open_context(cfg) as ctx:
        raw = json.dumps(BODY).encode()
        parsed = parse_request("chat", raw, ctx.models)
        principal = Principal("bench-client")
        if not detection:
            now = int(time.time())
            header = "Bearer " + jwt.encode({"sub": "bench-client", "iat": now, "exp": now + 3600,
                                             "aud": "ipgate"}, JWT_SECRET, algorithm="HS256")
            await ctx.auth.authenticate(header)
            out["auth (cached JWT)"] = await _atime(lambda: ctx.auth.authenticate(header), n)
            out["parse + validate"] = _time(lambda: parse_request("chat", raw, ctx.models), n)
            client_headers = {"Host": "x", "Content-Type": "application/json", "Authorization": header,
                              "Content-Length": str(len(raw)), "User-Agent": "bench"}

            def shape_route() -> None:
                lease = ctx.router.acquire("sim", "bench-client")
                upstream_body(ctx, parsed, principal, 0, lease)
                forward_headers(client_headers, "rid")
                lease.release(Outcome(True, 200, 0.001))

            out["shape + route (acquire/release) + headers"] = _time(shape_route, n)
            relay = StreamRelay("chat", False, None)
            out["relay one SSE chunk (decoded)"] = _time(lambda: relay.feed(CHUNK), n)
            fast = StreamRelay("chat", False, None, details=False)
            out["relay one SSE chunk (fast path)"] = _time(lambda: fast.feed(CHUNK), n)
        counter = iter(range(10**9))

        on = "on" if detection else "off"
        m = max(n // 10, 200) if detection else n
        admit_s, settle_s = [], []
        for _ in range(5):
            ta = tr = 0.0
            for _ in range(m):
                # 1000 distinct clients, as a busy gateway sees them; each request's reconciliation follows
                # (timed apart: it runs after the answer) and gives its in-flight slot back, as account.settle does
                p = Principal(f"c{next(counter) % 1000}")
                t0 = time.perf_counter()
                adm = await detect_and_admit(ctx, p, parsed, Exchange("rid", "/v1/chat/completions", 0.0))
                t1 = time.perf_counter()
                await reconcile(ctx, p.client_id, adm, adm.reserved - 1)
                ta += t1 - t0
                tr += time.perf_counter() - t1
            admit_s.append(ta / m * 1e6)
            settle_s.append(tr / m * 1e6)
        out[f"detect + admit (detection {on})"] = statistics.median(admit_s)
        out[f"reconcile after the answer (detection {on})"] = statistics.median(settle_s)
    return out


async def run(n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        secret = Path(tmp) / "s"
        secret.write_text(JWT_SECRET)
        return {**await _measure(False, secret, n), **await _measure(True, secret, n)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    res = asyncio.run(run(ap.parse_args().n))
    print("| step | µs per call | budget (µs) |\n|---|---|---|")
    for k, v in res.items():
        print(f"| {k} | {v:.1f} | {BUDGET.get(k, '—')} |")


if __name__ == "__main__":
    main()
