"""Review session 14 (fingerprint checks): a hostile backend's answers, and the verdict gauge across reloads
with ``--workers`` (prometheus multiprocess mode). Real aiohttp model servers, the real checker and router."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, values
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import FingerprintConfig, ModelConfig, RoutingConfig
from gateway.fingerprinting import FingerprintChecker
from gateway.routing.router import Router
from gateway.telemetry.metrics import Metrics
from tests.fingerprint.conftest import ModelServer
from tests.fingerprint.test_checker import MODEL, model_cfg, record

# 100 000 levels of nesting in 200 KB, well under the client's 1 MiB answer limit: json.loads raises
# RecursionError, which is not a ValueError
NESTED = b"[" * 100_000 + b"]" * 100_000
# a hostile backend's error body: a forged log line and a terminal escape (clear screen) for `ipgate fingerprint`
FORGED = "overloaded\n2026-11-27 10:00:00,000 INFO gateway.fingerprinting: model m: backend b matches\x1b[2J\r"


class Hostile(ModelServer):
    """A ModelServer that answers every ``every``-th chat request with ``body`` (status ``status``)."""

    def __init__(self, body: bytes, status: int = 200, every: int = 8) -> None:
        super().__init__()
        self.body, self.bad_status, self.every, self.seen = body, status, every, 0

    async def _chat(self, request: web.Request) -> web.Response:
        self.seen += 1
        if (self.seen - 1) % self.every == 0:
            await request.read()
            return web.Response(body=self.body, status=self.bad_status, content_type="application/json")
        return await super()._chat(request)


@pytest.fixture
async def genuine() -> AsyncIterator[ModelServer]:
    s = ModelServer()
    await s.start()
    try:
        yield s
    finally:
        await s.close()


async def _checker(ref_url: str, b: ModelServer, tmp_path: Path, metrics: Metrics | None = None
                   ) -> tuple[FingerprintChecker, Router]:
    ref = await record(ref_url, tmp_path / "ref.json")
    cfg = ModelConfig.model_validate({"name": MODEL, "backends": [
        {"name": "b", "url": b.url, "fingerprint_reference": str(ref)}]})
    router = Router([cfg], RoutingConfig(), metrics, health_checks=False)
    return FingerprintChecker(FingerprintConfig(timeout_s=5), router, metrics), router


async def test_a_nested_answer_to_one_probe_does_not_void_the_check(genuine: ModelServer, tmp_path: Path) -> None:
    """A swapped backend that answered one probe per round with deeply nested JSON made ``json.loads`` raise
    RecursionError: not a probe failure but an error of the whole round, so every check was "inconclusive:
    check failed: RecursionError" and the swapped backend stayed in rotation for good (exactly what deciding on
    the probes that answered is there to prevent). It is one failed probe; the other seven decide."""
    b = Hostile(NESTED)
    b.weights = "swapped"
    await b.start()
    checker, router = await _checker(genuine.url, b, tmp_path)
    try:
        (check,) = await checker.check_now()
        assert check.verdict == "mismatch", check.reasons
        assert check.quarantined and router.quarantined(MODEL, "b") is not None
        assert "1 of 8 probes failed" in check.reasons
        assert any("the answer is not JSON" in r for r in check.reasons)
        b.weights = "genuine"  # and a genuine one with the same habit still matches
        (check,) = await checker.check_now()
        assert check.verdict == "match" and not check.quarantined
    finally:
        await checker.close()
        await router.close()
        await b.close()


async def test_a_backends_error_body_cannot_forge_log_lines(genuine: ModelServer, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """The first 200 characters of a failed probe's error body went verbatim into the check's reasons, and from
    there into the log line of the state change (and `ipgate fingerprint check`'s output): a suspect backend
    could write a forged "backend b matches" line into the gateway's log, or terminal escapes into the CLI's.
    Control characters are escaped now."""
    b = Hostile(FORGED.encode(), status=500, every=1)  # every probe fails with the forged body
    await b.start()
    checker, router = await _checker(genuine.url, b, tmp_path)
    try:
        with caplog.at_level(logging.INFO, logger="gateway.fingerprinting"):
            (check,) = await checker.check_now()
        assert check.verdict == "inconclusive"
        assert "HTTP 500: overloaded\\n2026-11-27" in check.reasons[0]
        for text in (*check.reasons, *(r.getMessage() for r in caplog.records)):
            assert not any(ord(c) < 0x20 for c in text), repr(text)
        assert "\\x1b[2J\\r" in check.reasons[0]
    finally:
        await checker.close()
        await router.close()
        await b.close()


# --- the verdict gauge of a backend a reload removed ---------------------------------------------------------


@pytest.fixture(params=["single", "workers"])
def metrics(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Metrics]:
    """A worker's Metrics: one process, or one of ``--workers`` (PROMETHEUS_MULTIPROC_DIR, as the supervisor
    sets it; Metrics switches prometheus_client's value class, restored afterwards)."""
    saved = values.ValueClass
    try:
        if request.param == "workers":
            mp = tmp_path / "prom"
            mp.mkdir()
            monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(mp))
        yield Metrics(CollectorRegistry())
    finally:
        values.ValueClass = saved


