"""A request whose answer cannot carry a post-hoc watermark, from a client whose tier refuses such answers, is
routed only to a backend whose engine watermarks (KGW) while the pool has one: in a pool mixing KGW and lexical
backends the client's answer must not depend on which backend the weighted split picked."""

from __future__ import annotations

import pytest

from gateway.config import ModelConfig, RoutingConfig
from gateway.errors import ServiceUnavailable
from gateway.routing.pool import Outcome
from gateway.routing.router import Router

from .conftest import HEALTH, FakeClock

OK = Outcome(ok=True, status=200, latency_s=0.01)


def _model(kgw_weight: float = 10.0, *, kgw_probe: bool = False) -> ModelConfig:
    return ModelConfig.model_validate({"name": "m", "backends": [
        {"name": "lex", "url": "http://127.0.0.1:18000", "weight": 90, "max_concurrency": 4},
        {"name": "kgw", "url": "http://127.0.0.1:18001", "weight": kgw_weight, "max_concurrency": 2,
         "watermark_capable": True, "kgw_probe": kgw_probe},
    ]})


def _router(clock: FakeClock, m: ModelConfig) -> Router:
    return Router([m], RoutingConfig(health=HEALTH), None, clock=clock, wall=clock, health_checks=False)


def test_preferred_requests_go_only_to_the_engine_watermarking_backend(clock: FakeClock) -> None:
    router = _router(clock, _model())
    plain = set()
    for i in range(40):
        lease = router.acquire("m", f"c{i}")
        plain.add(lease.backend.name)
        lease.release(OK)
    assert plain == {"lex", "kgw"}  # the split itself is unchanged
    for i in range(40):
        lease = router.acquire("m", f"c{i}", prefer_engine_watermark=True)
        assert lease.backend.name == "kgw" and lease.engine_watermark
        lease.release(OK)


def test_an_unverified_plugin_is_not_preferred(clock: FakeClock) -> None:
    router = _router(clock, _model(kgw_probe=True))  # probe never ran: plugin_ok is None
    lease = router.acquire("m", "c1", prefer_engine_watermark=True)
    assert not lease.engine_watermark  # taken from the whole pool: the caller refuses the request there
    lease.release(OK)
    router.pool("m").backends[1].plugin_ok = True
    lease = router.acquire("m", "c1", prefer_engine_watermark=True)
    assert lease.backend.name == "kgw" and lease.engine_watermark


def test_a_saturated_engine_backend_means_wait_not_refusal(clock: FakeClock) -> None:
    router = _router(clock, _model())
    held = [router.acquire("m", f"c{i}", prefer_engine_watermark=True) for i in range(2)]  # kgw at its limit
    with pytest.raises(ServiceUnavailable) as ei:
        router.acquire("m", "c9", prefer_engine_watermark=True)
    assert ei.value.code == "pool_saturated" and ei.value.headers == {"Retry-After": "1"}
    assert router.acquire("m", "c9").backend.name == "lex"  # other requests still flow
    for lease in held:
        lease.release(OK)


def test_no_engine_backend_healthy_falls_back_on_a_first_try_only(clock: FakeClock) -> None:
    router = _router(clock, _model())
    router.pool("m").backends[1].healthy = False
    lease = router.acquire("m", "c1", prefer_engine_watermark=True)
    assert lease.backend.name == "lex"  # the caller answers 403 unwatermarkable_output there
    lease.release(OK)
    router.pool("m").backends[1].healthy = True
    with pytest.raises(ServiceUnavailable) as ei:  # the kgw backend failed the first try: report that failure
        router.acquire("m", "c1", frozenset({"kgw"}), prefer_engine_watermark=True)
    assert ei.value.code == "no_healthy_backend"


def test_a_zero_weight_engine_backend_gets_no_traffic_at_all(clock: FakeClock) -> None:
    router = _router(clock, _model(kgw_weight=0))
    assert router.acquire("m", "c1", prefer_engine_watermark=True).backend.name == "lex"
