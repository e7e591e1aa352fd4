"""The background fingerprint checker against real aiohttp servers playing genuine and swapped backends."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.alerts.dispatcher import AlertDispatcher
from gateway.alerts.sinks import build_sinks
from gateway.config import (
    AlertsConfig,
    AlertSinkConfig,
    ConfigError,
    FingerprintConfig,
    ModelConfig,
    RoutingConfig,
    parse_config,
)
from gateway.errors import NotFound, ServiceUnavailable
from gateway.fingerprint_client import probe_backend
from gateway.fingerprinting import FingerprintChecker
from gateway.routing.canary import Phase
from gateway.routing.pool import Outcome
from gateway.routing.router import Router
from gateway.telemetry.metrics import Metrics
from tests.fingerprint.conftest import ModelServer
from tests.support.harness import eventually, free_port, sim_backend

MODEL = "m"


async def record(url: str, path: Path, model: str = MODEL) -> Path:
    path.write_text((await probe_backend(url, model)).dumps(), encoding="utf-8")
    return path


def model_cfg(a: str, b: str, ref: Path, **extra: Any) -> ModelConfig:
    return ModelConfig.model_validate({"name": MODEL, "backends": [
        {"name": "a", "url": a, "fingerprint_reference": str(ref)},
        {"name": "b", "url": b, "fingerprint_reference": str(ref)},
    ], **extra})


@dataclass
class Rig:
    checker: FingerprintChecker
    router: Router
    metrics: Metrics
    alerts_file: Path

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)

    def served_by(self, n: int = 300) -> set[str]:
        names = set()
        for i in range(n):
            lease = self.router.acquire(MODEL, f"client-{i}")
            names.add(lease.backend.name)
            lease.release(Outcome(ok=True, status=200, latency_s=0.01))
        return names

    async def alerts(self, dispatcher: AlertDispatcher) -> list[dict[str, Any]]:
        await dispatcher.flush()
        if not self.alerts_file.exists():
            return []
        return [json.loads(line) for line in self.alerts_file.read_text().splitlines()]


@pytest.fixture
async def rig(servers: tuple[ModelServer, ModelServer], tmp_path: Path,
              request: pytest.FixtureRequest) -> AsyncIterator[tuple[Rig, AlertDispatcher]]:
    a, b = servers
    ref = await record(a.url, tmp_path / "ref.json")
    action = getattr(request, "param", "eject")
    metrics = Metrics()
    router = Router([model_cfg(a.url, b.url, ref)], RoutingConfig(), metrics, health_checks=False)
    alerts_cfg = AlertsConfig(sinks=[AlertSinkConfig(kind="jsonl", path=str(tmp_path / "alerts.jsonl"))])
    sinks = build_sinks(alerts_cfg.sinks, default_redis_url="")
    dispatcher = AlertDispatcher(alerts_cfg, sinks, metrics=metrics)
    await dispatcher.start()
    checker = FingerprintChecker(FingerprintConfig(action=action, timeout_s=2), router, metrics, dispatcher)
    try:
        yield Rig(checker, router, metrics, tmp_path / "alerts.jsonl"), dispatcher
    finally:
        await checker.close()
        await dispatcher.close()
        await router.close()


async def test_swapped_backend_is_quarantined_then_reinstated(
    rig: tuple[Rig, AlertDispatcher], servers: tuple[ModelServer, ModelServer]
) -> None:
    r, dispatcher = rig
    _, b = servers
    b.weights = "swapped"
    results = {c.backend: c for c in await r.checker.check_now()}
    assert results["a"].verdict == "match" and results["a"].similarity == pytest.approx(1.0)
    assert results["b"].verdict == "mismatch" and results["b"].similarity is not None
    assert results["b"].similarity < 0.5 and results["b"].quarantined
    assert r.router.quarantined(MODEL, "b") is not None
    assert r.served_by() == {"a"}  # Router.acquire never hands out the quarantined backend
    assert r.sample("ipgate_fingerprint_checks_total", model=MODEL, backend="b", verdict="mismatch") == 1
    assert r.sample("ipgate_fingerprint_match", model=MODEL, backend="b") == 0
    assert r.sample("ipgate_fingerprint_match", model=MODEL, backend="a") == 1
    assert r.sample("ipgate_backend_healthy", model=MODEL, backend="b") == 0
    alerts = await r.alerts(dispatcher)
    assert [(x["client"], x["tier"]) for x in alerts] == [(f"backend:{MODEL}/b", "fingerprint_mismatch")]

    # still swapped: still quarantined, and the same incident does not alert again
    assert (await r.checker.check_now(MODEL, "b"))[0].quarantined
    assert len(await r.alerts(dispatcher)) == 1

    b.weights = "genuine"
    (again,) = await r.checker.check_now(MODEL, "b")
    assert again.verdict == "match" and not again.quarantined
    assert r.router.quarantined(MODEL, "b") is None
    assert r.served_by() == {"a", "b"}
    assert r.sample("ipgate_fingerprint_match", model=MODEL, backend="b") == 1
    assert r.sample("ipgate_fingerprint_checks_total", model=MODEL, backend="b", verdict="match") == 1
    assert r.sample("ipgate_backend_healthy", model=MODEL, backend="b") == 1


async def test_probe_error_is_inconclusive_never_an_ejection(
    rig: tuple[Rig, AlertDispatcher], servers: tuple[ModelServer, ModelServer]
) -> None:
    r, dispatcher = rig
    _, b = servers
    b.status = 503
    (check,) = await r.checker.check_now(MODEL, "b")
    assert check.verdict == "inconclusive" and check.similarity is None and not check.quarantined
    assert "HTTP 503" in check.reasons[0]
    assert r.router.quarantined(MODEL, "b") is None and r.served_by() == {"a", "b"}
    assert r.sample("ipgate_fingerprint_checks_total", model=MODEL, backend="b", verdict="inconclusive") == 1
    assert r.sample("ipgate_fingerprint_match", model=MODEL, backend="b") is None
    assert await r.alerts(dispatcher) == []

    # a quarantined backend that then fails its probes stays quarantined: an error proves nothing
    b.status, b.weights = 200, "swapped"
    await r.checker.check_now(MODEL, "b")
    b.status = 503
    (check,) = await r.checker.check_now(MODEL, "b")
    assert check.verdict == "inconclusive" and check.quarantined
    assert r.sample("ipgate_fingerprint_match", model=MODEL, backend="b") == 0  # last conclusive verdict


async def test_unreachable_backend_and_bad_reference_are_inconclusive(
    tmp_path: Path, servers: tuple[ModelServer, ModelServer]
) -> None:
    a, _ = servers
    ref = await record(a.url, tmp_path / "ref.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": "m"}')
    cfg = ModelConfig.model_validate({"name": MODEL, "backends": [
        {"name": "gone", "url": f"http://127.0.0.1:{free_port()}", "fingerprint_reference": str(ref)},
        {"name": "badref", "url": a.url, "fingerprint_reference": str(bad)},
        {"name": "noref", "url": a.url, "fingerprint_reference": str(tmp_path / "missing.json")},
        {"name": "unchecked", "url": a.url},
    ]})
    router = Router([cfg], RoutingConfig(), health_checks=False)
    checker = FingerprintChecker(FingerprintConfig(timeout_s=1), router)
    results = {c.backend: c for c in await checker.check_now()}
    assert set(results) == {"gone", "badref", "noref"}  # no reference: not checked
    assert all(c.verdict == "inconclusive" and not c.quarantined for c in results.values())
    assert "not a fingerprint signature" in results["badref"].reasons[0]
    assert "cannot be read" in results["noref"].reasons[0]
    snap = checker.snapshot()
    assert {b["backend"]: b["verdict"] for b in snap["backends"]} == {
        "gone": "inconclusive", "badref": "inconclusive", "noref": "inconclusive"}


async def test_a_mismatch_must_repeat_before_anything_happens(
    rig: tuple[Rig, AlertDispatcher], servers: tuple[ModelServer, ModelServer]
) -> None:
    r, dispatcher = rig
    servers[1].glitches = 8  # one whole probe round diverges, the confirmation round is genuine
    (check,) = await r.checker.check_now(MODEL, "b")
    assert check.verdict == "inconclusive" and not check.quarantined
    assert "not confirmed" in check.reasons[0]
    assert r.served_by() == {"a", "b"} and await r.alerts(dispatcher) == []
    r.checker.cfg = FingerprintConfig(confirm_mismatch=False)
    servers[1].glitches = 8
    (check,) = await r.checker.check_now(MODEL, "b")
    assert check.verdict == "mismatch" and check.quarantined


@pytest.mark.parametrize("rig", ["alert"], indirect=True)
async def test_action_alert_keeps_the_backend_in_rotation(
    rig: tuple[Rig, AlertDispatcher], servers: tuple[ModelServer, ModelServer]
) -> None:
    r, dispatcher = rig
    servers[1].weights = "swapped"
    (check,) = await r.checker.check_now(MODEL, "b")
    assert check.verdict == "mismatch" and not check.quarantined
    assert r.served_by() == {"a", "b"}
    (alert,) = await r.alerts(dispatcher)
    assert "still in rotation" in alert["reasons"][0]


async def test_periodic_checks_start_at_once_and_follow_the_backend(
    rig: tuple[Rig, AlertDispatcher], servers: tuple[ModelServer, ModelServer]
) -> None:
    r, _ = rig
    servers[1].weights = "swapped"
    r.checker.cfg = FingerprintConfig(interval_s=0.05, timeout_s=2)
    await r.checker.start()

    def checks(backend: str, verdict: str) -> float:
        return r.sample("ipgate_fingerprint_checks_total", model=MODEL, backend=backend, verdict=verdict) or 0

    # (generous bounds: on a loaded machine a round's probes can time out, and that round is inconclusive)
    await eventually(lambda: r.router.quarantined(MODEL, "b") is not None, 10, "b quarantined by a round")
    servers[1].weights = "genuine"
    await eventually(lambda: r.router.quarantined(MODEL, "b") is None, 10, "b released by a later round")
    # Every round checks every backend, not only the one whose verdict changes: "a" was checked again after the
    # start-up round. Waited for, not read at once: within a round the checks run concurrently, and b's release
    # may be recorded before a's check of the same round (or a loaded machine runs fewer rounds than the time
    # allows).
    await eventually(lambda: checks("a", "match") >= 2, 10, "a checked in a second round")
    assert checks("a", "mismatch") == 0
    assert checks("b", "mismatch") >= 1 and checks("b", "match") >= 1
    await r.checker.close()


async def test_operator_release_and_reload_keep_state(
    rig: tuple[Rig, AlertDispatcher], servers: tuple[ModelServer, ModelServer], tmp_path: Path
) -> None:
    r, _ = rig
    a, b = servers
    b.weights = "swapped"
    await r.checker.check_now()
    # a reload that keeps the backend's name and URL keeps its quarantine
    r.router.reload([model_cfg(a.url, b.url, tmp_path / "ref.json")])
    assert r.router.quarantined(MODEL, "b") is not None and r.served_by() == {"a"}
    assert r.router.snapshot()["models"][MODEL]["backends"][1]["status"] == "quarantined"
    assert r.router.release_quarantine(MODEL, "b", why="operator")
    assert r.served_by() == {"a", "b"}
    # ... and the next check quarantines it again while it still serves other weights
    (check,) = await r.checker.check_now(MODEL, "b")
    assert check.quarantined and r.served_by() == {"a"}


async def test_backend_key_and_upstream_model_are_used(
    servers: tuple[ModelServer, ModelServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = servers
    ref = await record(a.url, tmp_path / "ref.json", model="upstream-name")
    b.api_key = "backend-secret"
    key_file = tmp_path / "key"
    key_file.write_text("backend-secret\n")
    monkeypatch.setenv("FP_TEST_KEY", "backend-secret")
    cfg = ModelConfig.model_validate({"name": MODEL, "backends": [
        {"name": "env", "url": b.url, "api_key_env": "FP_TEST_KEY", "upstream_model": "upstream-name",
         "fingerprint_reference": str(ref)},
        {"name": "file", "url": b.url, "api_key_file": str(key_file), "fingerprint_reference": str(ref)},
    ]})
    router = Router([cfg], RoutingConfig(), health_checks=False)
    results = {c.backend: c for c in await FingerprintChecker(FingerprintConfig(), router).check_now()}
    assert results["env"].verdict == "match" and results["file"].verdict == "match"
    assert set(b.models_seen) == {"upstream-name", MODEL}
    b.api_key = "rotated"
    (check,) = await FingerprintChecker(FingerprintConfig(), router).check_now(MODEL, "env")
    assert check.verdict == "inconclusive" and "HTTP 401" in check.reasons[0]


async def test_mismatching_canary_aborts_its_rollout(servers: tuple[ModelServer, ModelServer],
                                                     tmp_path: Path) -> None:
    a, b = servers
    ref = await record(a.url, tmp_path / "ref.json")
    b.weights = "swapped"
    steps = [{"weight": 10, "hold_s": 60}, {"weight": 100}]
    cfg = model_cfg(a.url, b.url, ref, canary={"backend": "b", "steps": steps})
    router = Router([cfg], RoutingConfig(), health_checks=False)
    await router.start()
    try:
        assert router.canary(MODEL).state.phase is Phase.PROGRESSING
        await FingerprintChecker(FingerprintConfig(), router).check_now()
        assert router.canary(MODEL).state.phase is Phase.ABORTED
        assert router.quarantined(MODEL, "b") is not None
    finally:
        await router.close()


async def test_sim_backend_has_a_stable_fingerprint(
    tmp_path: Path, servers: tuple[ModelServer, ModelServer]
) -> None:
    # Two sim processes with different seeds serve "the same weights": their signatures must match exactly.
    async with sim_backend(seed=1) as one, sim_backend(seed=2, latency_ms=1) as two:
        ref = await record(one.url, tmp_path / "sim.json", model="sim")
        cfg = ModelConfig.model_validate({"name": "sim", "backends": [
            {"name": "twin", "url": two.url, "fingerprint_reference": str(ref)},
            {"name": "other", "url": servers[0].url, "fingerprint_reference": str(ref)},
        ]})
        router = Router([cfg], RoutingConfig(), health_checks=False)
        results = {c.backend: c for c in await FingerprintChecker(FingerprintConfig(), router).check_now()}
    assert results["twin"].verdict == "match" and results["twin"].similarity == pytest.approx(1.0)
    assert results["other"].verdict == "mismatch"


def test_config_section() -> None:
    base: dict[str, Any] = {"models": [{"name": "m", "backends": [
        {"name": "a", "url": "http://x", "fingerprint_reference": "/refs/m.json"}]}]}
    cfg = parse_config(base, env={})
    assert cfg.fingerprint.action == "eject" and cfg.fingerprint.interval_s == 3600
    assert cfg.models[0].backends[0].fingerprint_reference == "/refs/m.json"
    with pytest.raises(ConfigError, match="fingerprint"):
        parse_config({**base, "fingerprint": {"match_threshold": 0.4, "mismatch_threshold": 0.6}}, env={})
    with pytest.raises(ConfigError, match=r"fingerprint\.action"):
        parse_config({**base, "fingerprint": {"action": "ignore"}}, env={})


def test_router_quarantine_api() -> None:
    cfg = ModelConfig.model_validate({"name": MODEL, "backends": [
        {"name": "a", "url": "http://127.0.0.1:9"}, {"name": "b", "url": "http://127.0.0.1:10"}]})
    metrics = Metrics()
    router = Router([cfg], RoutingConfig(), metrics, health_checks=False)
    assert router.quarantine(MODEL, "a", "fingerprint mismatch: test") is True
    assert router.quarantine(MODEL, "a", "fingerprint mismatch: again") is False  # already out: new reason
    assert router.quarantined(MODEL, "a") == "fingerprint mismatch: again"
    assert router.quarantine(MODEL, "b", "operator") is True
    with pytest.raises(ServiceUnavailable) as e:  # every backend out: 503, never a quarantined backend
        router.acquire(MODEL, "c1")
    assert e.value.code == "no_healthy_backend"
    with pytest.raises(NotFound) as nf:
        router.quarantine(MODEL, "zzz", "x")
    assert nf.value.param == "backend"
    with pytest.raises(NotFound):
        router.quarantine("nope", "a", "x")
    assert router.release_quarantine(MODEL, "a") is True and router.release_quarantine(MODEL, "a") is False
    lease = router.acquire(MODEL, "c1")
    assert lease.backend.name == "a"
    lease.release(Outcome(ok=True, status=200, latency_s=0.01))
    assert metrics.registry.get_sample_value("ipgate_backend_healthy", {"model": MODEL, "backend": "b"}) == 0


async def test_a_backend_that_cycles_is_held_for_an_operator(
    rig: tuple[Rig, AlertDispatcher], servers: tuple[ModelServer, ModelServer]
) -> None:
    """A quarantined backend receives only probes: it can answer them genuinely, be put back, and swap again.
    After auto_release_limit (1) automatic releases in the window its next quarantine holds."""
    r, dispatcher = rig
    _, b = servers
    b.weights = "swapped"
    (first,) = await r.checker.check_now(MODEL, "b")
    reason = r.router.quarantined(MODEL, "b")
    assert first.quarantined and reason is not None and "held" not in reason
    b.weights = "genuine"
    assert not (await r.checker.check_now(MODEL, "b"))[0].quarantined  # the first time: put back
    b.weights = "swapped"
    assert (await r.checker.check_now(MODEL, "b"))[0].quarantined
    reason = r.router.quarantined(MODEL, "b")
    assert reason is not None and "held for an operator: put back automatically 1 time in the last 7 days" in reason
    b.weights = "genuine"  # genuine for the probes again: this time it stays out
    (check,) = await r.checker.check_now(MODEL, "b")
    assert check.verdict == "match" and check.quarantined and r.served_by() == {"a"}
    assert r.checker.snapshot()["backends"][1]["quarantine"] == reason
    assert len(await r.alerts(dispatcher)) == 1  # one incident within alerts.dedup_window_s (1 h)
    assert r.router.release_quarantine(MODEL, "b", why="operator")  # the admin route's call
    assert r.served_by() == {"a", "b"}


@pytest.mark.parametrize(("limit", "gap_s", "held"), [(1, 50.0, True), (1, 150.0, False), (0, 0.0, True)])
async def test_automatic_releases_count_within_the_window(
    servers: tuple[ModelServer, ModelServer], tmp_path: Path, limit: int, gap_s: float, held: bool
) -> None:
    a, b = servers
    ref = await record(a.url, tmp_path / "ref.json")
    router = Router([model_cfg(a.url, b.url, ref)], RoutingConfig(), Metrics(), health_checks=False)
    now = [1000.0]
    checker = FingerprintChecker(
        FingerprintConfig(timeout_s=2, auto_release_limit=limit, auto_release_window_s=100), router,
        wall=lambda: now[0])
    try:
        if limit:
            b.weights = "swapped"
            await checker.check_now(MODEL, "b")
            b.weights = "genuine"
            assert not (await checker.check_now(MODEL, "b"))[0].quarantined
        now[0] += gap_s
        b.weights = "swapped"
        await checker.check_now(MODEL, "b")
        reason = router.quarantined(MODEL, "b")
        assert reason is not None and ("held for an operator" in reason) is held
        b.weights = "genuine"
        assert (await checker.check_now(MODEL, "b"))[0].quarantined is held
    finally:
        await checker.close()
        await router.close()
