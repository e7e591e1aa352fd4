"""A/B of ipgate's cost per request: this tree against another source tree (e.g. an unpacked
``git archive HEAD``), with the bare aiohttp proxy as the yardstick, in alternating rounds.

    .venv/bin/python bench/ab_cpu.py --tree /tmp/core-before [--rounds 5] [--seconds 4] [--conns 16]

Each round puts the same wrk load (the chat body and token of ``run_gateway_bench.py``, detection and
watermarking off, memory store, access log and metrics on) on each proxy in turn and reads the process's CPU
time from ``/proc``: CPU µs per request is far less sensitive to other work on a shared machine than
requests/s (contention stretches wall time, not the CPU a request needs). Prints per-round numbers and the
medians of CPU µs/request, requests/s and each ipgate's ratio to the bare proxy (by CPU and by req/s).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

# run as a script, bench/ is on sys.path
from profile_gateway import cpu_s
from run_gateway_bench import BODY, ROOT, SECRET, free_port, gateway_config, token, wait_http


def wrk(url: str, conns: int, seconds: int, script: Path) -> tuple[int, float]:
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk against {url} saw failures:\n{out}")
    n = int(out.split(" requests in", 1)[0].rsplit(None, 1)[1])
    rps = float(out.split("Requests/sec:", 1)[1].split()[0])
    return n, rps


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", type=Path, required=True, help="the other source tree (its ipgate runs as 'before')")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--conns", type=int, default=16)
    args = ap.parse_args()
    tree = args.tree.resolve()
    tmp = Path(tempfile.mkdtemp(prefix="ipgate-ab-"))
    env = {**os.environ, "IPGATE_BENCH_JWT": SECRET}
    py = sys.executable
    bport, pport, aport, cport = (free_port() for _ in range(4))
    backend = f"http://127.0.0.1:{bport}"
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(cmd: list[str], where: Path = ROOT) -> subprocess.Popen[bytes]:
        e = env if where == ROOT else {**env, "PYTHONPATH": str(where)}  # before the editable install
        p = subprocess.Popen(cmd, env=e, cwd=where, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(p)
        return p

    try:
        spawn([py, "-m", "gateway", "sim-backend", "--port", str(bport)])
        targets = {"bare aiohttp proxy": (pport, spawn([py, str(ROOT / "bench" / "bare_proxy.py"), "--port",
                                                         str(pport), "--upstream", backend]))}
        for name, port, where in (("ipgate (this tree)", aport, ROOT), ("ipgate (before)", cport, tree)):
            cfg = tmp / f"{port}.yaml"
            cfg.write_text(yaml.safe_dump(gateway_config(backend, port, free_port(), {"kind": "memory"})))
            targets[name] = (port, spawn([py, "-m", "gateway", "serve", "--config", str(cfg), "--log-level",
                                          "WARNING"], where))
        for port, _ in targets.values():
            wait_http(f"http://127.0.0.1:{port}/v1/models")
        check = subprocess.run([py, "-c", "import gateway.pipeline as p; print(p.__file__)"], env={
            **env, "PYTHONPATH": str(tree)}, cwd=tree, capture_output=True, text=True, check=True)
        print(f"before-tree imports {check.stdout.strip()}; load average {os.getloadavg()[0]:.2f}")
        script = tmp / "post.lua"
        script.write_text(f"wrk.method = \"POST\"\nwrk.body = '{__import__('json').dumps(BODY)}'\n"
                          f"wrk.headers[\"Content-Type\"] = \"application/json\"\n"
                          f"wrk.headers[\"Authorization\"] = \"Bearer {token()}\"\n")
        path = "/v1/chat/completions"
        for port, _ in targets.values():
            wrk(f"http://127.0.0.1:{port}{path}", args.conns, 2, script)  # warm-up
        cpu: dict[str, list[float]] = {k: [] for k in targets}
        rps: dict[str, list[float]] = {k: [] for k in targets}
        for rnd in range(args.rounds):
            order = list(targets) if rnd % 2 == 0 else list(reversed(targets))  # alternate who goes first
            for name in order:
                port, proc = targets[name]
                c0 = cpu_s(proc.pid)
                n, r = wrk(f"http://127.0.0.1:{port}{path}", args.conns, args.seconds, script)
                cpu[name].append((cpu_s(proc.pid) - c0) / n * 1e6)
                rps[name].append(r)
                print(f"round {rnd} {name}: {cpu[name][-1]:.0f} µs/req, {r:.0f} req/s", flush=True)
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        bare_cpu = statistics.median(cpu["bare aiohttp proxy"])
        print(f"\n| target (c={args.conns}, {args.rounds} rounds) | CPU µs/req (median) | req/s (median) | "
              "× bare by CPU | × bare by req/s (per round, median) |\n|---|---|---|---|---|")
        for name in targets:
            c, r = statistics.median(cpu[name]), statistics.median(rps[name])
            per_round = statistics.median(a / b for a, b in zip(rps[name], rps["bare aiohttp proxy"], strict=True))
            print(f"| {name} | {c:.0f} | {r:.0f} | {bare_cpu / c:.2f} | {per_round:.2f} |")
        diff = [a - b for a, b in zip(cpu["ipgate (this tree)"], cpu["ipgate (before)"], strict=True)]
        print(f"\nthis tree − before, CPU µs/req per round: {', '.join(f'{d:+.0f}' for d in diff)}; "
              f"median {statistics.median(diff):+.1f}")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
