"""A reload that removes a backend (or its whole model) leaves its ``ipgate_backend_healthy`` series: an
ejected backend's 0 stays exported until a restart, so IpgateNoHealthyBackend / IpgateBackendUnhealthy fire
for a backend that no longer exists."""

from __future__ import annotations

from gateway.config import ModelConfig, RoutingConfig
from gateway.routing.pool import Outcome
from gateway.routing.router import Router
from gateway.telemetry.metrics import Metrics


def _model(name: str, *backends: str) -> ModelConfig:
    return ModelConfig.model_validate({"name": name, "backends": [
        {"name": b, "url": f"http://127.0.0.1:1/{b}"} for b in backends]})


async def test_removed_backends_leave_no_health_series() -> None:
    metrics = Metrics()
    router = Router([_model("m", "a", "b"), _model("old", "x")], RoutingConfig(), metrics, health_checks=False)
    try:
        router.quarantine("m", "b", "fingerprint mismatch: test")
        router.quarantine("old", "x", "fingerprint mismatch: test")
        get = metrics.registry.get_sample_value
        assert get("ipgate_backend_healthy", {"model": "m", "backend": "b"}) == 0
        router.reload([_model("m", "a")])  # the operator removes the bad backend and the retired model
        assert get("ipgate_backend_healthy", {"model": "m", "backend": "a"}) == 1
        assert get("ipgate_backend_healthy", {"model": "m", "backend": "b"}) is None
        assert get("ipgate_backend_healthy", {"model": "old", "backend": "x"}) is None
    finally:
        await router.close()


async def test_a_removed_rollout_leaves_no_canary_series() -> None:
    """The canary gauges of a rollout a reload removed (or of its retired model) go too."""
    metrics = Metrics()
    canary = {"backend": "canary", "steps": [{"weight": 10, "hold_s": 60}], "analysis": {"interval_s": 10}}
    with_canary = ModelConfig.model_validate({"name": "m", "backends": [
        {"name": "stable", "url": "http://127.0.0.1:1/s"}, {"name": "canary", "url": "http://127.0.0.1:1/c"}],
        "canary": canary})
    router = Router([with_canary], RoutingConfig(), metrics, health_checks=False)
    try:
        await router.start()
        get = metrics.registry.get_sample_value
        assert get("ipgate_canary_weight", {"model": "m", "backend": "canary"}) is not None
        router.reload([_model("m", "stable", "canary")])  # the rollout is taken out of the config
        assert get("ipgate_canary_weight", {"model": "m", "backend": "canary"}) is None
        assert get("ipgate_canary_weight", {"model": "m", "backend": "stable"}) is None
        assert all(get("ipgate_canary_state", {"model": "m", "state": s}) is None
                   for s in ("progressing", "paused", "promoted", "aborted"))
        assert get("ipgate_backend_healthy", {"model": "m", "backend": "canary"}) == 1  # still a backend
    finally:
        await router.close()


async def test_a_request_on_a_removed_backend_does_not_bring_its_series_back() -> None:
    """A request still running on a backend when a reload removes it (or its model) ends after the reload: its
    failure ejects the backend in the pool it was taken from, and that must not export the retired series again
    (a ``backend_healthy 0`` for a backend that no longer exists, until a restart)."""
    metrics = Metrics()
    routing = RoutingConfig.model_validate({"health": {"consecutive_failures": 1}})
    router = Router([_model("m", "a", "b"), _model("old", "x")], routing, metrics, health_checks=False)
    try:
        get = metrics.registry.get_sample_value
        on_b = router.acquire("m", "client", exclude=frozenset({"a"}))
        on_x = router.acquire("old", "client")
        kept = router.acquire("m", "client", exclude=frozenset({"b"}))
        assert (on_b.backend.name, on_x.backend.name, kept.backend.name) == ("b", "x", "a")
        router.reload([_model("m", "a")])
        assert get("ipgate_backend_healthy", {"model": "m", "backend": "b"}) is None
        failed = Outcome(ok=False, status=503, latency_s=0.01, error="status 503")
        on_b.release(failed)
        on_x.release(failed)
        assert get("ipgate_backend_healthy", {"model": "m", "backend": "b"}) is None
        assert get("ipgate_backend_healthy", {"model": "old", "backend": "x"}) is None
        assert get("ipgate_backend_ejections_total", {"model": "m", "backend": "b"}) is None
        # a backend the reload kept is the same backend: its failure is its own, and exported
        kept.release(failed)
        assert get("ipgate_backend_healthy", {"model": "m", "backend": "a"}) == 0
        assert get("ipgate_backend_ejections_total", {"model": "m", "backend": "a"}) == 1
    finally:
        await router.close()
