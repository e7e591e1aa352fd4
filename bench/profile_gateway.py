"""Where ipgate's time goes: CPU per request (from /proc) of ipgate (memory store) vs the bare aiohttp proxy
under the same wrk load, and a py-spy profile (GIL-holding samples) of ipgate grouped by code area.

    .venv/bin/python bench/profile_gateway.py [--seconds 10]      # needs wrk and py-spy (pip: .[bench])
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

# run as a script, bench/ is on sys.path: share the benchmark's helpers and configuration
from run_gateway_bench import BODY, ROOT, SECRET, free_port, gateway_config, token, wait_http

CLK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK  # utime + stime


def wrk(url: str, seconds: int, script: Path) -> int:
    out = subprocess.run(["wrk", "-t1", "-c16", f"-d{seconds}s", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    return int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]


def area(frame: str) -> str:
    m = re.search(r"\((\S+?):\d+\)", frame)
    path = m.group(1) if m else frame
    if "aiohttp" in path:
        return "aiohttp (server + client)"
    if "asyncio" in path or "selectors" in path:
        return "asyncio event loop"
    for key in ("gateway/telemetry", "gateway/store", "gateway/ratelimit", "gateway/auth", "gateway/routing",
                "gateway/proxy", "gateway/"):
        if key in path:
            return key.rstrip("/")
    for key, name in (("json/", "json (stdlib)"), ("prometheus_client", "prometheus_client"),
                      ("<string>", "dataclass __init__"), ("threading", "threads (access-log writer)"),
                      ("queue", "threads (access-log writer)"), ("multidict", "multidict"), ("yarl", "yarl"),
                      ("opentelemetry", "opentelemetry")):
        if key in path:
            return name
    return "other"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ipgate-prof-"))
    env = {**os.environ, "IPGATE_BENCH_JWT": SECRET}
    py = sys.executable
    bport, pport, mport = free_port(), free_port(), free_port()
    backend = f"http://127.0.0.1:{bport}"
    cfg = tmp / "ipgate.yaml"
    cfg.write_text(yaml.safe_dump(gateway_config(backend, mport, free_port(), {"kind": "memory"})))
    procs = [subprocess.Popen(c, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for c in (
        [py, "-m", "gateway", "sim-backend", "--port", str(bport)],
        [py, str(ROOT / "bench" / "bare_proxy.py"), "--port", str(pport), "--upstream", backend],
        [py, "-m", "gateway", "serve", "--config", str(cfg), "--log-level", "WARNING"])]
    try:
        for p in (bport, pport, mport):
            wait_http(f"http://127.0.0.1:{p}/v1/models")
        script = tmp / "post.lua"
        script.write_text(f"wrk.method = \"POST\"\nwrk.body = '{__import__('json').dumps(BODY)}'\n"
                          f"wrk.headers[\"Content-Type\"] = \"application/json\"\n"
                          f"wrk.headers[\"Authorization\"] = \"Bearer {token()}\"\n")
        url = "/v1/chat/completions"
        for name, port, proc in (("bare aiohttp proxy", pport, procs[1]), ("ipgate (memory store)", mport, procs[2])):
            wrk(f"http://127.0.0.1:{port}{url}", 2, script)
            c0 = cpu_s(proc.pid)
            n = wrk(f"http://127.0.0.1:{port}{url}", args.seconds, script)
            print(f"{name}: {(cpu_s(proc.pid) - c0) / n * 1e6:.0f} µs CPU per request ({n} requests)")
        raw = tmp / "profile.txt"
        load = subprocess.Popen(["wrk", "-t1", "-c16", f"-d{args.seconds + 4}s", "-s", str(script),
                                 f"http://127.0.0.1:{mport}{url}"], stdout=subprocess.DEVNULL)
        time.sleep(1)
        subprocess.run([str(Path(py).parent / "py-spy"), "record", "-p", str(procs[2].pid), "-d", str(args.seconds),
                        "-r", "400", "--gil", "-f", "raw", "-o", str(raw)], check=True, capture_output=True)
        load.wait()
        by_area: collections.Counter[str] = collections.Counter()
        total = 0
        for line in raw.read_text().splitlines():
            stack, _, n_s = line.rpartition(" ")
            total += int(n_s)
            by_area[area(stack.split(";")[-1])] += int(n_s)
        print("\n| code area (self time, GIL held) | share |\n|---|---|")
        for k, v in by_area.most_common():
            print(f"| {k} | {100 * v / total:.1f} % |")
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