def _samples(m: Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted((k, v) for k, v in s.labels.items() if k != "pid")): s.value
            for fam in text_string_to_metric_families(m.render()[0].decode()) for s in fam.samples
            if s.name == name}


async def test_a_backend_removed_by_a_reload_leaves_the_mismatch_gauge(
    servers: tuple[ModelServer, ModelServer], tmp_path: Path, metrics: Metrics
) -> None:
    """With ``--workers`` a reload that removed a mismatching backend (the operator's fix of the incident) left
    ``ipgate_fingerprint_match{backend="b"} 0`` exported for as long as the worker lived: prometheus_client
    cannot remove a labelled child in multiprocess mode (it only warns), so the critical alert
    IpgateFingerprintMismatch fired until the next restart. The series goes now, in both modes."""
    a, b = servers
    b.weights = "swapped"
    ref = await record(a.url, tmp_path / "ref.json")
    router = Router([model_cfg(a.url, b.url, ref)], RoutingConfig(), metrics, health_checks=False)
    checker = FingerprintChecker(FingerprintConfig(timeout_s=5), router, metrics)
    try:
        await checker.check_now()
        assert _samples(metrics, "ipgate_fingerprint_match") == {
            (("backend", "a"), ("model", MODEL)): 1.0, (("backend", "b"), ("model", MODEL)): 0.0}
        router.reload([ModelConfig.model_validate({"name": MODEL, "backends": [
            {"name": "a", "url": a.url, "fingerprint_reference": str(ref)}]})])
        await checker.check_now()  # the periodic round forgets the backends a reload removed
        assert _samples(metrics, "ipgate_fingerprint_match") == {(("backend", "a"), ("model", MODEL)): 1.0}
        # the same name added again: its next verdict is exported again
        router.reload([model_cfg(a.url, b.url, ref)])
        await checker.check_now()
        assert _samples(metrics, "ipgate_fingerprint_match")[(("backend", "b"), ("model", MODEL))] == 0.0
    finally:
        await checker.close()
        await router.close()


_WORKER = """
from gateway.telemetry.metrics import Metrics
m = Metrics()
m.fingerprint_match.labels(model="m", backend="a").set(1)
m.fingerprint_match.labels(model="m", backend="b").set(0)
m.retire(m.fingerprint_match, "m", "b")
"""


def test_a_retired_series_yields_to_a_worker_that_still_reports_it(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Across workers (livemin): a series one worker retired is absent unless another live worker still sets it,
    and then that worker's value is the aggregate."""
    mp = tmp_path / "prom"
    mp.mkdir()
    subprocess.run([sys.executable, "-c", _WORKER], env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mp)},
                   check=True, timeout=60)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(mp))
    saved = values.ValueClass
    try:
        m = Metrics(CollectorRegistry())
        a, b = (("backend", "a"), ("model", "m")), (("backend", "b"), ("model", "m"))
        assert _samples(m, "ipgate_fingerprint_match") == {a: 1.0}
        m.fingerprint_match.labels(model="m", backend="b").set(0)  # this worker has not reloaded yet
        assert _samples(m, "ipgate_fingerprint_match") == {a: 1.0, b: 0.0}
        m.retire(m.fingerprint_match, "m", "b")  # now it has
        assert _samples(m, "ipgate_fingerprint_match") == {a: 1.0}
    finally:
        values.ValueClass = saved
