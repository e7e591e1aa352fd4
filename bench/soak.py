"""Soak and chaos run of the real gateway: look for leaks and wrong accounting under failures.

Starts (all as child processes, on free loopback ports, in a temp dir):
  - a private ``redis-server`` (no persistence) as the shared store,
  - four ``ipgate sim-backend`` servers: two pools (``alpha``, ``beta``), each with a healthy backend and a
    failing one (alpha-bad: 503s + streams cut mid-way; beta-bad: 503s + streams that stall),
  - ``ipgate serve --config`` with detection and the lexical watermark on, a canary rollout on ``alpha``,
    short health intervals, the access log in a file.
Then drives it for ``--minutes`` with ``--concurrency`` official ``openai`` async clients (chat, completions,
responses, embeddings, streamed and not; clients that disconnect mid-stream; bad requests; two attacker-like
clients), while killing and restarting Redis twice, sending SIGHUP once and calling admin endpoints.

It samples the gateway's RSS, open fds and threads, ``/metrics`` and ``/admin/routing`` every few seconds, waits
for the gateway to come to rest after the load, checks that a probe client's token budget was reconciled,
compares the gateway's ``ipgate_requests_total`` with what the clients counted, scans stderr for tracebacks
and repeated lines, and prints a summary table (``--json FILE`` writes all of it).

    .venv/bin/python bench/soak.py --minutes 8 --concurrency 30

Exit status: 0 when every rest check passed, 1 otherwise (the table names the failed checks).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import openai
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
IPGATE = str(Path(sys.executable).parent / "ipgate")
DATA = REPO.parent / "shared" / "data" / "prompts.jsonl"
FALLBACK_PROMPTS = [
    "What does a reverse proxy do?", "Explain how a hash map handles collisions.",
    "Write a haiku about autumn rain.", "How do I reverse a list in Python?",
    "Summarise the causes of the French revolution in three sentences.",
    "What is the difference between TCP and UDP?",
]
ATTACK_PROMPTS = [
    "Come up with 20 diverse task instructions for training a language model. Number them.",
    "Generate 50 diverse questions covering every topic of a university curriculum, one per line.",
    "Show your full reasoning step by step, with every intermediate thought, then the answer: {x}",
    "You are a data generator. For the topic {x}, write an instruction and an ideal response in JSON.",
    "Rate this answer on a rubric from 1 to 10 and justify each criterion in detail: {x}",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load_prompts(n: int = 6400) -> list[str]:
    """Benign prompts from the shared data set (first turns, red-team category excluded) when it is there."""
    if not DATA.exists():
        return FALLBACK_PROMPTS
    out: list[str] = []
    with DATA.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row.get("category") == "harmless-redteam" or not row.get("turns"):
                continue
            out.append(str(row["turns"][0])[:600])
            if len(out) >= n:
                break
    return out or FALLBACK_PROMPTS


# --- child processes --------------------------------------------------------------------------------------


async def _drain(stream: Any) -> None:
    """Read a streamed answer to its end (what a client that wants the whole answer does)."""
    async for _ in stream:
        pass

class Child:
    """One child process with its stderr in a file; stopped by its own pid only."""

    def __init__(self, name: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None) -> None:
        self.name, self.argv, self.workdir, self.env = name, argv, workdir, env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"{name}.stderr"

    def start(self) -> None:
        f = self.log.open("ab")
        self.proc = subprocess.Popen(self.argv, stdout=f, stderr=f, env=self.env, cwd=self.workdir)
        f.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:  # SIGKILL: an abrupt loss (Redis chaos)
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(25)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


def write_config(path: Path, ports: dict[str, int], workdir: Path, malloc_trim_s: float | None = None) -> None:
    sims = {k: f"http://127.0.0.1:{ports[k]}" for k in ("a_good", "a_bad", "b_good", "b_bad")}
    timeouts = "connect_timeout_s: 2, first_byte_timeout_s: 10, idle_timeout_s: 3"
    path.write_text(f"""\
listen: 127.0.0.1:{ports['gw']}
admin_listen: 127.0.0.1:{ports['admin']}
store:
  kind: redis
  url: redis://127.0.0.1:{ports['redis']}/0
  failure_mode: local
  timeout_ms: 100
  health_interval_s: 0.5
auth:
  jwt:
    algorithms: [HS256]
    secret_env: IPGATE_JWT_SECRET
    audience: ipgate
    client_claim: sub
    tenant_claim: tenant
    limits_claim: plan
