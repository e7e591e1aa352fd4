"""Hot-path latency of the state stores: the admit step of one request (reservation estimate + one
``hot_path`` round trip + the rate-limit headers), memory vs Redis, sequential and 16 concurrent, one event loop.

    .venv/bin/python bench/store_bench.py [--n 20000] [--redis-url URL] [--no-cluster] [--out FILE.md]

Without ``--redis-url`` it starts a private ``redis-server`` on a free loopback port (no persistence) and
stops it afterwards. Unless ``--no-cluster``, it also starts a private 3-primary Redis Cluster (needs
``redis-cli``). Rows: ``memory`` (MemoryStore), ``redis`` (RedisStore, raw), ``redis+resilient`` (what
``store.kind: redis`` really runs: RedisStore behind the failure-mode guard), ``redis cluster`` and
``redis cluster+resilient`` (the same with ``store.cluster: true``: slot routing over one connection per
primary; the 1000 clients spread over the three primaries), and for reference
``redis-py pool`` — the same Lua script and argument list through redis-py's asyncio client and connection pool
(what RedisStore used before its multiplexed connection; it shows why that connection exists). Latency is per call
(``perf_counter_ns`` around the awaited call); throughput is calls per second of wall time; "gateway CPU" is
this process's CPU time per call (``process_time``), the number that matters for the gateway's throughput
and the one least disturbed by other load on the machine (Redis's own CPU is not in it).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from importlib import resources

from gateway.config import StoreConfig, TierLimitsConfig
from gateway.policy import limits_from_config
from gateway.ratelimit import estimate_tokens, interval_us, rate_limit_headers
from gateway.store.base import AdmitRequest, AdmitResult, RateDecision, StateStore
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore
from gateway.store.resilient import ResilientStore

BODY = {"model": "sim", "messages": [{"role": "user", "content": "Explain GCRA rate limiting in two lines."}],
        "max_tokens": 128}
LIMITS = (
    # a cap never reached (each client's set grows to ~(2000 + 2n) / 1000 leases per store: they are not released)
    limits_from_config(TierLimitsConfig(requests_per_minute=1e9, tokens_per_minute=1e12, max_in_flight=10**6)),
    limits_from_config(TierLimitsConfig(requests_per_minute=30, tokens_per_minute=10_000)),
)
CLIENTS = [f"client-{i}" for i in range(1000)]


_LEASES = iter(range(10**12))


async def admit_once(store: StateStore, client: str) -> None:
    # each call takes an in-flight slot (max_in_flight 64, the default) as the gateway does; the slots are not
    # given back here (the release rides on the reconcile call after the response, not on the hot path), so a
    # client's set holds up to n / 1000 leases during a run
    tokens = estimate_tokens("/v1/chat/completions", BODY)
    res = await store.hot_path(AdmitRequest(client, tokens, LIMITS, 7 * 86400.0, f"b:{next(_LEASES)}", 120.0))
    rate_limit_headers(res)


def pct(xs: list[int], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] / 1000.0  # ns → µs


class RedisPyHotPath:
    """Reference only: the identical hot-path script call through redis-py's asyncio pool."""

    def __init__(self, url: str) -> None:
        from redis.asyncio import Redis

        self._r = Redis.from_url(url)
        self._keys = RedisStore(url)  # for the key layout and the encoded tier limits only
        src = resources.files("gateway.store").joinpath("lua", "hot_path.lua").read_text()
        self._script = self._r.register_script(src)

    async def hot_path(self, req: AdmitRequest) -> AdmitResult:
        tiers: list[str] = [str(len(req.limits_by_tier))]
        for lim in req.limits_by_tier:
            tiers += [repr(interval_us(lim.requests_per_minute)), str(lim.burst_requests),
                      repr(interval_us(lim.tokens_per_minute)), str(lim.burst_tokens), str(lim.max_in_flight)]
        row = await self._script(keys=self._keys.client_keys(req.client_id),
                                 args=[req.tokens, int(req.state_ttl_s * 1000), req.lease, int(req.lease_s * 1e6),
                                       *tiers])
        dec = RateDecision(bool(row[4]), int(row[5]), int(row[6]), int(row[7]) / 1e6, int(row[8]) / 1e6)
        return AdmitResult(bool(row[0]), int(row[1]), None, dec, dec, None, int(row[3]) / 1e6)

    async def close(self) -> None:
        await self._r.aclose()


async def measure(store: StateStore, n: int, concurrency: int, prefix: str = "") -> tuple[list[int], float, float]:
    lat: list[int] = []
    per_task = n // concurrency
    clients = [prefix + c for c in CLIENTS]

    async def worker(w: int) -> None:
        for i in range(per_task):
            client = clients[(w * per_task + i) % len(clients)]
            t0 = time.perf_counter_ns()
            await admit_once(store, client)
            lat.append(time.perf_counter_ns() - t0)

    t0, c0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    calls = per_task * concurrency
    return lat, calls / (time.perf_counter() - t0), (time.process_time() - c0) / calls * 1e6


