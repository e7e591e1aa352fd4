"""The router: unknown models, retry budget, reload without dropping in-flight requests."""

from __future__ import annotations

import pytest

from gateway.config import ModelConfig, RoutingConfig
from gateway.errors import NotFound, ServiceUnavailable
from gateway.routing.canary import Op, Phase
from gateway.routing.pool import Outcome
from gateway.routing.router import Router
from gateway.telemetry.metrics import Metrics

from .conftest import HEALTH, FakeClock, model

OK = Outcome(ok=True, status=200, latency_s=0.01)
FAIL = Outcome(ok=False, status=502, latency_s=0.01, error="reset")


def make(clock: FakeClock, *models: ModelConfig, ratio: float = 0.2, metrics: Metrics | None = None) -> Router:
    ms = models or (model("m", ("a", 1), ("b", 1)),)
    return Router(list(ms), RoutingConfig(health=HEALTH, retry_budget_ratio=ratio), metrics, clock=clock,
                  wall=clock, health_checks=False)


def test_unknown_model_is_404_naming_the_field(clock: FakeClock) -> None:
    router = make(clock)
    with pytest.raises(NotFound) as ei:
        router.acquire("nope", "c")
    assert ei.value.status == 404 and ei.value.param == "model" and "'nope'" in ei.value.message
    assert router.models() == ["m"]


def test_retry_budget_is_a_share_of_recent_requests(clock: FakeClock) -> None:
    router = make(clock, ratio=0.2)
    assert router.may_retry("m")  # a fresh gateway may retry its first failure
    assert not router.may_retry("m")
    for i in range(50):
        router.acquire("m", f"c{i}").release(OK)
    granted = sum(router.may_retry("m") for _ in range(50))
    assert granted == 10  # 20 % of 50 first attempts
    # retries (acquire with exclude) do not fund the budget themselves
    for _ in range(10):
        router.acquire("m", "c", frozenset({"a"})).release(OK)
    assert not router.may_retry("m")
    assert not make(clock, ratio=0.0).may_retry("m")
    assert not router.may_retry("unknown")


def test_retry_budget_caps_the_burst(clock: FakeClock) -> None:
    router = make(clock, ratio=1.0)
    for i in range(1000):
        router.acquire("m", f"c{i}").release(OK)
    assert sum(router.may_retry("m") for _ in range(100)) == 10


def test_reload_keeps_in_flight_leases_and_their_counts(clock: FakeClock) -> None:
    router = make(clock)
    held = [router.acquire("m", f"c{i}") for i in range(8)]  # both backends at max_concurrency (4)
    with pytest.raises(ServiceUnavailable):
        router.acquire("m", "x")
    # reload: b changes URL (a new backend), a keeps name+URL (the same backend), c is new
    new = model("m", ("a", 1), ("c", 1))
    router.reload([new, model("other", ("z", 1))])
    assert router.models() == ["m", "other"]
    pool = router.pool("m")
    a = pool.backends[0]
    assert a.in_flight == 4  # the old leases still count against the cap on the new pool
    assert all(router.acquire("m", f"y{i}").backend.name == "c" for i in range(4))
    for lease in held:
        lease.release(OK)  # old leases release cleanly, into the counters they were taken from
    assert a.in_flight == 0
    assert router.acquire("m", "z").backend.name in {"a", "c"}


def _pick(router: Router, client: str) -> str:
    lease = router.acquire("m", client)
    lease.release(OK)
    return lease.backend.name


def test_reload_changes_the_split(clock: FakeClock) -> None:
    router = make(clock, model("m", ("a", 90), ("b", 10)))
    before = {c: _pick(router, c) for c in (f"c{i}" for i in range(2000))}
    router.reload([model("m", ("a", 50), ("b", 50))])
    after = {c: _pick(router, c) for c in before}
    share_b = sum(v == "b" for v in after.values()) / len(after)
    assert abs(share_b - 0.5) <= 0.03
    assert not any(before[c] == "b" and after[c] == "a" for c in before)  # only moves towards b


async def test_reload_keeps_an_unchanged_rollout_and_restarts_a_changed_one(clock: FakeClock) -> None:
    cfg = model("m", ("stable", 1), ("canary", 1), canary={
        "backend": "canary", "steps": [{"weight": 10, "hold_s": 0}, {"weight": 40, "hold_s": 0}],
        "analysis": {"interval_s": 10, "min_requests": 1},
    })
    router = make(clock, cfg)
    ctl = router.canary("m")
    for i in range(300):
        router.acquire("m", f"c{i}").release(OK)
    clock.advance(10)
    await ctl.tick()
    assert ctl.state.weight == 40
    router.reload([cfg])
    assert router.canary("m") is ctl and router.pool("m").shares()["canary"] == pytest.approx(0.4)
    changed = cfg.model_copy(update={"canary": cfg.canary.model_copy(  # type: ignore[union-attr]
        update={"steps": [cfg.canary.steps[0]]})})  # type: ignore[union-attr]
    router.reload([changed])
    assert router.canary("m") is not ctl and router.canary("m").state.step == 0
    assert router.pool("m").shares()["canary"] == pytest.approx(0.1)
    state = await router.canary_command("m", Op.ABORT)
    assert state.phase is Phase.ABORTED and router.pool("m").shares()["canary"] == 0.0
    router.reload([model("m", ("stable", 1))])  # the canary is gone from the config
    with pytest.raises(NotFound):
        router.canary("m")
    with pytest.raises(NotFound):
        make(clock).canary("m")


def test_snapshot(clock: FakeClock) -> None:
    router = make(clock)
    lease = router.acquire("m", "c")
    snap = router.snapshot()
    backends = snap["models"]["m"]["backends"]
    assert [b["name"] for b in backends] == ["a", "b"]
    assert sum(b["in_flight"] for b in backends) == 1
    assert sum(b["share_percent"] for b in backends) == pytest.approx(100.0)
    assert snap["models"]["m"]["canary"] is None
    lease.release(OK)
