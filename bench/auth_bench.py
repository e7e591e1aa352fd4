"""Microbenchmark: µs per ``Authenticator.authenticate`` (cold JWT verify vs cached vs API key) and the
per-request telemetry calls (metrics, span, access log), on this machine's CPU.

    .venv/bin/python bench/auth_bench.py [--n 20000]

Prints a markdown table. "cold" = a token never seen before (signature + claims checked); "cached" = the
same token again (LRU hit until exp); both go through the full ``authenticate`` coroutine, header parsing
included. Telemetry rows are the calls the pipeline makes once per request.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from prometheus_client import CollectorRegistry

from gateway.auth.apikeys import format_line, generate_key, hash_key
from gateway.auth.authenticator import Authenticator
from gateway.config import AuthConfig, JwtConfig, TelemetryConfig
from gateway.telemetry.accesslog import AccessLog, AccessRecord
from gateway.telemetry.metrics import Metrics
from gateway.telemetry.tracing import Tracing, set_request_attributes, set_response_attributes

SECRET = "bench-secret-" + "z" * 40


def _claims(i: int) -> dict[str, object]:
    now = int(time.time())
    return {"sub": f"client-{i % 100}", "aud": "ipgate", "iat": now, "exp": now + 3600, "jti": str(i),
            "roles": ["chat"], "tenant": "acme"}


async def _per_call_us(fn: Callable[[int], Awaitable[object]], n: int, repeats: int = 5) -> float:
    """Median over ``repeats`` runs of the mean µs per call (the median damps noise from other processes)."""
    runs = []
    for r in range(repeats):
        t0 = time.perf_counter_ns()
        for i in range(n):
            await fn(r * n + i)
        runs.append((time.perf_counter_ns() - t0) / n / 1000)
    return statistics.median(runs)


def _sync_us(fn: Callable[[int], object], n: int, repeats: int = 5) -> float:
    runs = []
    for r in range(repeats):
        t0 = time.perf_counter_ns()
        for i in range(n):
            fn(r * n + i)
        runs.append((time.perf_counter_ns() - t0) / n / 1000)
    return statistics.median(runs)


def _pem(private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, path: Path) -> str:
    path.write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return str(path)


async def main(n: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="ipgate-bench-"))
    env = {"B_SECRET": SECRET}
    metrics = Metrics(CollectorRegistry())
    rows: list[tuple[str, float]] = []

    hs = Authenticator.from_config(
        AuthConfig(jwt=JwtConfig(algorithms=["HS256"], secret_env="B_SECRET"), cache_size=4 * n + 10),
        metrics=metrics, env=env)
    cold_n = max(n // 4, 200)
    hs_tokens = ["Bearer " + jwt.encode(_claims(i), SECRET, algorithm="HS256") for i in range(5 * cold_n)]
    rows.append(("JWT HS256, cold (verify)", await _per_call_us(lambda i: hs.authenticate(hs_tokens[i]), cold_n)))
    hot = hs_tokens[0]
    rows.append(("JWT HS256, cached", await _per_call_us(lambda i: hs.authenticate(hot), n)))

    for alg, key in (("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
                     ("ES256", ec.generate_private_key(ec.SECP256R1()))):
        auth = Authenticator.from_config(AuthConfig(jwt=JwtConfig(
            algorithms=[alg], public_key_file=_pem(key, tmp / f"{alg}.pem")), cache_size=4 * n + 10),
            metrics=metrics)
        k = max(cold_n // 4, 100)
        toks = ["Bearer " + jwt.encode(_claims(i), key, algorithm=alg) for i in range(5 * k)]
        cold = await _per_call_us(lambda i, a=auth, t=toks: a.authenticate(t[i]), k)
        rows.append((f"JWT {alg}, cold (verify)", cold))
        cached = await _per_call_us(lambda i, a=auth, t=toks: a.authenticate(t[0]), n)
        rows.append((f"JWT {alg}, cached", cached))

    api_key = generate_key()
    keyfile = tmp / "keys.txt"
    keyfile.write_text("".join(format_line(hash_key(generate_key()), f"c{i}") + "\n" for i in range(999))
                       + format_line(hash_key(api_key), "svc") + "\n")
    ak = Authenticator.from_config(AuthConfig(jwt=None, api_keys={"file": str(keyfile)}), metrics=metrics)
    header = "Bearer " + api_key
    rows.append(("API key (1 000 keys in file)", await _per_call_us(lambda i: ak.authenticate(header), n)))

    # --- telemetry, per request --------------------------------------------------------------------------
    req = metrics.requests_total
    dur = metrics.request_duration_seconds

    def metric_calls(i: int) -> None:
        req.labels(route="/v1/chat/completions", model="sim", backend="stable", status="200").inc()
        dur.labels(route="/v1/chat/completions", model="sim").observe(0.0123)
        metrics.overhead_seconds.observe(0.0002)

    rows.append(("metrics: requests_total + 2 histograms", _sync_us(metric_calls, n)))

    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    for ratio in (0.0, 0.1, 1.0):
        exporter = InMemorySpanExporter()
        tr = Tracing.from_config(TelemetryConfig(sample_ratio=ratio), exporter=exporter)

        def span_calls(i: int, tr: Tracing = tr) -> None:
            with tr.span("chat sim", {"http.route": "/v1/chat/completions"}) as span:
                set_request_attributes(span, operation="chat", request_model="sim", stream=False)
                set_response_attributes(span, response_model="sim", input_tokens=12, output_tokens=40,
                                        finish_reasons=["stop"])

        rows.append((f"span + GenAI attributes, sample_ratio={ratio}", _sync_us(span_calls, min(n, 5000))))
        tr.shutdown()

    log = AccessLog(file=os.devnull)
    rec = AccessRecord("req", "client", "acme", "sim", "stable", "/v1/chat/completions", 200, 12.3, 0.2, 12, 40,
                       "normal", False, None)
    rows.append(("access log write (queued to writer thread)", _sync_us(lambda i: log.write(rec), n)))
    log.close()

    print(f"n = {n} (cold rows: fewer, distinct tokens); median of 5 runs; µs per call\n")
    print("| operation | µs/call |")
    print("|---|---:|")
    for name, us in rows:
        print(f"| {name} | {us:.2f} |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    asyncio.run(main(ap.parse_args().n))
