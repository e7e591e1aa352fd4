"""Metrics: names and labels as the interface promises, no per-client labels, multiprocess aggregation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from gateway.telemetry.metrics import LATENCY_BUCKETS, Metrics

EXPECTED_LABELS = {
    "ipgate_requests": {"route", "model", "backend", "status"},
    "ipgate_request_duration_seconds": {"route", "model"},
    "ipgate_ttft_seconds": {"model"},
    "ipgate_tokens": {"model", "type"},
    "ipgate_rate_limit_decisions": {"kind", "decision"},
    "ipgate_store_failures": {"op"},
    "ipgate_store_degraded": set(),
    "ipgate_backend_ejections": {"model", "backend"},
    "ipgate_backend_healthy": {"model", "backend"},
    "ipgate_canary_weight": {"model", "backend"},
    "ipgate_canary_state": {"model", "state"},
    "ipgate_canary_events": {"model", "event"},
    "ipgate_upstream_retries": {"model"},
    "ipgate_stream_errors": {"model", "reason"},
    "ipgate_overhead_seconds": set(),
    "ipgate_detector_errors": {"detector"},
    "ipgate_detection_tier": {"tier"},
    "ipgate_alerts": {"sink", "outcome"},
    "ipgate_watermark_responses": {"scheme"},
    "ipgate_auth_failures": {"reason"},
}


def _families(body: bytes) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for fam in text_string_to_metric_families(body.decode()):
        labels: set[str] = set()
        for s in fam.samples:
            labels |= set(s.labels) - {"le"}
        out[fam.name] = labels
    return out


def _exercise(m: Metrics) -> None:
    m.requests_total.labels(route="/v1/chat/completions", model="sim", backend="stable", status="200").inc()
    m.request_duration_seconds.labels(route="/v1/chat/completions", model="sim").observe(0.012)
    m.ttft_seconds.labels(model="sim").observe(0.003)
    m.tokens_total.labels(model="sim", type="input").inc(12)
    m.rate_limit_decisions_total.labels(kind="requests", decision="allow").inc()
    m.store_failures_total.labels(op="admit").inc()
    m.store_degraded.set(1)
    m.backend_ejections_total.labels(model="sim", backend="canary").inc()
    m.backend_healthy.labels(model="sim", backend="stable").set(1)
    m.canary_weight.labels(model="sim", backend="canary").set(10)
    m.canary_state.labels(model="sim", state="progressing").set(1)
    m.canary_events_total.labels(model="sim", event="step").inc()
    m.upstream_retries_total.labels(model="sim").inc()
    m.stream_errors_total.labels(model="sim", reason="upstream_cut").inc()
    m.overhead_seconds.observe(0.0002)
    m.detector_errors_total.labels(detector="prada").inc()
    m.detection_tier_total.labels(tier="normal").inc()
    m.alerts_total.labels(sink="jsonl", outcome="delivered").inc()
    m.watermark_responses_total.labels(scheme="lexical").inc()
    m.auth_failures_total.labels(reason="expired").inc()


def test_names_labels_and_no_client_labels() -> None:
    m = Metrics(CollectorRegistry())
    _exercise(m)
    body, ctype = m.render()
    assert ctype.startswith("text/plain")
    fams = _families(body)
    for name, labels in EXPECTED_LABELS.items():
        assert name in fams, name
        assert fams[name] == labels, name
    forbidden = {"client", "client_id", "tenant", "user", "principal", "api_key"}
    assert not any(labels & forbidden for labels in fams.values())


def test_latency_buckets_span_proxy_range() -> None:
    assert LATENCY_BUCKETS[0] == 0.0005 and LATENCY_BUCKETS[-1] == 1800.0
    m = Metrics(CollectorRegistry())
    m.request_duration_seconds.labels(route="r", model="m").observe(0.0004)
    body = m.render()[0].decode()
    assert 'ipgate_request_duration_seconds_bucket{le="0.0005",model="m",route="r"} 1.0' in body


def test_separate_registries_do_not_collide() -> None:
    a, b = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    a.upstream_retries_total.labels(model="x").inc()
    assert b.registry.get_sample_value("ipgate_upstream_retries_total", {"model": "x"}) is None


_WORKER = """
import sys
from gateway.telemetry.metrics import Metrics
m = Metrics()
m.requests_total.labels(route="/v1/chat/completions", model="sim", backend="stable", status="200").inc(int(sys.argv[1]))
m.request_duration_seconds.labels(route="/v1/chat/completions", model="sim").observe(0.01)
m.store_degraded.set(int(sys.argv[2]))
"""


def test_multiprocess_aggregates_workers(tmp_path: Path) -> None:
    """Two worker processes write; the admin view (a Metrics in another process) sums them."""
    mp = tmp_path / "prom"
    mp.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mp)}
    for incs, degraded in ((3, 0), (4, 1)):
        subprocess.run([sys.executable, "-c", _WORKER, str(incs), str(degraded)], env=env, check=True, timeout=60)
    # The subprocesses exited, but their files stay: counters keep their totals (live gauges need the
    # supervisor to call mark_worker_dead; here we read them while the files are still present).
    old = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(mp)
    try:
        from prometheus_client import values

        saved = values.ValueClass
        try:
            admin = Metrics(CollectorRegistry())
            body = admin.render()[0].decode()
        finally:
            values.ValueClass = saved
    finally:
        if old is None:
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]
        else:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = old
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(body) for s in fam.samples
    }
    key = ("ipgate_requests_total", (("backend", "stable"), ("model", "sim"), ("route", "/v1/chat/completions"),
                                     ("status", "200")))
    assert samples[key] == 7
    assert samples[("ipgate_request_duration_seconds_count",
                    (("model", "sim"), ("route", "/v1/chat/completions")))] == 2
    assert samples[("ipgate_store_degraded", ())] == 1  # livemax across workers
