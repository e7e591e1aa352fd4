"""Pools: saturation, passive health with growing backoff, half-open trials, canary weights, retries."""

from __future__ import annotations

import pytest

from gateway.errors import ServiceUnavailable
from gateway.routing.pool import Outcome, Pool

from .conftest import HEALTH, FakeClock, model

OK = Outcome(ok=True, status=200, latency_s=0.01)
FAIL = Outcome(ok=False, status=502, latency_s=0.01, error="connection reset")


def _pick(pool: Pool, client: str) -> str:
    lease = pool.acquire(client)
    lease.release(OK)
    return lease.backend.name


def _client_on(pool: Pool, backend: str) -> str:
    for i in range(10_000):
        c = f"c{i}"
        if pool.table.names[pool.table.order_sticky(c)[0]] == backend:
            return c
    raise AssertionError("no client found")


def test_saturated_pool_answers_503_at_once(clock: FakeClock) -> None:
    pool = Pool(model("m", ("a", 1), ("b", 1)), HEALTH, clock=clock)
    leases = [pool.acquire(f"c{i}") for i in range(8)]  # 2 backends x max_concurrency 4
    assert sorted(s.in_flight for s in pool.backends) == [4, 4]
    with pytest.raises(ServiceUnavailable) as ei:
        pool.acquire("one-more")
    assert ei.value.status == 503 and ei.value.code == "pool_saturated"
    leases[0].release(OK)
    lease = pool.acquire("one-more")  # room again: a slot freed, nothing queued
    assert lease.backend.name == leases[0].backend.name


def test_a_full_sticky_backend_spills_to_the_clients_next_choice(clock: FakeClock) -> None:
    pool = Pool(model("m", ("a", 1), ("b", 1)), HEALTH, clock=clock)
    c = _client_on(pool, "a")
    held = [pool.acquire(c) for _ in range(4)]
    assert {le.backend.name for le in held} == {"a"}
    assert pool.acquire(c).backend.name == "b"


def test_release_is_idempotent(clock: FakeClock) -> None:
    pool = Pool(model(), HEALTH, clock=clock)
    lease = pool.acquire("x")
    lease.release(OK)
    lease.release(OK)
    assert all(s.in_flight == 0 for s in pool.backends)


def test_consecutive_failures_eject_with_a_doubling_backoff_then_half_open(clock: FakeClock) -> None:
    pool = Pool(model("m", ("a", 1), ("b", 1)), HEALTH, clock=clock)
    c = _client_on(pool, "a")
    a = pool.backends[0]

    def fail_a() -> None:
        lease = pool.acquire(c)
        assert lease.backend.name == "a"
        lease.release(FAIL)

    fail_a()
    fail_a()
    pool.acquire(c).release(OK)  # a success resets the run
    for _ in range(3):
        fail_a()
    assert a.ejected(clock()) and a.ejected_until == clock() + 5  # base
    assert _pick(pool, c) == "b"  # the client's second choice while a is out
    expected = [10, 20, 40, 40]  # doubles, capped at ejection_max_s
    for backoff in expected:
        clock.advance(a.ejected_until - clock())  # the backoff is over: half-open
        trial = pool.acquire(c)
        assert trial.backend.name == "a"
        # only one trial at a time: the next request for this client goes elsewhere
        assert _pick(pool, c) == "b"
        trial.release(FAIL)  # the trial fails: ejected again, for twice as long
        assert a.ejected_until == clock() + backoff
    clock.advance(40)
    trial = pool.acquire(c)
    trial.release(OK)  # reinstated
    assert not a.ejected_until and a.failures == 0
    assert _pick(pool, c) == "a"
    assert a.ejections_total == 5
    snap = pool.snapshot()
    assert snap["backends"][0]["status"] == "healthy"  # type: ignore[index]


def test_backoff_restarts_after_a_long_healthy_spell(clock: FakeClock) -> None:
    pool = Pool(model("m", ("a", 1), ("b", 1)), HEALTH, clock=clock)
    c = _client_on(pool, "a")
    a = pool.backends[0]
    for _ in range(3):
        pool.acquire(c).release(FAIL)
    clock.advance(5)
    pool.acquire(c).release(OK)
    clock.advance(HEALTH.ejection_max_s + 1)
    for _ in range(3):
        pool.acquire(c).release(FAIL)
    assert a.ejected_until == clock() + HEALTH.ejection_base_s