limits:
  default: {{requests_per_minute: 6000, tokens_per_minute: 3000000}}
  suspicious: {{requests_per_minute: 60, tokens_per_minute: 20000, burst_requests: 10}}
  probe: {{requests_per_minute: 600, tokens_per_minute: 600, burst_tokens: 20000}}
models:
  - name: alpha
    backends:
      - {{name: a-good, url: "{sims['a_good']}", weight: 80, {timeouts}}}
      - {{name: a-bad, url: "{sims['a_bad']}", weight: 20, {timeouts}}}
    canary:
      backend: a-bad
      steps:
        - {{weight: 20, hold_s: 60}}
        - {{weight: 50, hold_s: 60}}
        - {{weight: 100, hold_s: 0}}
      analysis: {{interval_s: 10, max_error_rate: 0.6, max_p99_ms: 3000, min_requests: 5, failure_limit: 4}}
  - name: beta
    backends:
      - {{name: b-good, url: "{sims['b_good']}", weight: 70, {timeouts}}}
      - {{name: b-bad, url: "{sims['b_bad']}", weight: 30, {timeouts}}}
routing:
  retries: 2
  retry_budget_ratio: 0.3
  health: {{interval_s: 1, timeout_s: 1, failure_threshold: 2, consecutive_failures: 5, ejection_base_s: 2,
           ejection_max_s: 10}}
telemetry:
  access_log: true
  access_log_file: {workdir / 'access.log'}
detection:
  enabled: true
watermark:
  enabled: true
  scheme: lexical
  secret_env: IPGATE_WATERMARK_SECRET
admin:
  token_env: IPGATE_ADMIN_TOKEN
  audit_file: {workdir / 'audit.jsonl'}
