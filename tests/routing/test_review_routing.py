"""Adversarial review of routing: weights at the edges, leases on every way out, canary safety at start-up,
and the admin API's answers. Each test here failed on the code before its fix, or covers a case the other
routing tests do not reach (see docs/routing.md for the intended behaviour)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pydantic
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.config import ModelConfig, RoutingConfig, StoreConfig
from gateway.context import AppContext
from gateway.errors import ServiceUnavailable
from gateway.routing.canary import Op, Phase
from gateway.routing.controller import CanaryController
from gateway.routing.hashing import WeightTable
from gateway.routing.pool import Outcome, Pool
from gateway.routing.router import Router
from gateway.store.factory import open_store
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore
from tests.support.harness import app_backend, eventually, free_port, gateway_config, running_gateway

from .conftest import HEALTH, FakeClock, model
from .test_admin_routing import AUTH, admin, config_data, config_file  # noqa: F401 - fixtures

OK = Outcome(ok=True, status=200, latency_s=0.02)
ERR = Outcome(ok=False, status=500, latency_s=0.02, error="status 500")


def split(table: WeightTable, n: int, eligible: Any = lambda i: True) -> dict[str, float]:
    counts: Counter[str] = Counter()
    for c in range(n):
        i = table.pick_sticky(f"client-{c}", eligible)
        assert i is not None
        counts[table.names[i]] += 1
    return {name: counts[name] / n for name in table.names}


# --- weights -------------------------------------------------------------------------------------------------


def test_weights_near_the_float_maximum_still_split() -> None:
    # 1e308 passes validation; summed naively the total is inf and every share 0: a pool that only 503s
    table = WeightTable.build(["a", "b"], [1e308, 1e308])
    assert table.shares == (0.5, 0.5)
    pool = Pool(model("m", ("a", 1e308), ("b", 3e307)), HEALTH, clock=FakeClock())
    assert pool.shares() == pytest.approx({"a": 1e308 / 1.3e308, "b": 3e307 / 1.3e308})
    pool.acquire("alice").release(OK)


def test_tiny_weights_are_only_a_ratio() -> None:
    assert WeightTable.build(["a", "b"], [5e-324, 5e-324]).shares == (0.5, 0.5)
    got = split(WeightTable.build(["a", "b"], [1e-300, 3e-300]), 4000)
    assert got["a"] == pytest.approx(0.25, abs=0.02)


@pytest.mark.parametrize("bad", [float("inf"), "Infinity", float("nan")])
def test_a_non_finite_weight_is_a_config_error_naming_the_field(bad: Any) -> None:
    # inf used to pass validation and crash later in the router (a 500 on reload, a traceback at start-up)
    with pytest.raises(pydantic.ValidationError, match=r"backends\.0\.weight"):
        model("m", ("a", bad), ("b", 1.0))


def test_a_missing_weight_is_1_not_a_reason_to_go_uniform() -> None:
    # LiteLLM #33329: the first backend without a weight turned the split uniform. Here it weighs 1.
    m = ModelConfig.model_validate({"name": "m", "backends": [
        {"name": "a", "url": "http://127.0.0.1:1"},
        {"name": "b", "url": "http://127.0.0.1:2", "weight": 3},
    ]})
    pool = Pool(m, HEALTH, clock=FakeClock())
    assert pool.shares() == {"a": 0.25, "b": 0.75}


def test_sticky_split_renormalises_over_the_backends_left_and_keeps_their_clients() -> None:
    table = WeightTable.build(["a", "b", "c"], [50, 30, 20])
    n = 5000
    before = {c: table.names[table.pick_sticky(f"client-{c}", lambda i: True) or 0] for c in range(n)}
    after = split(table, n, eligible=lambda i: i != 0)  # "a" is ejected
    assert after["a"] == 0
    assert after["b"] == pytest.approx(0.6, abs=0.02) and after["c"] == pytest.approx(0.4, abs=0.02)
    for c in range(n):  # clients of b and c stay where they were; only a's clients move
        if before[c] != "a":
            i = table.pick_sticky(f"client-{c}", lambda i: i != 0)
            assert i is not None and table.names[i] == before[c]


def test_many_backends_follow_their_weights() -> None:
    names = [f"b{i}" for i in range(40)]
    weights = [float(i % 8) for i in range(40)]  # five backends at 0, the rest 1..7
    got = split(WeightTable.build(names, weights), 20_000)
    total = sum(weights)
    for name, w in zip(names, weights, strict=True):
        if w == 0:
            assert got[name] == 0
        else:
            assert got[name] == pytest.approx(w / total, abs=0.006), name


def test_a_gradual_canary_ramp_only_ever_moves_clients_to_the_canary() -> None:
    clock = FakeClock()
    m = model("m", ("s1", 2), ("s2", 1), ("canary", 1), canary={
        "backend": "canary", "steps": [{"weight": 0}, {"weight": 100}]})
    pool = Pool(m, HEALTH, clock=clock)
    clients = [f"c{i}" for i in range(2000)]

    def where() -> dict[str, str]:
        out = {}
        for c in clients:
            lease = pool.acquire(c)
            out[c] = lease.backend.name
            lease.release(OK)
        return out

    prev = where()
    assert "canary" not in prev.values()
    for pct in range(5, 101, 5):
        pool.set_canary_weight(pct)
        now = where()
        for c in clients:
            assert now[c] == prev[c] or now[c] == "canary", (pct, c)  # no stable-to-stable reshuffle
        assert Counter(now.values())["canary"] / len(clients) == pytest.approx(pct / 100, abs=0.03)
        prev = now


# --- leases: in_flight never leaks, a request that ended without an answer decides nothing ------------------


def test_an_abandoned_half_open_trial_keeps_the_backend_half_open(clock: FakeClock) -> None:
    pool = Pool(model("m", ("a", 1)), HEALTH, clock=clock)
    for _ in range(HEALTH.consecutive_failures):
        pool.acquire("x").release(ERR)
    state = pool.state("a")
    assert state.ejected(clock())
    clock.advance(HEALTH.ejection_base_s)
    trial = pool.acquire("x")
    with pytest.raises(ServiceUnavailable):
        pool.acquire("y")  # one trial at a time
    trial.abandon()  # the client left before the backend answered
    assert state.in_flight == 0 and state.ejected_until > 0  # not reinstated on a trial that never finished
    assert pool.snapshot()["backends"][0]["status"] == "half-open"  # type: ignore[index]
    pool.acquire("y").release(OK)  # the next request is the trial, and it decides
    assert state.ejected_until == 0 and state.failures == 0


def test_an_abandoned_request_neither_resets_failures_nor_counts_for_the_canary(clock: FakeClock) -> None:
    m = model("m", ("stable", 1), ("canary", 1), canary={"backend": "canary", "steps": [{"weight": 100}]})
    pool = Pool(m, HEALTH, clock=clock)
    pool.acquire("x").release(ERR)
    pool.acquire("x").release(ERR)
    lease = pool.acquire("x")
    lease.abandon()
    lease.release(OK)  # after abandon, a release is ignored like a second release
    state = pool.state("canary")
    assert state.failures == 2 and state.in_flight == 0
    assert pool.canary_obs is not None and (pool.canary_obs.requests, pool.canary_obs.errors) == (2, 2)


def hanging_backend(started: list[int]) -> web.Application:
    async def chat(request: web.Request) -> web.Response:
        started.append(1)
        await asyncio.sleep(30)
        return web.json_response({})

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": []})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    return app


async def _post(session: aiohttp.ClientSession, gw: Any, client: str) -> tuple[int, dict[str, Any]]:
    body = {"model": "sim", "messages": [{"role": "user", "content": client}], "max_tokens": 1}
    async with session.post(gw.url + "/v1/chat/completions", json=body,
                            headers={"Authorization": f"Bearer {gw.token(client)}"}) as resp:
        return resp.status, await resp.json(content_type=None)



async def test_a_client_that_leaves_before_the_answer_decides_nothing_through_the_gateway() -> None:
    started: list[int] = []
    async with app_backend(hanging_backend(started)) as stable, app_backend(hanging_backend(started)) as canary:
        cfg = gateway_config(models=[{"name": "sim", "backends": [
            {"name": "stable", "url": stable, "weight": 1}, {"name": "canary", "url": canary, "weight": 0}],
            "canary": {"backend": "canary", "steps": [{"weight": 100}]}}])
        async with running_gateway(cfg) as gw:
            pool = gw.ctx.router.pool("sim")
            await eventually(lambda: pool.shares()["canary"] == 1.0)  # the rollout state is read at start-up
            state = pool.state("canary")
            state.failures = 2  # two failed requests in a row already
            async with aiohttp.ClientSession() as session:
                task = asyncio.create_task(_post(session, gw, "alice"))
                await eventually(lambda: len(started) == 1)
                assert state.in_flight == 1
                task.cancel()
            await eventually(lambda: state.in_flight == 0)
            # the old code released this as a success: failures back to 0, and a canary "success" counted
            assert state.failures == 2
            assert pool.canary_obs is not None and pool.canary_obs.requests == 0


async def test_a_lease_is_handed_back_when_shaping_the_upstream_body_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[int] = []
    async with app_backend(hanging_backend(started)) as url, running_gateway(gateway_config(url)) as gw:
        def broken(*args: Any) -> bytes:
            raise RuntimeError("shaping failed")

        monkeypatch.setattr("gateway.route.upstream_body", broken)
        async with aiohttp.ClientSession() as session:
            status, body = await _post(session, gw, "alice")
        assert status == 500 and "error" in body
        state = gw.ctx.router.pool("sim").state("b0")
        assert state.in_flight == 0 and state.failures == 0  # no leak, and not the backend's fault
        assert started == []


async def test_max_concurrency_is_exact_and_cancelled_requests_give_their_slots_back() -> None:
    gate = asyncio.Event()
    started: list[int] = []

    async def chat(request: web.Request) -> web.Response:
        started.append(1)
        await gate.wait()
        body = await request.json()
        return web.json_response({
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    async with app_backend(app) as url:
        cfg = gateway_config(models=[{"name": "sim", "backends": [{"name": "b0", "url": url, "max_concurrency": 3}]}])
        async with running_gateway(cfg) as gw, aiohttp.ClientSession() as session:
            state = gw.ctx.router.pool("sim").state("b0")
            # clients that leave while their request waits on the backend give their slot back
            leaving = [asyncio.create_task(_post(session, gw, f"gone{i}")) for i in range(3)]
            await eventually(lambda: len(started) == 3)
            for t in leaving:
                t.cancel()
            await eventually(lambda: state.in_flight == 0)
            assert state.failures == 0
            started.clear()
            tasks = [asyncio.create_task(_post(session, gw, f"c{i}")) for i in range(8)]
            await eventually(lambda: sum(t.done() for t in tasks) == 5)
            # the 3 admitted requests hold their slots from acquire on; on a loaded machine they may reach the
            # backend only after the 5 rejections have come back
            await eventually(lambda: len(started) == 3)
            assert len(started) == 3 and state.in_flight == 3
            rejected = [t.result() for t in tasks if t.done()]
            assert all(s == 503 and b["error"]["code"] == "pool_saturated" for s, b in rejected)
            gate.set()
            results = await asyncio.gather(*tasks)
            assert sorted(s for s, _ in results) == [200] * 3 + [503] * 5
            assert state.in_flight == 0


async def test_all_backends_down_is_a_clear_openai_shaped_error() -> None:
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    cfg = gateway_config(*dead, routing={"retries": 1, "retry_budget_ratio": 1.0,
                                         "health": {"interval_s": 30, "consecutive_failures": 1}})
    async with running_gateway(cfg) as gw, aiohttp.ClientSession() as session:
        status, body = await _post(session, gw, "alice")  # both tried (one retry), both refused
        assert status == 502 and body["error"]["code"] == "upstream_unreachable"
        body_ = {"model": "sim", "messages": [{"role": "user", "content": "bob"}], "max_tokens": 1}
        async with session.post(gw.url + "/v1/chat/completions", json=body_,
                                headers={"Authorization": f"Bearer {gw.token('bob')}"}) as resp:
            status, body, headers = resp.status, await resp.json(), resp.headers  # both ejected now
        assert status == 503
        err = body["error"]
        assert err["code"] == "no_healthy_backend" and err["type"] == "service_unavailable"
        assert "'sim'" in err["message"] and "param" in err
        assert 1 <= int(headers["Retry-After"]) <= 5  # when the first ejection ends (ejection_base_s 5)
        assert [s.in_flight for s in gw.ctx.router.pool("sim").backends] == [0, 0]


# --- canary ---------------------------------------------------------------------------------------------------


def canary_model() -> ModelConfig:
    cfg: ModelConfig = model("m", ("stable", 1), ("canary", 1), canary={
        "backend": "canary",
        "steps": [{"weight": 20, "hold_s": 0}, {"weight": 50, "hold_s": 0}, {"weight": 100, "hold_s": 0}],
        "analysis": {"interval_s": 10, "min_requests": 5, "failure_limit": 2},
    })
    return cfg


def traffic(pool: Pool, n: int) -> None:
    for i in range(n):
        pool.acquire(f"c{i}").release(OK)


async def test_a_canary_taken_out_by_its_health_check_while_analysed_is_aborted(clock: FakeClock) -> None:
    pool = Pool(canary_model(), HEALTH, clock=clock)
    ctl = CanaryController(pool, wall=clock)
    traffic(pool, 200)
    clock.advance(10)
    await ctl.tick()
    assert ctl.state.step == 1  # a good first window
    pool.set_active_health("canary", False, "health check answered 503")
    for _ in range(2):
        traffic(pool, 200)  # all on the stable backend now
        clock.advance(10)
        await ctl.tick()
    assert ctl.state.phase is Phase.ABORTED and "no data" in ctl.state.history[-1].detail
    pool.set_active_health("canary", True)  # it comes back: the abort stands
    traffic(pool, 200)
    clock.advance(10)
    await ctl.tick()
    assert ctl.state.phase is Phase.ABORTED and pool.shares()["canary"] == 0.0


async def test_a_restarted_replica_sends_nothing_to_an_aborted_canary_before_it_has_read_the_store(
    clock: FakeClock,
) -> None:
    store = MemoryStore(clock=lambda: int(clock() * 1e6))
    first = CanaryController(Pool(canary_model(), HEALTH, clock=clock), store=store, owner="r0", wall=clock)
    await first.tick()
    await first.command(Op.ABORT, by="admin")
    clock.advance(5)  # r0 is gone; its lease has expired
    pool = Pool(canary_model(), HEALTH, clock=clock)
    fresh = CanaryController(pool, store=store, owner="r1", wall=clock)
    # before its first poll it does not know the rollout was aborted: it must not guess "first step"
    assert pool.shares()["canary"] == 0.0
    await fresh.tick()
    assert fresh.state.phase is Phase.ABORTED and pool.shares()["canary"] == 0.0
    # a rollout nobody has published yet starts at its first step once the store has been read
    other = Pool(canary_model(), HEALTH, clock=clock)
    ctl = CanaryController(other, store=MemoryStore(clock=lambda: int(clock() * 1e6)), owner="x", wall=clock)
    await ctl.tick()
    assert other.shares()["canary"] == pytest.approx(0.2)


async def test_router_start_reads_the_rollout_state_and_an_unreachable_store_keeps_the_canary_out() -> None:
    routing = RoutingConfig(health=HEALTH)
    store = MemoryStore()
    router = Router([canary_model()], routing, store=store, health_checks=False)
    await router.start()
    try:
        assert router.pool("m").shares()["canary"] == pytest.approx(0.2)  # read at once, before serving
    finally:
        await router.close()
    dead = StoreConfig(kind="redis", url=f"redis://127.0.0.1:{free_port()}/0", timeout_ms=200)
    # the raw Redis store raises; the one the gateway really uses (open_store) fails soft and says degraded
    for down in (RedisStore.from_config(dead), await open_store(dead, None)):
        router = Router([canary_model()], routing, store=down, health_checks=False)
        try:
            await router.start()
            assert router.pool("m").shares() == {"stable": 1.0, "canary": 0.0}, type(down).__name__
            await asyncio.sleep(0.05)  # the controller loop keeps polling the dead store: still out
            assert router.pool("m").shares() == {"stable": 1.0, "canary": 0.0}, type(down).__name__
        finally:
            await router.close()
            await down.close()


# --- admin ----------------------------------------------------------------------------------------------------


async def test_operator_commands_on_an_unknown_model_name_it(
    admin: tuple[TestClient[Any, Any], AppContext],  # noqa: F811 - the fixture
) -> None:
    client, _ = admin
    resp = await client.post("/admin/canary/no-such-model/abort", headers=AUTH)
    err = (await resp.json())["error"]
    assert resp.status == 404 and "no-such-model" in err["message"] and err["param"] == "model"
    resp = await client.post("/admin/canary/plain/promote", headers=AUTH)
    err = (await resp.json())["error"]
    assert resp.status == 404 and err["code"] == "no_canary" and "plain" in err["message"]


async def test_reload_with_an_infinite_weight_is_a_named_400_and_changes_nothing(
    admin: tuple[TestClient[Any, Any], AppContext], config_file: Path,  # noqa: F811 - the fixtures
) -> None:
    client, ctx = admin
    routing_before = ctx.router.routing
    bad = config_data()
    bad["models"][1]["backends"][0]["weight"] = float("inf")
    bad["routing"] = {"retries": 0, "health": {"interval_s": 60}}
    config_file.write_text(yaml.safe_dump(bad))
    resp = await client.post("/admin/routing/reload", headers=AUTH)
    assert resp.status == 400
    err = (await resp.json())["error"]
    assert err["code"] == "invalid_config" and "models.1.backends.0.weight" in err["message"]
    assert ctx.router.routing is routing_before and ctx.config.routing.retries == 2



def test_a_half_open_backend_busy_with_its_trial_is_not_called_saturated(clock: FakeClock) -> None:
    pool = Pool(model("m", ("a", 1)), HEALTH, clock=clock)
    for _ in range(HEALTH.consecutive_failures):
        pool.acquire("x").release(ERR)
    clock.advance(HEALTH.ejection_base_s)
    trial = pool.acquire("x")
    with pytest.raises(ServiceUnavailable) as exc:
        pool.acquire("y")
    # the one backend is on probation, not full: "at its concurrency limit" would send operators astray
    assert exc.value.code == "no_healthy_backend"
    trial.release(OK)
    pool.acquire("y").release(OK)


async def test_an_unreadable_backend_key_file_fails_its_health_check_not_the_round(tmp_path: Path) -> None:
    from gateway.routing.health import HealthChecker

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": []})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    async with app_backend(app) as url:
        m = ModelConfig.model_validate({"name": "m", "backends": [
            {"name": "keyless", "url": url, "api_key_file": str(tmp_path / "missing.key")},
            {"name": "fine", "url": url}]})
        pool = Pool(m, HEALTH)
        async with aiohttp.ClientSession() as session:
            checker = HealthChecker(HEALTH, session, lambda: [pool])
            for _ in range(HEALTH.failure_threshold):
                await checker.check_once()  # used to raise ConfigError out of the round, every round
        assert [s.healthy for s in pool.backends] == [False, True]
        assert "missing.key" in (pool.state("keyless").last_error or "")


def test_requests_from_before_an_ejection_do_not_eject_the_backend_again_after_it_came_back(
    clock: FakeClock,
) -> None:
    m = ModelConfig.model_validate({"name": "m", "backends": [
        {"name": "a", "url": "http://127.0.0.1:1", "max_concurrency": 100}]})
    pool = Pool(m, HEALTH, clock=clock)
    state = pool.state("a")
    stale = [pool.acquire(f"old{i}") for i in range(5)]  # slow requests, sent while it was still in service
    for _ in range(HEALTH.consecutive_failures):
        pool.acquire("x").release(ERR)
    assert state.ejections_total == 1
    clock.advance(HEALTH.ejection_base_s)
    pool.acquire("x").release(OK)  # the half-open trial passes: back in service
    assert state.ejected_until == 0
    for lease in stale:  # their first-byte timeouts land now: they describe the backend before its ejection
        lease.release(ERR)
    assert state.ejected_until == 0 and state.ejections_total == 1 and state.failures == 0
    assert state.in_flight == 0
    for _ in range(HEALTH.consecutive_failures):  # fresh failures still eject, with the doubled backoff
        pool.acquire("x").release(ERR)
    assert state.ejected_until == clock() + 2 * HEALTH.ejection_base_s


def test_a_503_from_the_pool_says_when_to_retry(clock: FakeClock) -> None:
    pool = Pool(model("m", ("a", 1)), HEALTH, clock=clock)  # max_concurrency 4
    held = [pool.acquire(f"c{i}") for i in range(4)]
    with pytest.raises(ServiceUnavailable) as exc:
        pool.acquire("x")
    assert exc.value.code == "pool_saturated" and exc.value.headers["Retry-After"] == "1"
    for lease in held:
        lease.release(ERR)  # 4 failures >= 3: ejected for ejection_base_s
    with pytest.raises(ServiceUnavailable) as exc:
        pool.acquire("x")
    assert exc.value.code == "no_healthy_backend"
    assert exc.value.headers["Retry-After"] == str(int(HEALTH.ejection_base_s))
    clock.advance(HEALTH.ejection_base_s - 1.5)
    with pytest.raises(ServiceUnavailable) as exc:
        pool.acquire("x")
    assert exc.value.headers["Retry-After"] == "2"  # 1.5 s left, rounded up
    pool.set_active_health("a", False, "down")  # no time can be promised for an unhealthy backend
    with pytest.raises(ServiceUnavailable) as exc:
        pool.acquire("x")
    assert "Retry-After" not in exc.value.headers


def test_replicas_with_the_backends_listed_in_another_order_route_every_client_the_same() -> None:
    # the hash names backends, not their positions: two replicas whose configs list them differently agree
    names, weights = ["a", "b", "c", "d"], [40.0, 30.0, 20.0, 10.0]
    one = WeightTable.build(names, weights)
    other = WeightTable.build(names[::-1], weights[::-1])
    for c in range(3000):
        i, j = one.pick_sticky(f"c{c}", lambda i: True), other.pick_sticky(f"c{c}", lambda i: True)
        assert i is not None and j is not None and one.names[i] == other.names[j]
        first = one.names[i]
        # ... and so does their second choice, where a client goes when its first is out
        i = one.pick_sticky(f"c{c}", lambda k: one.names[k] != first)  # noqa: B023
        j = other.pick_sticky(f"c{c}", lambda k: other.names[k] != first)  # noqa: B023
        assert i is not None and j is not None and one.names[i] == other.names[j] != first


async def test_a_failing_canary_is_rolled_back_automatically_through_the_gateway() -> None:
    from .test_e2e_routing import chat_backend

    seen: dict[str, str] = {}
    async with (
        app_backend(chat_backend("stable", seen)) as stable,
        app_backend(chat_backend("canary", seen, status=500)) as canary,
    ):
        cfg = gateway_config(
            models=[{"name": "sim", "backends": [
                {"name": "stable", "url": stable, "weight": 1}, {"name": "canary", "url": canary, "weight": 0}],
                "canary": {"backend": "canary", "steps": [{"weight": 50, "hold_s": 0}, {"weight": 100}],
                           "analysis": {"interval_s": 0.3, "min_requests": 3, "failure_limit": 1}}}],
            routing={"retries": 1, "retry_budget_ratio": 1.0,
                     "health": {"interval_s": 30, "consecutive_failures": 1000}},
        )
        async with running_gateway(cfg) as gw, aiohttp.ClientSession() as session:
            ctl = gw.ctx.router.canary("sim")
            statuses: list[int] = []
            n = 0
            deadline = time.monotonic() + 10
            while ctl.state.phase is Phase.PROGRESSING:  # keep traffic flowing: every window has data
                assert time.monotonic() < deadline, "the rollout was not aborted"
                status, _ = await _post(session, gw, f"c{n % 50}")
                statuses.append(status)
                n += 1
            assert ctl.state.phase is Phase.ABORTED
            assert "error rate" in ctl.state.history[-1].detail
            assert set(statuses) == {200}  # the canary's failures were retried on the stable backend
            seen.clear()
            for i in range(50):
                assert (await _post(session, gw, f"c{i}"))[0] == 200
            assert set(seen.values()) == {"stable"}  # every client is back on the last known good
            async with session.get(gw.admin_url + "/metrics") as resp:
                metrics = await resp.text()
            assert 'ipgate_canary_state{model="sim",state="aborted"} 1.0' in metrics
            assert 'ipgate_canary_weight{backend="canary",model="sim"} 0.0' in metrics
