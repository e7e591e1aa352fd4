"""A reload that removes a backend (or its whole model) leaves its ``ipgate_backend_healthy`` series: an
ejected backend's 0 stays exported until a restart, so IpgateNoHealthyBackend / IpgateBackendUnhealthy fire
for a backend that no longer exists."""

from __future__ import annotations

from gateway.config import ModelConfig, RoutingConfig
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
