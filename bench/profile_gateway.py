"""Where ipgate's time goes: CPU per request (from /proc) of ipgate (memory store) vs the bare aiohttp proxy
under the same wrk load, and a py-spy profile (GIL-holding samples) of ipgate grouped by code area, with the
top functions by self time and, for detection, by inclusive time.

    .venv/bin/python bench/profile_gateway.py [--seconds 10]              # needs wrk and py-spy (pip: .[bench])
    .venv/bin/python bench/profile_gateway.py --detection [--seconds 10]  # detection on, rotating clients/prompts

``--detection`` runs ipgate with the configuration and the wrk workload of
``bench/detection_gateway_throughput.py`` (512 client tokens, 4 096 real prompts, all detectors on).
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
from detection_gateway_throughput import N_CLIENTS, N_PROMPTS, bodies, detection_config, lua_script, tokens
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
    if "detectors/" in path:
        return "detectors (sans-IO core)"
    if "numpy" in path:
        return "numpy"
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


def short(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``func (file.py)``: one row per function, not per line."""
    m = re.match(r"(.*?) \((\S+?):\d+\)", frame)
    return f"{m.group(1)} ({'/'.join(m.group(2).split('/')[-2:])})" if m else frame


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--detection", action="store_true", help="detection on, rotating clients and prompts")
    ap.add_argument("--top", type=int, default=25, help="functions listed by self and inclusive time")
    ap.add_argument("--tree", type=Path, default=None,
                    help="profile the gateway of another source tree (e.g. an unpacked `git archive HEAD`)")
    ap.add_argument("--raw-out", type=Path, default=None, help="keep py-spy's raw collapsed stacks here")
    ap.add_argument("--inclusive", default="detectors/|detection|account",
                    help="regex: frames listed by inclusive time (default: detection and accounting)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ipgate-prof-"))
    env = {**os.environ, "IPGATE_BENCH_JWT": SECRET}
    py = sys.executable
    bport, pport, mport = free_port(), free_port(), free_port()
    backend = f"http://127.0.0.1:{bport}"
    cfg = tmp / "ipgate.yaml"
    gcfg = gateway_config(backend, mport, free_port(), {"kind": "memory"})
    cfg.write_text(yaml.safe_dump(detection_config(gcfg) if args.detection else gcfg))
    tree = args.tree.resolve() if args.tree else ROOT
    # PYTHONPATH comes before the editable install on sys.path: `-m gateway` imports the chosen tree
    genv = {**env, "PYTHONPATH": str(tree)} if args.tree else env
    procs = [subprocess.Popen(c, env=e, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for c, e, cwd in (
        ([py, "-m", "gateway", "sim-backend", "--port", str(bport)], env, ROOT),
        ([py, str(ROOT / "bench" / "bare_proxy.py"), "--port", str(pport), "--upstream", backend], env, ROOT),
        ([py, "-m", "gateway", "serve", "--config", str(cfg), "--log-level", "WARNING"], genv, tree))]
    print(f"ipgate from {tree}")
    try:
        for p in (bport, pport, mport):
            wait_http(f"http://127.0.0.1:{p}/v1/models")
        script = tmp / "post.lua"
        if args.detection:
            script.write_text(lua_script(tokens(N_CLIENTS), bodies(N_PROMPTS)))
        else:
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
        if args.raw_out:
            args.raw_out.write_text(raw.read_text())
        incl = re.compile(args.inclusive)
        by_area: collections.Counter[str] = collections.Counter()
        by_self: collections.Counter[str] = collections.Counter()
        by_incl: collections.Counter[str] = collections.Counter()
        total = 0
        for line in raw.read_text().splitlines():
            stack, _, n_s = line.rpartition(" ")
            frames = stack.split(";")
            total += int(n_s)
            by_area[area(frames[-1])] += int(n_s)
            by_self[short(frames[-1])] += int(n_s)
            for f in {short(f) for f in frames if incl.search(f)}:
                by_incl[f] += int(n_s)
        print(f"\n{total} samples\n\n| code area (self time, GIL held) | share |\n|---|---|")
        for k, v in by_area.most_common():
            print(f"| {k} | {100 * v / total:.1f} % |")
        print("\n| function (self time) | share |\n|---|---|")
        for k, v in by_self.most_common(args.top):
            print(f"| {k} | {100 * v / total:.1f} % |")
        print(f"\n| function matching {args.inclusive!r} (inclusive time) | share |\n|---|---|")
        for k, v in by_incl.most_common(args.top):
            print(f"| {k} | {100 * v / total:.1f} % |")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
