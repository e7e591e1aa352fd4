"""Review guard: a client (or a misbehaving identity provider) that sends many distinct unknown class names in
its tokens cannot grow the gateway's memory or its logs without bound, and never gets more than ``default``;
the metric has no label to blow up."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from gateway.auth.limitclass import LimitClasses
from gateway.telemetry.metrics import Metrics


def test_a_flood_of_unknown_class_names_is_bounded_in_memory_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics(CollectorRegistry())
    lc = LimitClasses(("default", "free", "enterprise"), {"acme": "enterprise"}, metrics=metrics)
    with caplog.at_level(logging.WARNING, logger="gateway.auth.limitclass"):
        got = {lc.for_jwt(f"plan-{i}-" + "x" * 500, "acme") for i in range(2000)}
    assert got == {"default"}  # never the tenant's (looser) class, never an error
    assert len(lc._logged) <= 257
    assert len(caplog.records) <= 258 and all(len(r.getMessage()) < 400 for r in caplog.records)
    assert metrics.limit_class_unknown_total._value.get() == 2000
    assert [m.name for m in metrics.registry.collect() if m.name == "ipgate_limit_class_unknown"] and all(
        not s.labels for m in metrics.registry.collect() if m.name == "ipgate_limit_class_unknown"
        for s in m.samples)