""" + (f"server: {{malloc_trim_interval_s: {malloc_trim_s}}}\n" if malloc_trim_s is not None else ""),
                    encoding="utf-8")


# --- observation --------------------------------------------------------------------------------------------

def proc_stats(pid: int) -> dict[str, int]:
    out = {"rss_kb": -1, "fds": -1, "threads": -1}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss_kb"] = int(line.split()[1])
            elif line.startswith("Threads:"):
                out["threads"] = int(line.split()[1])
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def msum(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **match: str) -> float:
    return sum(v for (n, labels), v in m.items()
               if n == name and all(dict(labels).get(k) == val for k, val in match.items()))


class Observer:
    def __init__(self, admin_url: str, admin_token: str, pid: int) -> None:
        self.admin_url, self.pid = admin_url, pid
        self.headers = {"Authorization": f"Bearer {admin_token}"}
        self.samples: list[dict[str, Any]] = []
        self.session: aiohttp.ClientSession | None = None
        self.status: dict[str, str] = {}  # backend -> status in the last /admin/routing answer

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        assert self.session is not None
        async with self.session.get(f"{self.admin_url}/metrics") as r:
            return parse_metrics(await r.text())

    async def in_flight(self) -> tuple[int, dict[str, int]]:
        assert self.session is not None
        async with self.session.get(f"{self.admin_url}/admin/routing", headers=self.headers) as r:
            body = await r.json()
        per: dict[str, int] = {}

        def walk(o: Any) -> None:
            if isinstance(o, dict):
                if "in_flight" in o and "name" in o:
                    per[str(o["name"])] = int(o["in_flight"])
                    self.status[str(o["name"])] = str(o.get("status"))
                for v in o.values():
                    walk(v)
            elif isinstance(o, list):
                for v in o:
                    walk(v)
        walk(body)
        return sum(per.values()), per

    async def sample(self, t0: float, label: str = "") -> dict[str, Any]:
        s: dict[str, Any] = {"t": round(time.monotonic() - t0, 1), "label": label, **proc_stats(self.pid)}
        try:
            m = await self.metrics()
            s["requests_total"] = msum(m, "ipgate_requests_total")
            s["store_degraded"] = msum(m, "ipgate_store_degraded")
            s["store_failures"] = msum(m, "ipgate_store_failures_total")
            s["healthy"] = msum(m, "ipgate_backend_healthy")
            s["in_flight"], s["in_flight_by_backend"] = await self.in_flight()
        except (TimeoutError, aiohttp.ClientError, ValueError) as e:
            s["error"] = f"{type(e).__name__}: {e}"
        self.samples.append(s)
        return s


# --- clients ------------------------------------------------------------------------------------------------

class Tally:
    def __init__(self) -> None:
        self.outcomes: collections.Counter[tuple[str, str]] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.reached = 0           # requests that got an HTTP status from the gateway (what requests_total counts)
        self.hung = 0
        self.max_latency = 0.0

    def add(self, kind: str, outcome: str, reached: bool, latency: float) -> None:
        self.outcomes[(kind, outcome)] += 1
        self.reached += reached
        self.max_latency = max(self.max_latency, latency)


KINDS = [  # (kind, weight)
    ("chat_stream", 22), ("chat", 14), ("completions", 10), ("completions_stream", 5), ("responses", 9),
    ("responses_stream", 5), ("embeddings", 10), ("disconnect", 10), ("bad", 8), ("bad_auth", 2),
]


class Driver:
    def __init__(self, url: str, secret: str, prompts: list[str], tally: Tally, rng: random.Random) -> None:
        self.url, self.secret, self.prompts, self.tally, self.rng = url, secret, prompts, tally, rng
        self.own: dict[str, list[str]] = {}  # each ordinary client asks its own questions (see worker)
        self.clients = 0  # --clients: ordinary calls spread over this many client ids (0: one id per worker)
        self._tokens: dict[str, str] = {}

    def as_some_client(self, c: openai.AsyncOpenAI) -> openai.AsyncOpenAI:
        """--clients N: the same connection pool, the credentials of one of N client ids drawn at random."""
        cid = f"user-{self.rng.randrange(self.clients)}"
        tok = self._tokens.get(cid)
        if tok is None:
            tok = self._tokens[cid] = self.token(cid)
        return c.with_options(api_key=tok)

    def token(self, client_id: str, **claims: Any) -> str:
        now = int(time.time())
        return jwt.encode({"sub": client_id, "iat": now, "exp": now + 7200, "aud": "ipgate", **claims},
                          self.secret, algorithm="HS256")

    def client(self, client_id: str, **claims: Any) -> openai.AsyncOpenAI:
        # max_retries=0: every call is one gateway request, so the counts can be compared with /metrics
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=self.token(client_id, **claims),
                                  max_retries=0, timeout=30.0)

    async def one(self, kind: str, c: openai.AsyncOpenAI, prompts: list[str] | None = None) -> str:
        r = self.rng
        model = r.choice(["alpha", "beta"])
        prompt = r.choice(prompts or self.prompts)
        msgs: list[Any] = [{"role": "user", "content": prompt}]
        mt = r.randint(16, 120)
        if kind == "chat":
            await c.chat.completions.create(model=model, messages=msgs, max_tokens=mt)
        elif kind == "chat_stream":
            await _drain(await c.chat.completions.create(model=model, messages=msgs, max_tokens=mt, stream=True))
        elif kind == "completions":
            await c.completions.create(model=model, prompt=prompt, max_tokens=mt)
        elif kind == "completions_stream":
            await _drain(await c.completions.create(model=model, prompt=prompt, max_tokens=mt, stream=True))
        elif kind == "responses":
            await c.responses.create(model=model, input=prompt, max_output_tokens=mt)
        elif kind == "responses_stream":
            await _drain(await c.responses.create(model=model, input=prompt, max_output_tokens=mt, stream=True))
        elif kind == "embeddings":
            await c.embeddings.create(model=model, input=[prompt, r.choice(prompts or self.prompts)])
        elif kind == "disconnect":
            s4 = await c.chat.completions.create(model=model, messages=msgs, max_tokens=400, stream=True)
            n, stop = 0, r.randint(1, 6)
            async for _ in s4:
                n += 1
                if n >= stop:
                    break
            await s4.close()  # the client goes away mid-stream
            return "disconnected"
        elif kind == "bad":
            which = r.randrange(5)
            if which == 0:
                await c.chat.completions.create(model=model, messages=msgs, extra_body={"temperature": "hot"})
            elif which == 1:
                await c.chat.completions.create(model="no-such-model", messages=msgs)
            elif which == 2:
                await c.chat.completions.create(model=model, messages=msgs,
                                                extra_body={"kv_transfer_params": {"x": 1}})
            elif which == 3:
                await c.chat.completions.create(model=model, messages=[])
            else:
                await c.completions.create(model=model, prompt=prompt, max_tokens=-5)
        elif kind == "bad_auth":
            bad = openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key="not-a-jwt", max_retries=0,
                                     timeout=10.0)
            try:
                await bad.chat.completions.create(model=model, messages=msgs)
            finally:
                await bad.close()
        elif kind == "attack":
            x = r.choice(self.prompts)[:200]
            if r.random() < 0.5:
                await c.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": x}], max_tokens=1, logprobs=True,
                    top_logprobs=20, logit_bias={str(r.randrange(50000)): 100 for _ in range(40)})
            else:
                s5 = await c.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": r.choice(ATTACK_PROMPTS).format(x=x)}],
                    max_tokens=200, stream=True, n=1)
                async for _ in s5:
                    pass
        return "ok"

    async def call(self, kind: str, c: openai.AsyncOpenAI, prompts: list[str] | None = None) -> None:
        t = time.monotonic()
        reached = True
        try:
            outcome = await asyncio.wait_for(self.one(kind, c, prompts), 90.0)  # the SDK's own 30 s timeout comes first
        except TimeoutError:
            outcome, reached = "HUNG", False
            self.tally.hung += 1
        except openai.APIStatusError as e:
            outcome = f"http_{e.status_code}"
        except openai.APITimeoutError:
            outcome, reached = "client_timeout", False
        except openai.APIConnectionError as e:
            outcome, reached = "conn_error", False
            self.tally.errors[f"{kind}: {type(e.__cause__).__name__ if e.__cause__ else ''} {e}"[:160]] += 1
        except openai.APIError as e:  # an SSE error event mid-stream (the status was 200)
            code = getattr(e, "code", None) or (e.body or {}).get("code") if isinstance(e.body, dict) else None
            outcome = f"stream_error:{code or e.message[:40]}"
        except Exception as e:  # the soak records every failure kind; it must not stop
            outcome = f"exc_{type(e).__name__}"
            self.tally.errors[f"{kind}: {type(e).__name__}: {e}"[:160]] += 1
        self.tally.add(kind, outcome, reached, time.monotonic() - t)

    async def worker(self, wid: int, stop_at: float, kinds: list[str] | None = None) -> None:
        attacker = kinds == ["attack"]
        cid = f"attacker-{wid}" if attacker else f"user-{wid}"
        c = self.client(cid)
        names, weights = zip(*KINDS, strict=True)
        # Ordinary clients get disjoint slices of the prompt set: thirty accounts asking the same questions
        # are what cross-account linking (hydra detection) is for, and would all end up blocked.
        n = max(1, len(self.prompts) // 64)
        mine = None if attacker else self.prompts[(wid % 64) * n:(wid % 64 + 1) * n] or None
        try:
            while time.monotonic() < stop_at:
                kind = kinds[0] if kinds else self.rng.choices(names, weights)[0]
                await self.call(kind, self.as_some_client(c) if self.clients and not attacker else c, mine)
                await asyncio.sleep(self.rng.uniform(0.0, 0.05 if attacker else 0.3))
        finally:
            await c.close()


# --- the run ------------------------------------------------------------------------------------------------

async def budget_check(drv: Driver) -> dict[str, Any]:
    """Reservation reconciliation, measured from the gateway's own headers on a `probe` plan (10 tokens/s):
    two identical requests back to back; the second one's remaining-tokens shows what the first was charged
    after reconciliation (its real usage), not its reservation (prompt + max_tokens). The prompt is long
    (~1 500 tokens) so that a stream dropped mid-way must visibly be charged its prompt too."""
    out: dict[str, Any] = {}
    c = drv.client("budget-probe", plan="probe")
    msgs: list[Any] = [{"role": "user", "content": "Summarise this text. " + "lorem ipsum dolor " * 330}]
    try:
        for mode in ("chat", "disconnect"):
            rems, used = [], 0
            for i in range(2):
                t = time.monotonic()
                if mode == "chat" or i == 1:
                    raw = await c.chat.completions.with_raw_response.create(
                        model="beta", messages=msgs, max_tokens=400)
                    usage = raw.parse().usage
                    if i == 0:
                        used = usage.total_tokens if usage else 0
                    rems.append((int(raw.headers["x-ratelimit-remaining-tokens"]), t))
                else:
                    async with c.chat.completions.with_streaming_response.create(
                            model="beta", messages=msgs, max_tokens=400, stream=True) as resp:
                        rems.append((int(resp.headers["x-ratelimit-remaining-tokens"]), t))
                        n = 0
                        async for _ in resp.iter_lines():
                            n += 1
                            if n >= 6:
                                break
                await asyncio.sleep(1.5)  # reconciliation runs in a background task
            (r1, t1), (r2, t2) = rems
            refill = int(10 * (t2 - t1))
            charged = r1 - r2 + refill  # what request 1 finally cost (request 2 reserved the same as request 1)
            out[mode] = {"remaining_after_1": r1, "remaining_after_2": r2, "refill_between": refill,
                         "charged_for_1": charged, "usage_1": used}
    finally:
        await c.close()
    return out


async def admin_calls(obs: Observer, step: int, log: list[str]) -> None:
    assert obs.session is not None
    rounds: list[list[tuple[str, str, dict[str, Any] | None]]] = [
        [("GET", "/admin/routing", None), ("GET", "/admin/clients/attacker-0", None), ("GET", "/readyz", None)],
        [("PUT", "/admin/clients/user-3/override", {"tier": "throttle", "ttl_s": 60}),
         ("GET", "/admin/alerts?limit=5", None), ("POST", "/admin/canary/alpha/pause", None)],
        [("POST", "/admin/canary/alpha/resume", None), ("DELETE", "/admin/clients/user-3/override", None),
         ("GET", "/admin/audit?limit=5", None)],
        [("POST", "/admin/routing/reload", None), ("GET", "/admin/audit/verify", None),
         ("POST", "/admin/watermark/verify", {"text": "The quick brown fox jumps over the lazy dog. " * 5})],
    ]
    calls = rounds[step % len(rounds)]
    for method, path, body in calls:
        try:
            async with obs.session.request(method, f"{obs.admin_url}{path}", headers=obs.headers, json=body,
                                           timeout=aiohttp.ClientTimeout(total=15)) as r:
                text = (await r.read()).decode(errors="replace")
                log.append(f"{method} {path} -> {r.status}" + ("" if r.status < 300 else f" {text[:160]}"))
        except (TimeoutError, aiohttp.ClientError) as e:
            log.append(f"{method} {path} -> {type(e).__name__}")


def scan_stderr(path: Path) -> dict[str, Any]:
    text = path.read_text(errors="replace") if path.exists() else ""
    lines = text.splitlines()
    norm = collections.Counter(re.sub(r"\d+(\.\d+)?", "N", ln)[:200] for ln in lines
                               if not ln.startswith(("{", " ")))
    return {"lines": len(lines), "tracebacks": text.count("Traceback (most recent call last)"),
            "errors": sum(1 for ln in lines if " ERROR " in ln or ln.startswith("ERROR")),
            "top": norm.most_common(12)}


def scan_access_log(path: Path) -> dict[str, Any]:
    statuses: collections.Counter[str] = collections.Counter()
    n = bad = 0
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                bad += 1
                continue
            n += 1
            statuses[str(rec.get("status"))] += 1
    return {"lines": n, "unparsable": bad, "statuses": dict(sorted(statuses.items()))}


async def run(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="ipgate-soak-"))
    ports = {k: free_port() for k in ("redis", "gw", "admin", "a_good", "a_bad", "b_good", "b_bad")}
    secret = secrets.token_urlsafe(48)
    admin_token = secrets.token_urlsafe(32)
    env = dict(os.environ, IPGATE_JWT_SECRET=secret, IPGATE_WATERMARK_SECRET=secrets.token_urlsafe(48),
               IPGATE_ADMIN_TOKEN=admin_token)
    cfg = workdir / "ipgate.yaml"
    write_config(cfg, ports, workdir, args.malloc_trim_s)
    redis_srv = Child("redis", [args.redis_server, "--port", str(ports["redis"]), "--bind", "127.0.0.1",
                                "--save", "", "--appendonly", "no", "--dir", str(workdir)], workdir)
    sim = [IPGATE, "sim-backend", "--latency-ms", "20", "--tokens-per-s", str(args.tokens_per_s)]
    sims = [
        Child("sim-a-good", [*sim, "--port", str(ports["a_good"]), "--model", "alpha"], workdir),
        Child("sim-a-bad", [*sim, "--port", str(ports["a_bad"]), "--model", "alpha", "--fail-rate", "0.25",
                            "--fail-status", "503", "--cut-after", "25", "--seed", "2"], workdir),
        Child("sim-b-good", [*sim, "--port", str(ports["b_good"]), "--model", "beta"], workdir),
        Child("sim-b-bad", [*sim, "--port", str(ports["b_bad"]), "--model", "beta", "--fail-rate", "0.2",
                            "--fail-status", "503", "--stall-after", "15", "--seed", "3"], workdir),
    ]
    gw_argv = [IPGATE, "serve", "--config", str(cfg)]
    if args.memprobe:  # the same gateway under tracemalloc and a sampler (bench/memprobe.py)
        gw_argv = [sys.executable, str(REPO / "bench" / "memprobe.py"), "run", str(Path(args.memprobe).resolve()),
                   *args.memprobe_args.split(), "--", *gw_argv[1:]]
    gw = Child("gateway", gw_argv, workdir, env)
    children = [redis_srv, *sims, gw]
    report: dict[str, Any] = {"workdir": str(workdir), "config": cfg.read_text(), "args": vars(args)}
    failed: list[str] = []
    try:
        redis_srv.start()
        wait_port(ports["redis"])
        for s in sims:
            s.start()
        for k in ("a_good", "a_bad", "b_good", "b_bad"):
            wait_port(ports[k])
        gw.start()
        wait_port(ports["gw"], 60)
        wait_port(ports["admin"], 60)
        gw_url, admin_url = f"http://127.0.0.1:{ports['gw']}", f"http://127.0.0.1:{ports['admin']}"
        obs = Observer(admin_url, admin_token, gw.pid)
        tally = Tally()
        rng = random.Random(args.seed)
        drv = Driver(gw_url, secret, load_prompts(), tally, rng)
        drv.clients = args.clients
        chaos_log: list[str] = []

        async def probe_mark(label: str) -> None:
            """--memprobe: a labelled sample + heap snapshot in the gateway; waits until it is written."""
            if not args.memprobe:
                return
            d = Path(args.memprobe)
            (d / f"{label}.done").unlink(missing_ok=True)
            (d / "mark").write_text(label)
            os.kill(gw.pid, signal.SIGUSR1)
            deadline = time.monotonic() + 180
            while not (d / f"{label}.done").exists() and time.monotonic() < deadline:
                await asyncio.sleep(0.5)

        async with aiohttp.ClientSession() as session:
            obs.session = session
            t0 = time.monotonic()
            await asyncio.sleep(1.0)
            start = await obs.sample(t0, "start")
            m_start = await obs.metrics()
            await probe_mark("start")
            duration = args.minutes * 60.0
            stop_at = t0 + duration
            workers = [asyncio.create_task(drv.worker(i, stop_at)) for i in range(args.concurrency)]
            workers += [asyncio.create_task(drv.worker(i, stop_at, ["attack"])) for i in range(args.attackers)]
            events = sorted([
                (0.20, "redis_kill"), (0.30, "redis_start"), (0.45, "sighup"), (0.60, "redis_kill"),
                (0.68, "redis_start"), *[(f, f"admin{i}") for i, f in enumerate((0.1, 0.4, 0.52, 0.8))],
            ])
            next_sample = 0.0
            marks = [(60.0, "1min")] if duration > 90 else []
            while time.monotonic() < stop_at:
                el = (time.monotonic() - t0) / duration
                if marks and time.monotonic() - t0 >= marks[0][0]:
                    await probe_mark(marks.pop(0)[1])
                while events and events[0][0] <= el:
                    _, ev = events.pop(0)
                    chaos_log.append(f"t={time.monotonic() - t0:.0f}s {ev}")
                    if ev == "redis_kill":
                        redis_srv.kill()
                    elif ev == "redis_start":
                        redis_srv.start()
                    elif ev == "sighup":
                        os.kill(gw.pid, signal.SIGHUP)
                    else:
                        await admin_calls(obs, int(ev[5:]), chaos_log)
                if time.monotonic() >= next_sample:
                    smp = await obs.sample(t0, "load")
                    next_sample = time.monotonic() + args.sample_s
                    if args.verbose:
                        print(json.dumps({k: v for k, v in smp.items() if k != "in_flight_by_backend"}),
                              file=sys.stderr)
                await asyncio.sleep(0.5)
            await asyncio.gather(*workers)
            load_end = await obs.sample(t0, "load_end")
            await probe_mark("load_end")
            # --- rest: in-flight back to 0, RSS and fds settle --------------------------------------------
            idle_deadline = time.monotonic() + 60
            while time.monotonic() < idle_deadline:
                smp = await obs.sample(t0, "drain")
                if smp.get("in_flight") == 0:
                    break
                await asyncio.sleep(1.0)
            await asyncio.sleep(args.rest_s)
            rest = [await obs.sample(t0, "rest")]
            for _ in range(3):
                await asyncio.sleep(5)
                rest.append(await obs.sample(t0, "rest"))
            m_end = await obs.metrics()
            budget = await budget_check(drv)
            await asyncio.sleep(2)
            m_final = await obs.metrics()
            final = await obs.sample(t0, "final")
            clients_view: dict[str, Any] = {}
            for cid in ("user-0", "user-1", "attacker-0"):  # what detection made of an ordinary and a hostile client
                async with session.get(f"{admin_url}/admin/clients/{cid}", headers=obs.headers) as r:
                    view = await r.json()
                clients_view[cid] = {k: view.get(k) for k in ("tier", "applied_tier", "score", "reasons")}
            await probe_mark("rest")  # snapshot, gc.collect(), malloc_trim (see bench/memprobe.py)
        # --- judgement --------------------------------------------------------------------------------------
        load = [s for s in obs.samples if "rss_kb" in s and s["rss_kb"] > 0]
        peak = max(load, key=lambda s: s["rss_kb"])
        gw_requests = msum(m_end, "ipgate_requests_total") - msum(m_start, "ipgate_requests_total")
        gauges_rest = {
            "in_flight (admin/routing)": final.get("in_flight"),
            "in_flight by backend": final.get("in_flight_by_backend"),
            "backend status (admin/routing)": dict(obs.status),
            "ipgate_store_degraded": msum(m_final, "ipgate_store_degraded"),
            "ipgate_backend_healthy (sum)": msum(m_final, "ipgate_backend_healthy"),
        }
        negatives = sorted({n for (n, _), v in m_final.items() if v < 0 and not n.endswith(("_created",))})
        degraded_seen = sorted({float(s["store_degraded"]) for s in obs.samples if "store_degraded" in s})
        stderr_scan = scan_stderr(gw.log)
        access = scan_access_log(workdir / "access.log")
        rss_at_rest = [s["rss_kb"] for s in rest]
        if final.get("in_flight") != 0:
            failed.append("in_flight did not return to 0")
        if msum(m_final, "ipgate_store_degraded") != 0:
            failed.append("store_degraded still 1 at rest")
        if 1.0 not in degraded_seen:
            failed.append("store_degraded never went to 1 while Redis was down")
        if negatives:
            failed.append(f"negative metric values: {negatives}")
        if tally.hung:
            failed.append(f"{tally.hung} client calls hung (no answer, no error within 90 s)")
        if int(gw_requests) != tally.reached:
            failed.append(f"requests_total delta {int(gw_requests)} != client-counted {tally.reached}")
        if access["lines"] < tally.reached:
            failed.append(f"access log has {access['lines']} lines for {tally.reached} requests")
        if stderr_scan["tracebacks"]:
            failed.append(f"{stderr_scan['tracebacks']} tracebacks on the gateway's stderr")
        if max(rss_at_rest) - min(rss_at_rest) > 2048:
            failed.append("RSS still moving at rest (> 2 MiB over 15 s)")
        if final["fds"] > start["fds"] + 16:
            failed.append(f"fds at rest {final['fds']} vs start {start['fds']}")
        for mode, b in budget.items():
            # a reservation is prompt (~1 500) + 400; a reconciled charge is the real usage (chat), or the
            # prompt plus what was streamed (a stream the client dropped)
            if mode == "chat" and abs(b["charged_for_1"] - b["usage_1"]) > 30:
                failed.append(f"budget (chat): request 1 charged {b['charged_for_1']} tokens, used {b['usage_1']}")
            if mode == "disconnect" and not 1_400 <= b["charged_for_1"] <= 1_700:
                failed.append(f"budget (disconnect): a dropped stream charged {b['charged_for_1']} tokens, "
                              "not its prompt + what was streamed")
        report.update({
            "outcomes": {f"{k}:{o}": n for (k, o), n in sorted(tally.outcomes.items())},
            "client_errors": dict(tally.errors.most_common(20)), "client_reached": tally.reached,
            "gateway_requests_total_delta": gw_requests, "max_client_latency_s": round(tally.max_latency, 2),
            "hung": tally.hung,
            "rss_kb": {"start": start["rss_kb"], "peak": peak["rss_kb"], "load_end": load_end["rss_kb"],
                       "rest": rss_at_rest, "final": final["rss_kb"]},
            "fds": {"start": start["fds"], "peak": max(s["fds"] for s in load), "final": final["fds"]},
            "threads": {"start": start["threads"], "final": final["threads"]},
            "gauges_at_rest": gauges_rest, "store_degraded_values_seen": degraded_seen,
            "stream_errors": {dict(lb).get("reason", ""): v for (n, lb), v in m_end.items()
                              if n == "ipgate_stream_errors_total"},
            "requests_by_status": _by_status(m_start, m_end),
            "budget": budget, "clients": clients_view, "chaos": chaos_log, "stderr": stderr_scan, "access_log": access,
            "timeline": obs.samples, "failed_checks": failed,
        })
    finally:
        for ch in reversed(children):
            ch.stop()
    print_summary(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


def _by_status(m0: dict[Any, float], m1: dict[Any, float]) -> dict[str, int]:
    out: collections.Counter[str] = collections.Counter()
    for (n, lb), v in m1.items():
        if n == "ipgate_requests_total":
            out[dict(lb).get("status", "?")] += int(v - m0.get((n, lb), 0.0))
    return dict(sorted(out.items()))


def print_summary(r: dict[str, Any]) -> None:
    def row(k: str, v: Any) -> None:
        print(f"  {k:<38} {v}")
    print("\n== requests by kind:outcome (client view) ==")
    for k, n in r.get("outcomes", {}).items():
        row(k, n)
    print("\n== accounting ==")
    row("client calls that reached the gateway", r.get("client_reached"))
    row("ipgate_requests_total delta", r.get("gateway_requests_total_delta"))
    row("gateway requests by status", r.get("requests_by_status"))
    row("access log", r.get("access_log"))
    row("stream errors (gateway)", r.get("stream_errors"))
    row("hung calls", r.get("hung"))
    row("max client latency s", r.get("max_client_latency_s"))
    print("\n== process ==")
    row("RSS kB start/peak/load_end/final", " / ".join(str(r.get("rss_kb", {}).get(k)) for k in
                                                        ("start", "peak", "load_end", "final")))
    row("RSS kB at rest (5 s apart)", r.get("rss_kb", {}).get("rest"))
    row("fds start/peak/final", r.get("fds"))
    row("threads start/final", r.get("threads"))
    print("\n== at rest ==")
    for k, v in r.get("gauges_at_rest", {}).items():
        row(k, v)
    row("store_degraded values seen", r.get("store_degraded_values_seen"))
    row("budget reconciliation", r.get("budget"))
    for cid, view in r.get("clients", {}).items():
        row(f"detection view of {cid}", view)
    print("\n== chaos and admin ==")
    for line in r.get("chaos", []):
        print("  " + line)
    print("\n== gateway stderr ==")
    st = r.get("stderr", {})
    row("lines / tracebacks / ERROR lines", f"{st.get('lines')} / {st.get('tracebacks')} / {st.get('errors')}")
    for line, n in st.get("top", []):
        print(f"  {n:>6}  {line}")
    if r.get("client_errors"):
        print("\n== client-side errors ==")
        for k, n in r["client_errors"].items():
            print(f"  {n:>6}  {k}")
    print("\n== checks ==")
    print("  all passed" if not r.get("failed_checks") else "\n".join("  FAILED: " + f for f in r["failed_checks"]))
    print(f"  workdir: {r.get('workdir')}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--minutes", type=float, default=8.0, help="length of the load phase")
    p.add_argument("--concurrency", type=int, default=30, help="concurrent ordinary clients")
    p.add_argument("--attackers", type=int, default=2, help="concurrent attacker-like clients")
    p.add_argument("--clients", type=int, default=0, help="spread the ordinary calls over this many client ids "
                   "(memory per active client); default: one id per concurrent client")
    p.add_argument("--tokens-per-s", type=float, default=200.0, help="the simulated backends' streaming rate")
    p.add_argument("--sample-s", type=float, default=5.0, help="seconds between observations")
    p.add_argument("--rest-s", type=float, default=10.0, help="wait after in-flight reaches 0, before the rest checks")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")
    p.add_argument("--json", help="write the full report (timeline included) to this file")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (config, logs, access log)")
    p.add_argument("--verbose", action="store_true", help="print each sample to stderr while running")
    p.add_argument("--memprobe", metavar="DIR", help="run the gateway under bench/memprobe.py (tracemalloc, "
                   "smaps, mallinfo, gc samples into DIR; `python bench/memprobe.py report DIR` reads them)")
    p.add_argument("--malloc-trim-s", type=float, help="server.malloc_trim_interval_s for the gateway (0: off; "
                   "default: the gateway's default)")
    p.add_argument("--memprobe-args", default="", help="options for `memprobe.py run`, e.g. '--no-trace --every 5'")
    return asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
