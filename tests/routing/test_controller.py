"""The canary controller: local rollouts, and one leader among replicas sharing a store."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gateway.config import ModelConfig, RoutingConfig, StoreConfig
from gateway.routing.canary import Op, Phase
from gateway.routing.controller import CanaryController
from gateway.routing.pool import Outcome, Pool
from gateway.routing.router import Router
from gateway.store.base import StateStore
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore
from gateway.telemetry.metrics import Metrics
from tests.support.harness import eventually

from .conftest import HEALTH, FakeClock, model

OK = Outcome(ok=True, status=200, latency_s=0.02)
ERR = Outcome(ok=False, status=500, latency_s=0.02, error="status 500")


def canary_model(interval_s: float = 10.0, **analysis: object) -> ModelConfig:
    cfg: ModelConfig = model(
        "m", ("stable", 1), ("canary", 1),
        canary={
            "backend": "canary",
            "steps": [{"weight": 20, "hold_s": 0}, {"weight": 50, "hold_s": 0}, {"weight": 100, "hold_s": 0}],
            "analysis": {"interval_s": interval_s, "min_requests": 5, "failure_limit": 2, **analysis},
        },
    )
    return cfg


def traffic(pool: Pool, n: int, canary_outcome: Outcome = OK, prefix: str = "c") -> int:
    """Send n requests from distinct clients; return how many the canary served."""
    on_canary = 0
    for i in range(n):
        lease = pool.acquire(f"{prefix}{i}")
        if lease.backend.name == "canary":
            on_canary += 1
            lease.release(canary_outcome)
        else:
            lease.release(OK)
    return on_canary


def phase(ctl: CanaryController) -> Phase:
    return ctl.state.phase  # a call, so mypy does not keep an earlier assert's narrowing across awaits


def share(pool: Pool) -> float:
    return pool.shares()["canary"]


async def test_local_rollout_progresses_and_promotes(clock: FakeClock) -> None:
    pool = Pool(canary_model(), HEALTH, clock=clock)
    ctl = CanaryController(pool, wall=clock)
    assert ctl.leading and share(pool) == pytest.approx(0.2)
    seen = []
    for _ in range(4):
        traffic(pool, 200)
        clock.advance(10)
        await ctl.tick()
        seen.append((ctl.state.phase, round(share(pool), 6)))
    assert seen == [
        (Phase.PROGRESSING, 0.5), (Phase.PROGRESSING, 1.0), (Phase.PROMOTED, 1.0), (Phase.PROMOTED, 1.0),
    ]


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [(ERR, "error rate"), (Outcome(ok=True, status=200, latency_s=0.9), "p99"), (None, "no data")],
)
async def test_local_abort_keeps_stable_at_100(clock: FakeClock, outcome: Outcome | None, reason: str) -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    # passive ejection off, so the analysis (not the ejection) is what sees the canary's errors
    pool = Pool(canary_model(), HEALTH.model_copy(update={"consecutive_failures": 10_000}), clock=clock,
                metrics=metrics)
    ctl = CanaryController(pool, wall=clock, metrics=metrics)
    for _ in range(2):
        if outcome is not None:
            traffic(pool, 200, outcome)
        clock.advance(10)
        await ctl.tick()
    assert ctl.state.phase is Phase.ABORTED
    assert reason in ctl.state.history[-1].detail
    assert pool.shares() == {"stable": 1.0, "canary": 0.0}
    assert traffic(pool, 500) == 0  # every client is on the last known good backend
    assert registry.get_sample_value("ipgate_canary_weight", {"model": "m", "backend": "canary"}) == 0.0
    assert registry.get_sample_value("ipgate_canary_weight", {"model": "m", "backend": "stable"}) == 100.0
    assert registry.get_sample_value("ipgate_canary_state", {"model": "m", "state": "aborted"}) == 1.0
    assert registry.get_sample_value("ipgate_canary_events_total", {"model": "m", "event": "aborted"}) == 1.0
    assert registry.get_sample_value("ipgate_canary_events_total", {"model": "m", "event": "analysis_failed"}) == 2.0


# --- replicas sharing a store -------------------------------------------------------------------------------


@pytest.fixture
def memory_store(clock: FakeClock) -> MemoryStore:
    return MemoryStore(clock=lambda: int(clock() * 1e6))


async def test_two_replicas_one_leader(clock: FakeClock, memory_store: MemoryStore) -> None:
    regs = [CollectorRegistry(), CollectorRegistry()]
    pools = [Pool(canary_model(), HEALTH, clock=clock) for _ in range(2)]
    ctls = [
        CanaryController(p, store=memory_store, owner=f"r{i}", wall=clock, metrics=Metrics(r))
        for i, (p, r) in enumerate(zip(pools, regs, strict=True))
    ]

    async def poll(seconds: float = 0.0) -> None:
        # replicas poll every poll_s (1 s here), which keeps the leader's lease renewed
        while True:
            for c in reversed(ctls):
                await c.tick()
            if seconds <= 0:
                return
            clock.advance(1.0)
            seconds -= 1.0

    await poll()
    assert [c.leading for c in ctls] == [False, True]  # r1 ticked first and took the lease
    leader, follower = ctls[1], ctls[0]
    on_canary = traffic(pools[0], 100, prefix="a") + traffic(pools[1], 100, prefix="b")
    await poll(10)
    # the leader analysed both replicas' requests, and the follower applied the leader's decision
    assert leader.state.last is not None and leader.state.last.stats.requests == on_canary
    assert share(pools[0]) == share(pools[1]) == pytest.approx(0.5)
    assert follower.state == leader.state

    def events(reg: CollectorRegistry, kind: str) -> float:
        return reg.get_sample_value("ipgate_canary_events_total", {"model": "m", "event": kind}) or 0.0

    assert events(regs[1], "step") == 1 and events(regs[0], "step") == 0  # only the leader decides

    # the leader dies (stops polling): the lease expires and the follower takes over where it left off
    clock.advance(3)
    await follower.tick()
    assert not follower.leading  # 3 s: the lease (3.5 s) still holds
    clock.advance(1)
    await follower.tick()
    assert follower.leading and follower.state.step == 1
    # it judges only a full window of its own after taking over: no premature "no data" verdict
    assert follower.state.next_analysis >= clock() + 10
    traffic(pools[0], 200)
    for _ in range(10):
        clock.advance(1)
        await follower.tick()
    assert follower.state.step == 2 and share(pools[0]) == pytest.approx(1.0)
    assert events(regs[0], "step") == 1


async def test_abort_on_a_follower_wins_over_the_leader(clock: FakeClock, memory_store: MemoryStore) -> None:
    pools = [Pool(canary_model(), HEALTH, clock=clock) for _ in range(2)]
    leader = CanaryController(pools[0], store=memory_store, owner="lead", wall=clock)
    follower = CanaryController(pools[1], store=memory_store, owner="follow", wall=clock)
    await leader.tick()
    await follower.tick()
    state = await follower.command(Op.ABORT, by="admin")
    assert state.phase is Phase.ABORTED and share(pools[1]) == 0.0  # at once, on the replica that was asked
    traffic(pools[0], 100)
    clock.advance(10)
    await leader.tick()  # the leader applies the command before its analysis: it stays aborted
    assert leader.state.phase is Phase.ABORTED and share(pools[0]) == 0.0
    await follower.tick()
    assert follower.state.phase is Phase.ABORTED
    assert leader.state.history[-1].detail == "aborted by admin"


async def test_no_data_across_replicas_aborts_everywhere(clock: FakeClock, memory_store: MemoryStore) -> None:
    pools = [Pool(canary_model(), HEALTH, clock=clock) for _ in range(2)]
    ctls = [CanaryController(p, store=memory_store, owner=f"r{i}", wall=clock) for i, p in enumerate(pools)]
    for _ in range(3):
        for c in ctls:
            await c.tick()
        clock.advance(10)
    for c in ctls:
        await c.tick()
    assert [c.state.phase for c in ctls] == [Phase.ABORTED, Phase.ABORTED]
    assert [share(p) for p in pools] == [0.0, 0.0]


async def test_a_restarted_replica_continues_the_published_rollout(clock: FakeClock, memory_store: MemoryStore) -> None:
    pool = Pool(canary_model(), HEALTH, clock=clock)
    ctl = CanaryController(pool, store=memory_store, owner="r0", wall=clock)
    await ctl.tick()
    traffic(pool, 100)
    clock.advance(10)
    await ctl.tick()
    assert ctl.state.step == 1
    clock.advance(5)  # r0's lease expires; a new process starts with the same config
    fresh_pool = Pool(canary_model(), HEALTH, clock=clock)
    fresh = CanaryController(fresh_pool, store=memory_store, owner="r0-restarted", wall=clock)
    assert fresh.state.step == 0
    await fresh.tick()
    assert fresh.state.step == 1 and share(fresh_pool) == pytest.approx(0.5)


# --- real time, real Redis ----------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
async def shared_store(request: pytest.FixtureRequest) -> AsyncIterator[StateStore]:
    store: StateStore
    if request.param == "memory":
        store = MemoryStore()
    else:
        url = request.getfixturevalue("redis_url")
        store = RedisStore.from_config(StoreConfig(kind="redis", url=url, timeout_ms=500))
    yield store
    await store.close()


async def test_routers_share_one_rollout_in_real_time(shared_store: StateStore) -> None:
    """Two routers (two replicas) on one store: one leads, both route the same weights, a good canary
    progresses through every step to promotion."""
    cfg = canary_model(interval_s=0.06)
    routers = [Router([cfg], RoutingConfig(health=HEALTH), store=shared_store, owner=f"r{i}",
                      health_checks=False) for i in range(2)]
    for r in routers:
        await r.start()
    try:
        for _ in range(200):
            for k, r in enumerate(routers):
                for i in range(20):
                    r.acquire("m", f"{k}-{i}").release(OK)
            if all(r.canary("m").state.phase is Phase.PROMOTED for r in routers):
                break
            await asyncio.sleep(0.01)
        states = [r.canary("m").state for r in routers]
        assert [s.phase for s in states] == [Phase.PROMOTED, Phase.PROMOTED]
        assert sum(r.canary("m").leading for r in routers) == 1
        assert [e.kind for e in states[0].history] == ["started", "step", "step", "promoted"]
        assert all(r.pool("m").shares()["canary"] == 1.0 for r in routers)
    finally:
        for r in routers:
            await r.close()


async def test_a_stale_leader_write_does_not_undo_a_command(clock: FakeClock, memory_store: MemoryStore) -> None:
    pools = [Pool(canary_model(), HEALTH, clock=clock) for _ in range(3)]
    leader, issuer, other = (
        CanaryController(p, store=memory_store, owner=f"r{i}", wall=clock) for i, p in enumerate(pools)
    )
    for c in (leader, issuer, other):
        await c.tick()
    assert leader.leading
    await issuer.command(Op.ABORT)
    # the race: the leader publishes a state it computed before it saw the command
    await leader._publish_state(memory_store)
    await issuer.tick()
    assert issuer.state.phase is Phase.ABORTED and share(pools[1]) == 0.0  # the issuer does not flap back
    clock.advance(1)
    await leader.tick()  # the leader applies the command and publishes it as applied
    for c in (issuer, other):
        await c.tick()
    assert [c.state.phase for c in (leader, issuer, other)] == [Phase.ABORTED] * 3
    assert issuer._awaiting is None


async def test_a_new_leader_does_not_replay_an_applied_command(clock: FakeClock, memory_store: MemoryStore) -> None:
    pools = [Pool(canary_model(), HEALTH, clock=clock) for _ in range(2)]
    leader, follower = (CanaryController(p, store=memory_store, owner=f"r{i}", wall=clock) for i, p in enumerate(pools))
    await leader.tick()
    await follower.tick()
    await follower.command(Op.ABORT)
    await follower.command(Op.RESTART)
    clock.advance(1)
    await leader.tick()  # applies the restart
    assert leader.state.phase is Phase.PROGRESSING
    for _ in range(10):  # one good analysis: step 2
        traffic(pools[0], 20)
        clock.advance(1)
        await leader.tick()
        await follower.tick()
    assert leader.state.step == 1 and follower.state.step == 1
    clock.advance(4)  # the leader dies; the follower takes over
    await follower.tick()
    assert follower.leading
    assert follower.state.step == 1 and follower.state.phase is Phase.PROGRESSING  # not restarted again


async def test_redis_outage_freezes_the_rollout_and_it_resumes(
    redis_process: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.routing.controller")
    store = RedisStore.from_config(StoreConfig(kind="redis", url=redis_process.url, timeout_ms=100))
    router = Router([canary_model(interval_s=0.06)], RoutingConfig(health=HEALTH), store=store, owner="r0",
                    health_checks=False)
    await router.start()
    ctl = router.canary("m")
    polls = 0
    tick = ctl.tick

    async def counted_tick() -> None:  # the controller loop's own polls, counted
        nonlocal polls
        polls += 1
        await tick()

    ctl.tick = counted_tick  # type: ignore[method-assign]
    try:
        # Router.start polls once before returning, under a time limit that a loaded machine can pass
        await eventually(lambda: ctl.leading, 10, "the controller leading")
        assert ctl.state.step == 0
        redis_process.kill()
        n = polls
        # no traffic, but no store either: no analysis runs, nothing aborts (waited for in polls, not seconds:
        # a loaded machine polls less often than the interval says)
        await eventually(lambda: polls >= n + 5, what="five controller polls during the outage")
        assert ctl.state.phase is Phase.PROGRESSING and ctl.state.step == 0
        assert router.pool("m").shares()["canary"] == pytest.approx(0.2)  # routing keeps its weights
        failures = [r for r in caplog.records if "controller step failed" in r.getMessage()]
        assert len(failures) == 1  # logged once per change of state, not per poll
        redis_process.start()
        for _ in range(200):
            for i in range(40):
                router.acquire("m", f"c{i}").release(OK)
            if phase(ctl) is Phase.PROMOTED:
                break
            await asyncio.sleep(0.01)
        assert phase(ctl) is Phase.PROMOTED
        assert any("controller works again" in r.getMessage() for r in caplog.records)
    finally:
        await router.close()
        await store.close()
