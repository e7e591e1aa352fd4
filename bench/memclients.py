"""Memory per active client: the gateway's per-client tables filled through their real code, measured by tracemalloc.

Builds the gateway's real context (``gateway.app.open_context``: store, auth, detection, watermarking) and, for
each of N distinct clients, runs what a request does to per-client memory: authenticate a JWT (the verified-token
cache), the store's hot path, detection ``observe`` + ``account`` (decoded-state cache, detector state, sketches,
evidence), ``record_recipient`` (watermark recipients), and the Redis wrapper's last-known-tier table. No HTTP
and no backend: the per-request objects of the proxy are not per-client. Then it reports the traced bytes by the
line of ipgate's code that allocated them (innermost own frame), divided by N, and the table sizes.

    .venv/bin/python bench/memclients.py --clients 5000 --requests 2            # memory store (the default)
    .venv/bin/python bench/memclients.py --clients 5000 --requests 2 --local    # + the local fallback store

``--local`` also saves each state through a ``ResilientStore`` whose Redis is unreachable (``failure_mode:
local``): the fallback store's share during an outage. Prompts: /work/shared/data (benign categories), one
distinct prompt per request.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import shutil
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import jwt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # bench/ scripts run from a checkout

from bench.memprobe import _by_owner  # noqa: E402
from bench.soak import load_prompts  # noqa: E402
from detectors.decoded_cache import DecodedCache  # noqa: E402
from detectors.tokens import _CODES  # noqa: E402
from gateway.app import open_context  # noqa: E402
from gateway.config import StoreConfig, parse_config  # noqa: E402
from gateway.detection import GatewayDetection  # noqa: E402
from gateway.hooks import ResponseFacts  # noqa: E402
from gateway.store.base import AdmitRequest  # noqa: E402
from gateway.store.memory import MemoryStore  # noqa: E402
from gateway.store.resilient import ResilientStore  # noqa: E402
from gateway.watermarking import GatewayWatermarking  # noqa: E402

SECRET = "memclients-jwt-secret-0123456789-0123456789"


async def run(a: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="memclients-"))
    (tmp / "jwt.secret").write_text(SECRET)
    (tmp / "wm.secret").write_text("memclients-watermark-secret-0123456789")
    cfg = parse_config({
        "listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0",
        "store": {"kind": "memory"},
        "auth": {"jwt": {"algorithms": ["HS256"], "audience": "ipgate", "secret_file": str(tmp / "jwt.secret")}},
        "detection": {"enabled": True},
        "watermark": {"enabled": True, "scheme": "lexical", "secret_file": str(tmp / "wm.secret")},
        "routing": {"health": {"interval_s": 3600}},
        "models": [{"name": "m", "backends": [{"name": "b", "url": "http://127.0.0.1:9"}]}],
    }, env={})
    texts = load_prompts(a.clients * a.requests)
    now = int(time.time())
    tokens = [jwt.encode({"sub": f"user-{i:07d}", "aud": "ipgate", "iat": now, "exp": now + 7200}, SECRET,
                         algorithm="HS256") for i in range(a.clients)]
    out: dict[str, Any] = {"clients": a.clients, "requests_per_client": a.requests}
    async with open_context(cfg) as ctx:
        assert ctx.detection is not None and ctx.watermarking is not None
        local: ResilientStore | None = None
        if a.local:  # a Redis wrapper that is down: every save goes to its local MemoryStore
            from gateway.store.redis import RedisStore

            rcfg = StoreConfig(kind="redis", url="redis://127.0.0.1:9/0", failure_mode="local")
            local = ResilientStore(RedisStore.from_config(rcfg), failure_mode="local", timeout_ms=20.0,
                                   health_interval_s=3600.0)
        by_tier = ctx.policy.limits_by_class["default"]
        ttl = ctx.config.detection.state_ttl_s
        gc.collect()
        tracemalloc.start(a.frames)
        s0 = tracemalloc.take_snapshot()
        t0 = time.perf_counter()
        k = 0
        for r in range(a.requests):
            for i, tok in enumerate(tokens):
                p = await ctx.auth.authenticate(f"Bearer {tok}")
                body = {"model": "m", "messages": [{"role": "user", "content": texts[k % len(texts)]}]}
                k += 1
                res = await ctx.store.hot_path(AdmitRequest(p.client_id, 500, by_tier, ttl))
                sess = ctx.detection.observe(p, "/v1/chat/completions", body, res.detector_state, res.tier,
                                             res.now, request_id=f"req-{r}-{i}")
                await sess.account(ctx.store, ResponseFacts(status=200, prompt_tokens=120, completion_tokens=200,
                                                            finish_reasons=["stop"]))
                await ctx.watermarking.record_recipient(ctx.store, p)
                if local is not None:
                    st = await ctx.store.hot_path(AdmitRequest(p.client_id, 0, by_tier, ttl))
                    await local.hot_path(AdmitRequest(p.client_id, 500, by_tier, ttl))
                    if st.detector_state:
                        await local.save_client_state(p.client_id, st.detector_state, 0, 0.0, ttl)
                    local._remember(p.client_id, 0, None)  # what a hot path answered by Redis leaves
        elapsed = time.perf_counter() - t0
        gc.collect()
        s1 = tracemalloc.take_snapshot()
        growth = sum(t.size for t in s1.traces) - sum(t.size for t in s0.traces)
        o0, o1 = _by_owner(s0), _by_owner(s1)
        grow = sorted(((o1[key] - o0.get(key, 0), key) for key in set(o0) | set(o1)), reverse=True)
        det, wm = cast(GatewayDetection, ctx.detection), cast(GatewayWatermarking, ctx.watermarking)
        engine, store, alerts = det.engine, cast(MemoryStore, ctx.store), ctx.alerts
        state_sizes = [len(v[0].state) for v in store._state._d.values()]
        out.update({
            "elapsed_s": round(elapsed, 1), "traced_growth_bytes": growth,
            "bytes_per_client": round(growth / a.clients),
            "mean_state_bytes": round(sum(state_sizes) / max(1, len(state_sizes))),
            "max_state_bytes": max(state_sizes, default=0),
            "top_growth": [(key, round(d / 1024, 1)) for d, key in grow[:a.top]],
        })

        # Each table's own share: the traced bytes freed by emptying it (after a full collection), in this order
        # (the stored state bytes are shared by the store and the decoded-state cache's keys: they count where
        # the last reference goes, the store).
        def traced() -> int:
            gc.collect()
            return tracemalloc.get_traced_memory()[0]

        releases: list[tuple[str, int, int]] = []

        def release(name: str, entries: int, *clear: Callable[[], object]) -> None:
            before = traced()
            for c in clear:
                c()
            releases.append((name, entries, before - traced()))

        def new_cache() -> None:
            engine._decoded = DecodedCache()

        release("auth: verified-token cache", len(ctx.auth._cache), ctx.auth._cache.clear)
        release("watermark: recorded recipients", len(wm._recorded), wm._recorded.clear)
        release("detection: alert evidence", len(det.recent), det.recent.clear)
        if alerts is not None:
            release("alerts: dedup + last alert", len(alerts._seen) + len(alerts._last), alerts._seen.clear,
                    alerts._last.clear)
        release("engine: decoded-state cache", len(engine._decoded), new_cache)
        release("memory store: detector states", len(store._state), store._state.clear)
        release("memory store: rate buckets", len(store._rl), store._rl.clear)
        release("memory store: sketches", len(store._sketch), store._sketch.clear)
        if local is not None:
            release("local fallback store: states + buckets", len(local._local._state), local._local._state.clear,
                    local._local._rl.clear)
            release("redis wrapper: last-known tiers", len(local._known), local._known.clear)
        release("features: token-code cache (shared, not per client)", len(_CODES), _CODES.clear)
        out["release"] = [{"table": n, "entries": e, "bytes": b, "bytes_per_entry": round(b / e) if e else None}
                          for n, e, b in releases]
        tracemalloc.stop()
        if local is not None:
            await local.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--clients", type=int, default=2000)
    p.add_argument("--requests", type=int, default=2, help="requests per client")
    p.add_argument("--local", action="store_true", help="also fill the local fallback store of a Redis outage")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--frames", type=int, default=1, help="tracemalloc frames (12: top_growth by owner line)")
    p.add_argument("--json", help="write the result here too")
    a = p.parse_args()
    r = asyncio.run(run(a))
    print(f"{r['clients']} clients x {r['requests_per_client']} requests in {r['elapsed_s']} s (under tracemalloc)")
    print(f"traced growth {r['traced_growth_bytes'] / 2**20:.1f} MiB = {r['bytes_per_client']} B per client")
    print(f"detector state bytes per client: mean {r['mean_state_bytes']}, max {r['max_state_bytes']}")
    print(f"{'table':<54} {'entries':>8} {'MiB':>7} {'B/entry':>8}")
    for row in r["release"]:
        per = row["bytes_per_entry"] if row["bytes_per_entry"] is not None else "-"
        print(f"  {row['table']:<52} {row['entries']:>8} {row['bytes'] / 2**20:7.2f} {per:>8}")
    print("growth by the innermost ipgate line (KiB):")
    for key, kib in r["top_growth"]:
        print(f"  {kib:>10}  {key}")
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