def start_redis(extra: tuple[str, ...] = (), port: int | None = None) -> tuple[subprocess.Popen[bytes], str, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server not found; pass --redis-url or install redis-server")
    if port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    tmp = tempfile.mkdtemp(prefix="ipgate-bench-redis-")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                             "no", "--dir", tmp, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    return proc, f"redis://127.0.0.1:{port}/0", tmp


def start_cluster() -> list[tuple[subprocess.Popen[bytes], str, str]]:
    """Three cluster-enabled redis-servers joined by ``redis-cli --cluster create`` (no replicas)."""
    cli = shutil.which("redis-cli")
    if cli is None:
        sys.exit("redis-cli not found; pass --no-cluster or install redis-server (it ships redis-cli)")
    ports: list[int] = []
    while len(ports) < 3:  # the cluster bus listens on port + 10000
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p + 10000 <= 65535 and p not in ports:
            ports.append(p)
    nodes = [start_redis(("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"), p) for p in ports]
    subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "0",
                    "--cluster-yes"], check=True, stdout=subprocess.DEVNULL, timeout=30)
    for _ in range(300):
        out = subprocess.run([cli, "-p", str(ports[0]), "cluster", "info"], capture_output=True, text=True).stdout
        if "cluster_state:ok" in out:
            break
        time.sleep(0.05)
    return nodes


async def run(n: int, redis_url: str, cluster_url: str | None) -> list[tuple[str, int, float, float, float, float,
                                                                          float]]:
    cfg = StoreConfig(kind="redis", url=redis_url, timeout_ms=1000)
    raw = RedisStore.from_config(cfg)
    guarded = ResilientStore(RedisStore.from_config(cfg), failure_mode="local", timeout_ms=cfg.timeout_ms)
    await guarded.start()
    ref = RedisPyHotPath(redis_url)
    stores: list[tuple[str, StateStore, Callable[[], Awaitable[None]]]] = [
        ("memory", MemoryStore(), lambda: asyncio.sleep(0)),
        ("redis", raw, raw.close),
        ("redis+resilient", guarded, guarded.close),
    ]
    if cluster_url is not None:
        ccfg = StoreConfig(kind="redis", url=cluster_url, cluster=True, timeout_ms=1000)
        craw = RedisStore.from_config(ccfg)
        cguarded = ResilientStore(RedisStore.from_config(ccfg), failure_mode="local", timeout_ms=ccfg.timeout_ms)
        await cguarded.start()
        stores += [("redis cluster (3 primaries)", craw, craw.close),
                   ("redis cluster+resilient", cguarded, cguarded.close)]
    stores.append(("redis-py pool (reference)", ref, ref.close))  # type: ignore[arg-type]
    rows = []
    for k, (name, store, _) in enumerate(stores):
        prefix = f"s{k}-"  # each store its own clients (three rows share one Redis)
        await measure(store, min(n, 2000), 1, prefix)  # warm-up: scripts loaded, connections opened
        for conc in (1, 16):
            lat, rate, cpu = await measure(store, n, conc, prefix)
            rows.append((name, conc, pct(lat, 0.5), pct(lat, 0.99), statistics.fmean(lat) / 1000, cpu, rate))
    for _, _, close in stores:
        await close()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20_000, help="calls per measurement")
    ap.add_argument("--redis-url", default=None)
    ap.add_argument("--out", default=None, help="also write the markdown table to this file")
    ap.add_argument("--no-cluster", action="store_true", help="skip the Redis Cluster rows")
    args = ap.parse_args()
    servers: list[tuple[subprocess.Popen[bytes], str, str]] = []
    url = args.redis_url
    try:
        if url is None:
            servers.append(start_redis())
            url = servers[0][1]
        cluster_url = None
        if not args.no_cluster:
            nodes = start_cluster()
            servers += nodes
            cluster_url = nodes[0][1].rsplit("/", 1)[0]
        rows = asyncio.run(run(args.n, url, cluster_url))
    finally:
        for proc, _, tmp in servers:
            proc.terminate()
            proc.wait()
            shutil.rmtree(tmp, ignore_errors=True)
    lines = [
        f"store hot path (estimate_tokens + hot_path + rate_limit_headers), n={args.n} per row, "
        f"Python {platform.python_version()}, {platform.machine()}",
        "",
        "| store | concurrency | p50 µs | p99 µs | mean µs | gateway CPU µs/call | calls/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, conc, p50, p99, mean, cpu, rate in rows:
        lines.append(f"| {name} | {conc} | {p50:.1f} | {p99:.1f} | {mean:.1f} | {cpu:.1f} | {rate:,.0f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
