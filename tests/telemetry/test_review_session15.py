"""Review session 15 (telemetry): defects found, each reproduced with real parts before the fix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from gateway.config import TelemetryConfig
from gateway.config.routing import BackendConfig
from gateway.telemetry.metrics import LATENCY_BUCKETS, Metrics
from gateway.telemetry.tracing import Tracing
from tests.support.harness import app_backend, gateway_config, running_gateway

# A real process whose file size limit (RLIMIT_FSIZE, with SIGXFSZ ignored: writes fail with EFBIG, as on a
# full disk with ENOSPC) cuts the access log in the middle of a batch; then the limit is lifted.
_FULL_DISK = r"""
import resource, signal, sys, time
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
from gateway.telemetry.accesslog import AccessLog, AccessRecord
resource.setrlimit(resource.RLIMIT_FSIZE, (3000, resource.RLIM_INFINITY))
log = AccessLog(file=sys.argv[1])
def rec(i):
    return AccessRecord(f"r{i:04d}", "c", None, "m", "b", "/v1/chat/completions", 200, 1.0)
for i in range(40):
    log.write(rec(i))
time.sleep(0.3)
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
for i in range(40, 45):
    log.write(rec(i))
time.sleep(0.3)
log.close()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE semantics")
def test_a_write_cut_by_a_full_disk_does_not_glue_the_next_line_to_half_a_line(tmp_path: Path) -> None:
    """The disk filled in the middle of a batch: half a line stayed in the file. When space came back, the
    next batch was appended to that half line, so the first record written after recovery was on an
    unparseable line (and counted as written)."""
    path = tmp_path / "access.log"
    run = subprocess.run([sys.executable, "-c", _FULL_DISK, str(path)], capture_output=True, text=True,
                         timeout=30, check=False)
    assert run.returncode == 0, run.stderr
    assert "access log write failed" in run.stderr and "work again" in run.stderr
    parsed, broken = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            parsed.append(json.loads(line)["request_id"])
        except ValueError:
            broken.append(line)
    assert [i for i in parsed if i >= "r0040"] == [f"r{i:04d}" for i in range(40, 45)], broken
    assert len(broken) <= 1 and "r004" not in "".join(broken)  # at most the half line the full disk cut


def _bucket_of(m: Metrics, seconds: float) -> float:
    h = m.request_duration_seconds.labels(route="/v1/chat/completions", model="m")
    h.observe(seconds)
    le = next(b for b in (*LATENCY_BUCKETS, float("inf")) if seconds <= b)
    assert m.registry.get_sample_value(
        "ipgate_request_duration_seconds_bucket",
        {"route": "/v1/chat/completions", "model": "m", "le": str(le) if le != float("inf") else "+Inf"})
    return le


def test_latency_buckets_resolve_generations_up_to_the_proxys_timeout() -> None:
    """A backend may take first_byte_timeout_s (600 s by default) before answering and a stream has no total
    limit, but the top bucket was 60 s: a 61 s answer and a 9-minute one fell in the same +Inf bucket, and
    histogram_quantile (the dashboard's p95/p99 panels) reported 60 s for both."""
    m = Metrics()
    assert _bucket_of(m, 90.0) != _bucket_of(m, 400.0)
    default_timeout = BackendConfig.model_fields["first_byte_timeout_s"].default
    assert max(LATENCY_BUCKETS) >= default_timeout


_CHAT_ANSWER = {"id": "x", "object": "chat.completion", "created": 0, "model": "sim",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


async def test_an_unsampled_traceparent_does_not_opt_a_client_out_of_tracing() -> None:
    """docs: "a client's sampled traceparent is continued; otherwise sample_ratio of requests are traced". A
    client that sent an *unsampled* traceparent (flags 00) was never traced, even with sample_ratio 1: any
    client (an extraction campaign included) could keep all of its requests out of the traces."""
    seen: list[str | None] = []

    async def chat(request: web.Request) -> web.Response:
        seen.append(request.headers.get("traceparent"))
        return web.json_response(_CHAT_ANSWER)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    exporter = InMemorySpanExporter()
    tracing = Tracing.from_config(TelemetryConfig(sample_ratio=1.0), exporter=exporter)
    trace_id = "0af7651916cd43ddffffffffffffffff"  # the caller picks it: low 64 bits above any ratio's bound
    async with app_backend(app) as url, running_gateway(gateway_config(url), tracing=tracing) as gw:
        client = gw.openai_client()
        for flags in ("00", "01"):
            await client.chat.completions.create(
                model="sim", messages=[{"role": "user", "content": "x"}], max_tokens=4,
                extra_headers={"traceparent": f"00-{trace_id}-b7ad6b7169203331-{flags}"})
        await client.close()
        tracing.force_flush()
    spans = exporter.get_finished_spans()
    assert len(spans) == 2, "a request with an unsampled traceparent was not traced at sample_ratio 1"
    assert {format(s.context.trace_id, "032x") for s in spans} == {trace_id}  # the caller's trace, continued
    assert all(h is not None and h.endswith("-01") for h in seen)


def test_a_caller_chosen_trace_id_does_not_decide_the_sample() -> None:
    """With sample_ratio between 0 and 1 an unsampled traceparent gets sample_ratio by a draw, not by the
    caller's trace id (TraceIdRatioBased on it would let a client pick ids that are never sampled)."""
    exporter = InMemorySpanExporter()
    tracing = Tracing.from_config(TelemetryConfig(sample_ratio=0.5), exporter=exporter)
    carrier = {"traceparent": "00-0af7651916cd43ddffffffffffffffff-b7ad6b7169203331-00"}
    for _ in range(200):
        with tracing.span("chat", kind=SpanKind.SERVER, carrier=carrier):
            pass
    tracing.force_flush()
    assert 50 < len(exporter.get_finished_spans()) < 150  # ~100 of 200; P(outside) < 1e-12
    tracing.shutdown()


_JWKS_TEST = """
rule_files: [rules.yaml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # replica a cannot reach the IdP; replica b fetches fine
      - series: 'ipgate_jwks_fetches_total{job="ipgate",instance="a",outcome="error"}'
        values: '0+1x40'
      - series: 'ipgate_jwks_fetches_total{job="ipgate",instance="a",outcome="ok"}'
        values: '5x40'
      - series: 'ipgate_jwks_fetches_total{job="ipgate",instance="b",outcome="ok"}'
        values: '5+1x40'
    alert_rule_test:
      - eval_time: 20m
        alertname: IpgateJwksFetchFailing
        exp_alerts: [{exp_labels: {severity: warning, job: ipgate, instance: a}}]
"""


def test_one_replica_that_cannot_fetch_the_jwks_is_not_hidden_by_the_others(tmp_path: Path) -> None:
    """IpgateJwksFetchFailing summed over every replica: one replica whose every fetch failed (its own DNS,
    proxy or egress rule) was hidden by any other replica's successful fetch. After the IdP's next key rotation
    that replica answers its clients 401 while the others serve."""
    import shutil

    import yaml

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed")
    rules = Path(__file__).resolve().parents[2] / "deploy" / "prometheus-rules.yaml"
    doc = yaml.safe_load(rules.read_text(encoding="utf-8"))
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)  # promtool compares annotations verbatim
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    (tmp_path / "jwks.test.yaml").write_text(_JWKS_TEST, encoding="utf-8")
    run = subprocess.run([promtool, "test", "rules", "jwks.test.yaml"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
