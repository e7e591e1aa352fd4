"""Gateway overhead benchmark: backend direct vs a bare aiohttp proxy vs ipgate (memory store, Redis store),
side by side in ONE run, all in front of the same zero-delay simulated backend.

    .venv/bin/python bench/run_gateway_bench.py [--duration 5] [--out results.json]

For each target: wrk (non-streaming chat completions, 16 tokens) at 1 and 16 connections → requests/s,
p50/p99 latency (median of 3 interleaved rounds); then the median time-to-first-token of 200 sequential
streaming requests. ipgate runs with JWT auth
and per-client GCRA rate limits on (limits set high enough that nothing is rejected, so every request pays
for the check); detection and watermarking are off here (their costs are benchmarked by their own areas).
Needs `wrk` and `redis-server` on PATH. Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import yaml

ROOT = Path(__file__).resolve().parents[1]
SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
BODY = {"model": "sim", "messages": [{"role": "user", "content": "Say hello to the benchmark."}], "max_tokens": 16}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def token() -> str:
    now = int(time.time())
    return jwt.encode({"sub": "bench-client", "iat": now, "exp": now + 3600, "aud": "ipgate"}, SECRET,
                      algorithm="HS256")


def gateway_config(backend: str, port: int, admin_port: int, store: dict[str, Any]) -> dict[str, Any]:
    return {
        "listen": f"127.0.0.1:{port}", "admin_listen": f"127.0.0.1:{admin_port}",
        "store": store,
        "auth": {"jwt": {"algorithms": ["HS256"], "secret_env": "IPGATE_BENCH_JWT", "audience": "ipgate"}},
        "limits": {"default": {"requests_per_minute": 1e9, "tokens_per_minute": 1e12}},
        "detection": {"enabled": False}, "watermark": {"enabled": False},
        "telemetry": {"access_log": True, "access_log_file": os.devnull},
        "models": [{"name": "sim", "backends": [{"name": "b0", "url": backend}]}],
    }


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def run_wrk(url: str, conns: int, duration: int, script: Path) -> dict[str, float]:
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    if bad or errors:
        raise RuntimeError(f"wrk against {url} saw failures:\n{out}")
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99}


async def _first_token_ms(s: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> float:
    t0 = time.perf_counter()
    async with s.post(url, json={**BODY, "stream": True}, headers=headers) as r:
        while True:
            line = await r.content.readline()
            if not line:
                raise RuntimeError(f"{url}: stream ended without content")
            compact = line.replace(b" ", b"")
            if b'"content":"' in compact and b'"content":""' not in compact:
                break
        t = time.perf_counter() - t0
        await r.read()
    return t * 1000


async def ttft(urls: dict[str, str], tok: str, n: int) -> dict[str, float]:
    """Median time to the first content chunk; the targets take turns request by request (fair to drift)."""
    headers = {"Authorization": f"Bearer {tok}"}
    samples: dict[str, list[float]] = {name: [] for name in urls}
    async with aiohttp.ClientSession() as s:
        for i in range(n + 20):
            for name, url in urls.items():
                t = await _first_token_ms(s, url, headers)
                if i >= 20:  # warm-up excluded
                    samples[name].append(t)
    return {name: statistics.median(v) for name, v in samples.items()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ttft-requests", type=int, default=200)
    ap.add_argument("--out", default=None)
    ap.add_argument("--compare-tree", type=Path, default=None,
                    help="also run ipgate (memory store) from another source tree, e.g. an unpacked "
                         "`git archive HEAD`, interleaved with the others (PYTHONPATH points at it)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["direct", "redis"],
                    help="leave targets out (shorter runs; the bare proxy and ipgate memory always run)")
    args = ap.parse_args()
    for tool in ("wrk", "redis-server"):
        if shutil.which(tool) is None:
            print(f"{tool} not found on PATH", file=sys.stderr)
            return 2
    tmp = Path(tempfile.mkdtemp(prefix="ipgate-bench-"))
    env = {**os.environ, "IPGATE_BENCH_JWT": SECRET}
    py = sys.executable
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(cmd: list[str], tree: Path = ROOT) -> subprocess.Popen[bytes]:
        e = env if tree == ROOT else {**env, "PYTHONPATH": str(tree)}  # before the editable install on sys.path
        p = subprocess.Popen(cmd, env=e, cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(p)
        return p

    try:
        bport, pport, mport, rport, redis_port, cport = (free_port() for _ in range(6))
        backend = f"http://127.0.0.1:{bport}"
        spawn([py, "-m", "gateway", "sim-backend", "--port", str(bport)])
        spawn(["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"])
        spawn([py, str(ROOT / "bench" / "bare_proxy.py"), "--port", str(pport), "--upstream", backend])
        gateways: list[tuple[int, dict[str, Any], Path]] = [(mport, {"kind": "memory"}, ROOT)]
        if "redis" not in args.skip:
            gateways.append((rport, {"kind": "redis", "url": f"redis://127.0.0.1:{redis_port}/0"}, ROOT))
        if args.compare_tree is not None:
            gateways.append((cport, {"kind": "memory"}, args.compare_tree.resolve()))
        for port, store, tree in gateways:
            cfg_path = tmp / f"ipgate-{port}.yaml"
            cfg_path.write_text(yaml.safe_dump(gateway_config(backend, port, free_port(), store)))
            spawn([py, "-m", "gateway", "serve", "--config", str(cfg_path), "--log-level", "WARNING"], tree)
        targets = {"backend direct": f"http://127.0.0.1:{bport}", "bare aiohttp proxy": f"http://127.0.0.1:{pport}",
                   "ipgate (memory store)": f"http://127.0.0.1:{mport}",
                   "ipgate (redis store)": f"http://127.0.0.1:{rport}"}
        if "direct" in args.skip:
            del targets["backend direct"]
        if "redis" in args.skip:
            del targets["ipgate (redis store)"]
        if args.compare_tree is not None:
            targets[f"ipgate (memory store, {args.compare_tree})"] = f"http://127.0.0.1:{cport}"
        for u in targets.values():
            wait_http(u + "/v1/models")
        tok = token()
        script = tmp / "post.lua"
        script.write_text(
            'wrk.method = "POST"\n'
            f"wrk.body = '{json.dumps(BODY)}'\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
            f'wrk.headers["Authorization"] = "Bearer {tok}"\n')
        results: dict[str, dict[str, Any]] = {name: {} for name in targets}
        for u in targets.values():  # warm-up: connection pools and caches
            run_wrk(u + "/v1/chat/completions", 4, 1, script)
        # Interleaved rounds, median per metric: the machine is shared, so drift hits every target alike.
        for conns in (1, 16):
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
            for rnd in range(args.rounds):
                for name, u in targets.items():
                    runs[name].append(run_wrk(u + "/v1/chat/completions", conns, args.duration, script))
                    print(f"round {rnd} c{conns} {name}: {runs[name][-1]}", flush=True)
            for name in targets:
                results[name][f"c{conns}"] = {k: statistics.median(r[k] for r in runs[name])
                                              for k in ("rps", "p50_ms", "p99_ms")}
        firsts = asyncio.run(ttft({n: u + "/v1/chat/completions" for n, u in targets.items()}, tok,
                                  args.ttft_requests))
        for name, v in firsts.items():
            results[name]["ttft_p50_ms"] = v
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    print(render(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


def render(r: dict[str, dict[str, Any]]) -> str:
    bare = r["bare aiohttp proxy"]
    lines = ["| target | req/s @1 | p50 @1 (ms) | p99 @1 (ms) | req/s @16 | p50 @16 (ms) | p99 @16 (ms) | "
             "× bare @16 | added p50 @1 vs bare (ms) | TTFT p50 (ms) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, v in r.items():
        c1, c16 = v["c1"], v["c16"]
        lines.append(
            f"| {name} | {c1['rps']:.0f} | {c1['p50_ms']:.2f} | {c1['p99_ms']:.2f} | {c16['rps']:.0f} | "
            f"{c16['p50_ms']:.2f} | {c16['p99_ms']:.2f} | {c16['rps'] / bare['c16']['rps']:.2f} | "
            f"{c1['p50_ms'] - bare['c1']['p50_ms']:+.2f} | {v['ttft_p50_ms']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
