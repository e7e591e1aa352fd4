"""Gateway throughput with detection on vs off vs the bare aiohttp proxy, side by side in ONE run.

Issue 3's target: the core gateway's throughput ratio stays >= 0.5x the bare proxy *with detection on*.
Three targets in front of the same zero-delay simulated backend, each its own process: the bare aiohttp proxy
(bench/bare_proxy.py), ipgate with detection off, ipgate with detection on (shipped combiner, all
detectors, memory store, alerts to the store). wrk drives 16 connections (then 1) with a Lua script that
rotates 512 client tokens and 4 096 real prompts (../shared/data/prompts.jsonl, non-red-team), so detection
sees many clients with realistic text and warm per-client state, not one client repeating one prompt.

So that a load generator's inhuman rate is measured rather than refused, the policy used here keeps every
tier's actions except blocking and uses the high limits for every tier: detection still runs in full
(features, engine, state save, linking, alerts), its tiers and hardening still apply, nothing answers 403/429.

    .venv/bin/python bench/detection_gateway_throughput.py [--duration 5] [--compare-tree DIR]

``--compare-tree DIR`` adds a fourth target, ipgate with detection on run from another checkout of the
repository (started with ``cwd`` and ``PYTHONPATH`` set to DIR, this checkout's virtualenv), to measure a
change side by side with the build before it.

Reuses the helpers of bench/run_gateway_bench.py (wrk runner, config) by importing it from this folder.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import jwt
import yaml
from run_gateway_bench import SECRET, free_port, gateway_config, run_wrk, wait_http

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "prompts.jsonl"
N_CLIENTS, N_PROMPTS = 512, 4096


def tokens(n: int) -> list[str]:
    now = int(time.time())
    return [jwt.encode({"sub": f"bench-{i}", "iat": now, "exp": now + 3600, "aud": "ipgate"}, SECRET,
                       algorithm="HS256") for i in range(n)]


def bodies(n: int, seed: int = 1) -> list[str]:
    rows = [json.loads(x) for x in DATA.read_text(encoding="utf-8").split("\n") if x]
    texts = [r["turns"][0] for r in rows if r["category"] != "harmless-redteam" and len(r["turns"][0]) < 1500]
    pick = random.Random(seed).sample(texts, n)
    return [json.dumps({"model": "sim", "messages": [{"role": "user", "content": t}], "max_tokens": 16})
            for t in pick]


def lua_script(toks: list[str], bods: list[str]) -> str:
    def arr(items: list[str]) -> str:
        # Lua long brackets: no escaping needed as long as the text holds no "]==]"
        return "{" + ",".join(f"[==[{x}]==]" for x in items if "]==]" not in x) + "}"

    return (
        f"local tokens = {arr(toks)}\nlocal bodies = {arr(bods)}\n"
        "math.randomseed(7)\n"
        "request = function()\n"
        "  local h = {}\n"
        '  h["Content-Type"] = "application/json"\n'
        '  h["Authorization"] = "Bearer " .. tokens[math.random(#tokens)]\n'
        '  return wrk.format("POST", nil, h, bodies[math.random(#bodies)])\n'
        "end\n"
    )


def detection_config(base: dict[str, Any]) -> dict[str, Any]:
    cfg = dict(base)
    cfg["detection"] = {"enabled": True}
    cfg["policy"] = {"tiers": [
        {"name": "normal"},
        {"name": "watch", "alert": True, "hardening": {"max_top_logprobs": 5, "logprobs_xor_logit_bias": True}},
        {"name": "throttle", "alert": True, "hardening": {"max_top_logprobs": 1, "logprobs_xor_logit_bias": True,
                                                          "max_n": 1, "strip_seed": True}},
        {"name": "block", "alert": True},  # block: false here, see the module docstring
    ]}
    return cfg


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run (wrk takes whole seconds)")
    ap.add_argument("--compare-tree", type=Path, help="another checkout: a 4th target, detection on, from there")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        print("wrk not found on PATH", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="ipgate-detbench-"))
    env = {**os.environ, "IPGATE_BENCH_JWT": SECRET}
    py = sys.executable
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(cmd: list[str], tree: Path = ROOT) -> None:
        # ``python -m`` puts the working directory first on sys.path: cwd selects the tree that runs
        extra = {} if tree == ROOT else {"PYTHONPATH": str(tree)}
        procs.append(subprocess.Popen(cmd, env={**env, **extra}, cwd=tree, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))

    try:
        bport, pport, off_port, on_port, on_admin = (free_port() for _ in range(5))
        backend = f"http://127.0.0.1:{bport}"
        spawn([py, "-m", "gateway", "sim-backend", "--port", str(bport)])
        spawn([py, str(ROOT / "bench" / "bare_proxy.py"), "--port", str(pport), "--upstream", backend])
        gateways = [(off_port, free_port(), False, ROOT), (on_port, on_admin, True, ROOT)]
        targets = {"bare aiohttp proxy": pport, "ipgate, detection off": off_port, "ipgate, detection on": on_port}
        if args.compare_tree:
            cmp_port = free_port()
            gateways.append((cmp_port, free_port(), True, args.compare_tree.resolve()))
            targets[f"ipgate, detection on, {args.compare_tree}"] = cmp_port
        for port, admin, detect, tree in gateways:
            cfg = gateway_config(backend, port, admin, {"kind": "memory"})
            if detect:
                cfg = detection_config(cfg)
            path = tmp / f"ipgate-{port}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            spawn([py, "-m", "gateway", "serve", "--config", str(path), "--log-level", "WARNING"], tree)
        for p in (bport, *targets.values()):
            wait_http(f"http://127.0.0.1:{p}/v1/models")
        script = tmp / "rotate.lua"
        script.write_text(lua_script(tokens(N_CLIENTS), bodies(N_PROMPTS)))
        results: dict[str, dict[str, dict[str, float]]] = {name: {} for name in targets}
        for p in targets.values():  # warm-up: pools, caches, per-client detection state
            run_wrk(f"http://127.0.0.1:{p}/v1/chat/completions", 4, 2, script)  # type: ignore[arg-type]
        for conns in (16, 1):
            for name, p in targets.items():
                r = run_wrk(f"http://127.0.0.1:{p}/v1/chat/completions", conns, args.duration, script)  # type: ignore[arg-type]
                results[name][f"c{conns}"] = r
                print(name, conns, r, file=sys.stderr, flush=True)
        with urllib.request.urlopen(f"http://127.0.0.1:{on_admin}/metrics", timeout=5) as resp:
            tiers = re.findall(r'^ipgate_detection_tier_total\{tier="(\w+)"\} ([\d.e+]+)$', resp.read().decode(), re.M)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    bare = results["bare aiohttp proxy"]
    print("| target | req/s @16 | × bare @16 | p50 @16 (ms) | p99 @16 (ms) | req/s @1 | p50 @1 (ms) |")
    print("|---|---|---|---|---|---|---|")
    for name, v in results.items():
        c16, c1 = v["c16"], v["c1"]
        print(f"| {name} | {c16['rps']:.0f} | {c16['rps'] / bare['c16']['rps']:.2f} | {c16['p50_ms']:.2f} | "
              f"{c16['p99_ms']:.2f} | {c1['rps']:.0f} | {c1['p50_ms']:.2f} |")
    total = sum(float(n) for _, n in tiers) or 1.0
    print("\ndetection-on requests by tier: " + ", ".join(f"{t} {float(n) / total:.1%}" for t, n in tiers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