def test_outcomes_of_requests_from_before_an_ejection_do_not_decide(clock: FakeClock) -> None:
    pool = Pool(model("m", ("a", 1), ("b", 1)), HEALTH, clock=clock)
    c = _client_on(pool, "a")
    old = pool.acquire(c)
    for _ in range(3):
        pool.acquire(c).release(FAIL)
    old.release(OK)  # an older, slower success must not reinstate the ejected backend
    assert pool.backends[0].ejected(clock())


def test_all_backends_out_is_no_healthy_backend(clock: FakeClock) -> None:
    pool = Pool(model("m", ("a", 1)), HEALTH, clock=clock)
    for _ in range(3):
        pool.acquire("x").release(FAIL)
    with pytest.raises(ServiceUnavailable) as ei:
        pool.acquire("x")
    assert ei.value.code == "no_healthy_backend" and "'m'" in ei.value.message
    pool.set_active_health("a", False, "health check answered 500")
    clock.advance(100)
    with pytest.raises(ServiceUnavailable):
        pool.acquire("x")  # half-open time, but the active check says unhealthy
    pool.set_active_health("a", True)
    assert pool.acquire("x").backend.name == "a"


def test_exclude_for_retries(clock: FakeClock) -> None:
    pool = Pool(model("m", ("a", 1), ("b", 1)), HEALTH, clock=clock)
    c = _client_on(pool, "a")
    assert pool.acquire(c, frozenset({"a"})).backend.name == "b"
    with pytest.raises(ServiceUnavailable) as ei:
        pool.acquire(c, frozenset({"a", "b"}))
    assert "retry" in ei.value.message


def test_canary_weight_and_stable_share(clock: FakeClock) -> None:
    m = model("m", ("s1", 3), ("s2", 1), ("canary", 50),
              canary={"backend": "canary", "steps": [{"weight": 20, "hold_s": 0}]})
    pool = Pool(m, HEALTH, clock=clock)
    # the canary's configured weight is replaced by the rollout's; the stables share the rest 3:1
    assert pool.shares() == pytest.approx({"s1": 0.6, "s2": 0.2, "canary": 0.2})
    pool.set_canary_weight(0)
    assert pool.shares() == pytest.approx({"s1": 0.75, "s2": 0.25, "canary": 0.0})
    assert all(_pick(pool, f"c{i}") != "canary" for i in range(200))


def test_canary_outcomes_are_recorded(clock: FakeClock) -> None:
    m = model("m", ("stable", 1), ("canary", 1), canary={"backend": "canary", "steps": [{"weight": 50}]})
    pool = Pool(m, HEALTH, clock=clock)
    for i in range(100):
        pool.acquire(f"c{i}").release(OK)
    assert pool.canary_obs is not None
    assert 30 < pool.canary_obs.requests < 70  # only the canary's outcomes


def test_non_sticky_pool_spreads_one_client(clock: FakeClock) -> None:
    pool = Pool(model("m", ("a", 1), ("b", 1), sticky=False), HEALTH, clock=clock)
    seen = set()
    for _ in range(40):
        lease = pool.acquire("same-client")
        seen.add(lease.backend.name)
        lease.release(OK)
    assert seen == {"a", "b"}


def test_a_canary_step_moves_only_the_clients_it_must(clock: FakeClock) -> None:
    m = model("m", ("s1", 2), ("s2", 1), ("canary", 0),
              canary={"backend": "canary", "steps": [{"weight": 10}, {"weight": 50}]})
    pool = Pool(m, HEALTH, clock=clock)
    clients = [f"c{i}" for i in range(4000)]
    before = {c: _pick(pool, c) for c in clients}
    pool.set_canary_weight(50)
    after = {c: _pick(pool, c) for c in clients}
    moves = {(before[c], after[c]) for c in clients if before[c] != after[c]}
    assert moves <= {("s1", "canary"), ("s2", "canary")}  # stables keep their clients among themselves
    moved = sum(before[c] != after[c] for c in clients) / len(clients)
    assert abs(moved - 0.40) <= 0.02  # 10 % -> 50 %: exactly the 40 points that must move
    pool.set_canary_weight(0)  # abort: everyone on the canary goes back to the stable they came from
    aborted = {c: _pick(pool, c) for c in clients}
    assert all(aborted[c] == before[c] for c in clients if before[c] != "canary")
    assert all(v != "canary" for v in aborted.values())
