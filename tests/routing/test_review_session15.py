"""Review session 15 (routing): defects found and fixed, each reproduced with real servers on loopback."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.config import HealthConfig, ModelConfig, RoutingConfig
from gateway.routing.router import Router
from tests.support.harness import app_backend, eventually, gateway_config, running_gateway


def _chat(status: int = 200) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        body = await request.json()
        if status != 200:
            return web.json_response({"error": {"message": "down", "type": "server_error"}}, status=status)
        return web.json_response({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                  "choices": [{"index": 0, "finish_reason": "stop",
                                               "message": {"role": "assistant", "content": "hi"}}],
                                  "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    return app


async def _ask(gw: Any, client: str) -> int:
    body = {"model": "sim", "messages": [{"role": "user", "content": "hello"}]}
    async with aiohttp.ClientSession() as s, s.post(
            gw.url + "/v1/chat/completions", json=body,
            headers={"Authorization": f"Bearer {gw.token(client)}"}) as r:
        await r.read()
        return r.status


# --- 1. a retry that cannot be made is neither counted nor paid for ---------------------------------------

async def test_a_retry_with_no_other_backend_is_not_counted_and_costs_no_budget() -> None:
    """One backend answering 503 (the common single-backend pool): the request cannot be retried anywhere, yet
    ``ipgate_upstream_retries_total`` counted a retry and the retry budget paid for one."""
    async with app_backend(_chat(503)) as url, running_gateway(gateway_config(url)) as gw:
        assert await _ask(gw, "alice") == 503
        got = gw.ctx.metrics.registry.get_sample_value("ipgate_upstream_retries_total", {"model": "sim"})
        assert not got, f"a retry that was never sent was counted ({got})"
        # the first try deposited 0.2 into the initial 1.0; nothing was withdrawn
        assert gw.ctx.router.snapshot()["models"]["sim"]["retry_budget"] == 1.2


async def test_a_retry_that_is_made_is_still_counted_once() -> None:
    async with app_backend(_chat(503)) as bad, app_backend(_chat()) as good:
        cfg = gateway_config(models=[{"name": "sim", "backends": [
            {"name": "bad", "url": bad, "weight": 1000}, {"name": "good", "url": good, "weight": 1}]}])
        async with running_gateway(cfg) as gw:
            assert await _ask(gw, "alice") == 200
            get = gw.ctx.metrics.registry.get_sample_value
            assert get("ipgate_upstream_retries_total", {"model": "sim"}) == 1.0
            assert gw.ctx.router.snapshot()["models"]["sim"]["retry_budget"] == 0.2


# --- 2. a rotated backend credential reaches the health checks after a reload -----------------------------

async def test_health_checks_use_the_backend_key_read_again_at_reload(tmp_path: Path) -> None:
    """The operator rotates a backend's API key (new key in the key file, engine restarted with it) and reloads.
    Requests use the new key (the proxy re-reads it per config object), but the health check kept the key it
    read first, got 401 on every round and took a backend that serves fine out of rotation."""
    key_file = tmp_path / "backend.key"
    key_file.write_text("old-key\n")
    accepted = {"key": "old-key"}

    rounds: list[bool] = []  # each health check: was its key accepted

    async def models(request: web.Request) -> web.Response:
        ok = request.headers.get("Authorization") == f"Bearer {accepted['key']}"
        rounds.append(ok)
        return web.json_response({"object": "list", "data": []}, status=200 if ok else 401)

    app = web.Application()
    app.router.add_get("/v1/models", models)
    health = HealthConfig(interval_s=0.05, timeout_s=0.5, failure_threshold=2)

    def cfg(url: str) -> ModelConfig:  # a new config object, as each reload parses the file again
        return ModelConfig.model_validate({"name": "m", "backends": [
            {"name": "b", "url": url, "api_key_file": str(key_file)}]})

    async with app_backend(app) as url:
        router = Router([cfg(url)], RoutingConfig(health=health))
        await router.start()
        try:
            state = router.pool("m").state("b")
            await eventually(lambda: len(rounds) >= 2, what="health checks before the reload")
            assert state.healthy and all(rounds)
            key_file.write_text("new-key\n")
            accepted["key"] = "new-key"
            router.reload([cfg(url)])
            n = len(rounds)
            # more rounds than failure_threshold after the reload (one may have been sent before it, old key)
            await eventually(lambda: len(rounds) >= n + 4, what="health checks after the reload")
            state = router.pool("m").state("b")
            assert state.healthy, state.last_error
            assert all(rounds[-3:]), rounds
        finally:
            await router.close()


async def test_unchanged_reload_keeps_the_health_check_working() -> None:
    """Guard: a reload with the same backend keeps it healthy and checked."""
    hits: list[str | None] = []

    async def models(request: web.Request) -> web.Response:
        hits.append(request.headers.get("Authorization"))
        return web.json_response({"object": "list", "data": []})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    health = HealthConfig(interval_s=0.05, timeout_s=0.5, failure_threshold=2)
    async with app_backend(app) as url:
        model = {"name": "m", "backends": [{"name": "b", "url": url}]}
        router = Router([ModelConfig.model_validate(model)], RoutingConfig(health=health))
        await router.start()
        try:
            router.reload([ModelConfig.model_validate(model)])
            n = len(hits)
            await eventually(lambda: len(hits) >= n + 3, what="health checks after the reload")
            assert router.pool("m").state("b").healthy and set(hits) == {None}
        finally:
            await router.close()


# --- 3. a half-open backend's streamed trial brings it back at its first chunk, not at the stream's end ---

def _streaming_engine(calls: list[str], fail_first: int, hold: asyncio.Event | None = None) -> web.Application:
    """Answers ``fail_first`` requests with 503, then streams: one chunk at once, the rest once ``hold`` is set
    (a long generation; at once without one)."""
    def chunk(content: str | None, finish: str | None = None) -> bytes:
        delta = {} if content is None else {"content": content}
        return ("data: " + json.dumps({"id": "s", "object": "chat.completion.chunk", "created": 0, "model": "sim",
                                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
                + "\n\n").encode()

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        calls.append("stream" if body.get("stream") else "whole")
        if len(calls) <= fail_first:
            return web.json_response({"error": {"message": "down", "type": "server_error"}}, status=503)
        if not body.get("stream"):
            return web.json_response({"id": "x", "object": "chat.completion", "created": 0, "model": "sim",
                                      "choices": [{"index": 0, "finish_reason": "stop",
                                                   "message": {"role": "assistant", "content": "hi"}}],
                                      "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(chunk("Once upon a time"))
        if hold is not None:
            await hold.wait()
        await resp.write(chunk(None, "stop"))
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    return app


async def test_a_streamed_half_open_trial_reinstates_the_backend_at_its_first_chunk() -> None:
    """A single-backend pool (the common deployment) after one ejection: the half-open trial was a long stream,
    and until that stream ENDED the backend stayed out - every other client got 503 no_healthy_backend, with
    no Retry-After, for the length of a whole generation although the backend was answering."""
    calls: list[str] = []
    hold = asyncio.Event()  # the generation goes on until the test ends it
    async with app_backend(_streaming_engine(calls, fail_first=1, hold=hold)) as url:
        cfg = gateway_config(url, routing={"retries": 0, "health": {
            "interval_s": 30, "consecutive_failures": 1, "ejection_base_s": 0.2}})
        async with running_gateway(cfg) as gw:
            assert await _ask(gw, "alice") == 503  # the backend's 503: ejected for 0.2 s
            state = gw.ctx.router.pool("sim").state("b0")
            assert state.ejected_until
            await asyncio.sleep(0.3)  # half-open now

            async def stream() -> str:
                body = {"model": "sim", "stream": True, "messages": [{"role": "user", "content": "a story"}]}
                async with aiohttp.ClientSession() as s, s.post(
                        gw.url + "/v1/chat/completions", json=body,
                        headers={"Authorization": f"Bearer {gw.token('bob')}"}) as r:
                    assert r.status == 200
                    return (await r.read()).decode()

            trial = asyncio.create_task(stream())
            try:
                await eventually(lambda: "stream" in calls, what="the trial stream reached the backend")
                # its first chunk is relayed: the backend is back while the generation still runs
                await eventually(lambda: not state.ejected_until, what="the backend back at the trial's first chunk")
                assert not trial.done()
                assert await _ask(gw, "carol") == 200
            finally:
                hold.set()
            assert "[DONE]" in await trial
            assert not state.ejected_until and state.failures == 0


async def test_a_streamed_trial_that_fails_before_its_first_chunk_ejects_again() -> None:
    """Guard: a trial that fails before answering still ejects the backend for twice as long."""
    calls: list[str] = []
    async with app_backend(_streaming_engine(calls, fail_first=2)) as url:
        cfg = gateway_config(url, routing={"retries": 0, "health": {
            "interval_s": 30, "consecutive_failures": 1, "ejection_base_s": 0.2}})
        async with running_gateway(cfg) as gw:
            assert await _ask(gw, "alice") == 503
            await asyncio.sleep(0.3)
            state = gw.ctx.router.pool("sim").state("b0")
            assert await _ask(gw, "bob") == 503  # the trial: the backend's second 503
            assert state.ejections_total == 2 and state.ejected_until and not state.trial_in_flight


# --- 4. an operator's canary command during a store outage is refused, not silently undone later -----------

@pytest.mark.parametrize("noticed", [True, False], ids=["store-degraded", "outage-not-yet-noticed"])
async def test_a_canary_abort_during_a_store_outage_is_refused_not_undone_after_it(
        redis_process: Any, noticed: bool) -> None:
    """Two replicas on one Redis through the resilient store (what ``store.kind: redis`` builds). Redis hangs;
    an operator aborts the canary on the follower: 200 "aborted", the canary at 0 % there - but the command
    and the state were dropped (``set_blob`` is dropped while degraded), so once Redis answered again the
    follower took the leader's published state and the canary was back at its step's weight, with no word to
    anyone. Like an override during an outage, the command must be refused (503) and change nothing."""
    from gateway.errors import ServiceUnavailable
    from gateway.routing.canary import Op, Phase
    from gateway.routing.controller import CanaryController
    from gateway.routing.pool import Pool
    from gateway.store.redis import RedisStore
    from gateway.store.resilient import ResilientStore

    from .conftest import HEALTH, FakeClock, model

    clock = FakeClock()
    cfg = model("m", ("stable", 1), ("canary", 1), canary={
        "backend": "canary", "steps": [{"weight": 20, "hold_s": 0}, {"weight": 100, "hold_s": 0}],
        "analysis": {"interval_s": 10, "min_requests": 5, "failure_limit": 10}})  # no-data windows: no abort
    stores = [ResilientStore(RedisStore(redis_process.url, timeout_s=0.1), failure_mode="open", timeout_ms=100,
                             health_interval_s=0.05) for _ in range(2)]
    for s in stores:
        await s.start()
    pools = [Pool(cfg, HEALTH, clock=clock) for _ in range(2)]
    leader, follower = (CanaryController(p, store=s, owner=f"r{i}", wall=clock)
                        for i, (p, s) in enumerate(zip(pools, stores, strict=True)))
    try:
        await leader.tick()
        await follower.tick()
        assert leader.leading and not follower.leading
        clock.advance(10)
        await leader.tick()  # the leader publishes its state (an analysis: no data, one failure)
        if noticed:
            redis_process.pause()  # hung: the follower's next poll times out and marks its store degraded
            await follower.tick()
            assert stores[1].degraded
        else:
            redis_process.kill()  # gone: the command's own writes are the first calls to fail
            assert not stores[1].degraded
        try:
            state = await follower.command(Op.ABORT, by="admin")
        except ServiceUnavailable as e:
            assert e.code == "store_unavailable"
            assert follower.state.phase is Phase.PROGRESSING and pools[1].shares()["canary"] == 0.2
            return
        assert state.phase is Phase.ABORTED  # the old behaviour: accepted...
        if noticed:
            redis_process.resume()
        else:
            redis_process.start()
        await eventually(lambda: not any(s.degraded for s in stores), what="the stores recover")
        clock.advance(30)  # past the follower's wait for the leader to apply the command
        await leader.tick()  # (after a restart that lost the data, the leader publishes its state again)
        await follower.tick()
        assert follower.state.phase is Phase.ABORTED, "...and silently undone once Redis answered again"
    finally:
        if redis_process.paused:
            redis_process.resume()
        if redis_process.proc is None:
            redis_process.start()
        for s in stores:
            await s.close()


# --- 5. replicas whose clocks differ --------------------------------------------------------------------

def _rollout() -> Any:
    from .conftest import model
    return model("m", ("stable", 1), ("canary", 1), canary={
        "backend": "canary", "steps": [{"weight": 20, "hold_s": 0}, {"weight": 50, "hold_s": 0}],
        "analysis": {"interval_s": 10, "min_requests": 5, "failure_limit": 2}})


def _traffic(pool: Any, n: int, canary_ok: bool, prefix: str) -> int:
    from gateway.routing.pool import Outcome
    on_canary = 0
    for i in range(n):
        lease = pool.acquire(f"{prefix}{i}")
        is_canary = lease.backend.name == "canary"
        on_canary += is_canary
        lease.release(Outcome(canary_ok or not is_canary, 200 if canary_ok or not is_canary else 500, 0.02))
    return on_canary


async def test_a_new_leader_with_a_slower_clock_still_analyses_within_an_interval() -> None:
    """The leader's clock runs an hour ahead of the others' (no NTP on that VM). It dies; the next leader took
    ``max(published next_analysis, now + interval)``: a time an hour away on its own clock, so the rollout
    froze for an hour - no promotion, and no abort of a canary failing every request meanwhile."""
    from gateway.routing.canary import Phase
    from gateway.routing.controller import CanaryController
    from gateway.routing.pool import Pool
    from gateway.store.memory import MemoryStore

    from .conftest import HEALTH, FakeClock

    clock = FakeClock()
    store = MemoryStore(clock=lambda: int(clock() * 1e6))
    pools = [Pool(_rollout(), HEALTH, clock=clock) for _ in range(2)]
    ahead = CanaryController(pools[0], store=store, owner="ahead", wall=lambda: clock() + 3600.0)
    behind = CanaryController(pools[1], store=store, owner="behind", wall=clock)
    for _ in range(11):  # ahead leads and publishes its first analysis
        _traffic(pools[0], 50, True, "a")
        await ahead.tick()
        await behind.tick()
        clock.advance(1)
    assert ahead.leading and ahead.state.step == 1 and behind.state.step == 1
    clock.advance(4)  # ahead dies: its lease expires, behind takes over
    await behind.tick()
    assert behind.leading
    for _ in range(30):  # the canary fails every request: two failed analyses abort it
        _traffic(pools[1], 50, False, "b")
        clock.advance(1)
        await behind.tick()
    assert behind.state.phase is Phase.ABORTED, behind.state.history[-1]


async def test_a_leader_whose_clock_is_ahead_still_counts_the_other_replicas() -> None:
    """Every replica pruned the shared member list by ITS clock against the others' timestamps: a replica
    whose clock runs over a minute ahead dropped every other replica from it at each poll, and as leader it
    analysed only its own share of the canary's traffic - errors on the other replicas were never seen."""
    from gateway.routing.canary import Phase
    from gateway.routing.controller import CanaryController
    from gateway.routing.pool import Pool
    from gateway.store.memory import MemoryStore

    from .conftest import HEALTH, FakeClock

    clock = FakeClock()
    store = MemoryStore(clock=lambda: int(clock() * 1e6))
    lenient = HEALTH.model_copy(update={"consecutive_failures": 10_000})  # the analysis decides, not ejection
    pools = [Pool(_rollout(), lenient, clock=clock) for _ in range(2)]
    ahead = CanaryController(pools[0], store=store, owner="ahead", wall=lambda: clock() + 120.0)
    other = CanaryController(pools[1], store=store, owner="other", wall=clock)
    await ahead.tick()
    await other.tick()
    assert ahead.leading
    seen_errors = 0
    for _ in range(25):
        _traffic(pools[0], 10, True, "a")  # the leader's own share is fine...
        seen_errors += _traffic(pools[1], 40, False, "o")  # ...the other replica's canary fails every request
        await other.tick()
        await ahead.tick()
        clock.advance(1)
    assert seen_errors > 20
    assert ahead.state.phase is Phase.ABORTED, ahead.state.history


# --- 6. a promote that races an automatic abort does not promote the failed canary ---------------------

async def test_a_promote_issued_on_a_follower_does_not_undo_the_leaders_abort() -> None:
    """The leader's analysis aborts a canary that fails every request; a moment later, before the follower
    has polled, an operator who still sees "progressing" there presses promote. The leader applied the
    command to its aborted state and promoted the canary that had just failed: the whole traffic share of the
    last step went to it. A promote of a rollout the operator saw aborted is deliberate and still applies."""
    from gateway.routing.canary import Op, Phase
    from gateway.routing.controller import CanaryController
    from gateway.routing.pool import Pool
    from gateway.store.memory import MemoryStore

    from .conftest import HEALTH, FakeClock, model

    clock = FakeClock()
    store = MemoryStore(clock=lambda: int(clock() * 1e6))
    cfg = model("m", ("stable", 1), ("canary", 1), canary={
        "backend": "canary", "steps": [{"weight": 20, "hold_s": 0}, {"weight": 100, "hold_s": 0}],
        "analysis": {"interval_s": 10, "min_requests": 5, "failure_limit": 1}})
    lenient = HEALTH.model_copy(update={"consecutive_failures": 10_000})
    pools = [Pool(cfg, lenient, clock=clock) for _ in range(2)]
    leader, follower = (CanaryController(p, store=store, owner=f"r{i}", wall=clock) for i, p in enumerate(pools))
    await leader.tick()
    await follower.tick()
    assert leader.leading
    _traffic(pools[0], 100, False, "a")
    clock.advance(10)
    await leader.tick()
    assert leader.state.phase is Phase.ABORTED
    assert follower.state.phase is Phase.PROGRESSING  # it has not polled since
    await follower.command(Op.PROMOTE, by="admin")
    clock.advance(1)
    await leader.tick()  # the leader applies the follower's command
    await follower.tick()
    assert [c.state.phase for c in (leader, follower)] == [Phase.ABORTED, Phase.ABORTED]
    assert [p.shares()["canary"] for p in pools] == [0.0, 0.0]
    # the operator now sees "aborted" on the follower and promotes anyway: that one is applied everywhere
    await follower.command(Op.PROMOTE, by="admin")
    clock.advance(1)
    await leader.tick()
    await follower.tick()
    assert [c.state.phase for c in (leader, follower)] == [Phase.PROMOTED, Phase.PROMOTED]
    assert [p.shares()["canary"] for p in pools] == [1.0, 1.0]


# --- 7. an operator command is counted once across replicas --------------------------------------------

async def test_a_command_issued_on_a_follower_is_counted_once() -> None:
    """The follower that took the command counted ``ipgate_canary_events_total{event="aborted"}``, and the
    leader counted it again when it applied the command: the dashboard's sum over replicas showed two aborts
    for one (the analysis' own events are counted by the leader only)."""
    from prometheus_client import CollectorRegistry

    from gateway.routing.canary import Op, Phase
    from gateway.routing.controller import CanaryController
    from gateway.routing.pool import Pool
    from gateway.store.memory import MemoryStore
    from gateway.telemetry.metrics import Metrics

    from .conftest import HEALTH, FakeClock

    clock = FakeClock()
    store = MemoryStore(clock=lambda: int(clock() * 1e6))
    regs = [CollectorRegistry(), CollectorRegistry()]
    pools = [Pool(_rollout(), HEALTH, clock=clock) for _ in range(2)]
    leader, follower = (CanaryController(p, store=store, owner=f"r{i}", wall=clock, metrics=Metrics(r))
                        for i, (p, r) in enumerate(zip(pools, regs, strict=True)))
    await leader.tick()
    await follower.tick()
    await follower.command(Op.ABORT, by="admin")
    clock.advance(1)
    await leader.tick()
    await follower.tick()
    assert [c.state.phase for c in (leader, follower)] == [Phase.ABORTED, Phase.ABORTED]
    total = sum(r.get_sample_value("ipgate_canary_events_total", {"model": "m", "event": "aborted"}) or 0.0
                for r in regs)
    assert total == 1.0


# --- 8. a command left in the store is not applied to a later rollout with the same config -------------

async def test_a_config_reverted_to_an_earlier_rollout_does_not_replay_its_old_command() -> None:
    """Rollout A is promoted by an operator; the config moves to rollout B (another first step), whose leader
    publishes B's state over A's; then the config is reverted to A: a NEW rollout of A, from its first step
    (A's state is gone). The promote of the first A was still in the store (7-day TTL) with A's fingerprint,
    and the new leader applied it at once: the fresh canary went straight to 100 % with no analysis at all."""
    from gateway.routing.canary import Op, Phase
    from gateway.routing.controller import CanaryController
    from gateway.routing.pool import Pool
    from gateway.store.memory import MemoryStore

    from .conftest import HEALTH, FakeClock, model

    def cfg(first: float) -> Any:
        return model("m", ("stable", 1), ("canary", 1), canary={
            "backend": "canary", "steps": [{"weight": first, "hold_s": 0}, {"weight": 100, "hold_s": 0}],
            "analysis": {"interval_s": 10, "min_requests": 5}})

    clock = FakeClock()
    store = MemoryStore(clock=lambda: int(clock() * 1e6))
    a = CanaryController(Pool(cfg(10), HEALTH, clock=clock), store=store, owner="a", wall=clock)
    await a.tick()
    await a.command(Op.PROMOTE, by="admin")
    clock.advance(5)  # reload to rollout B: a new controller, which takes the lease over
    b = CanaryController(Pool(cfg(20), HEALTH, clock=clock), store=store, owner="b", wall=clock)
    for _ in range(12):
        await b.tick()
        clock.advance(1)
    assert b.leading
    clock.advance(5)  # the config is reverted to A
    a2 = CanaryController(Pool(cfg(10), HEALTH, clock=clock), store=store, owner="a2", wall=clock)
    await a2.tick()
    assert a2.leading
    assert a2.state.phase is Phase.PROGRESSING and a2.state.weight == 10, a2.state.history[-1]
    # a command for the current rollout still applies
    paused = await a2.command(Op.PAUSE, by="admin")
    assert paused.phase is Phase.PAUSED


# --- 9. a restarted replica does not announce a new start of a rollout that goes on --------------------

async def test_a_restarted_replica_does_not_log_or_count_a_start_of_the_running_rollout(
        caplog: Any) -> None:
    """Every replica built its controller with a fresh first-step state and logged "canary m: started, step 1,
    weight 20.0%" and counted ``canary_events_total{event="started"}`` - also a replica restarted while the
    rollout stood at step 2, which it then adopted: one real start showed as one per replica and restart."""
    import logging

    from prometheus_client import CollectorRegistry

    from gateway.routing.controller import CanaryController
    from gateway.routing.pool import Pool
    from gateway.store.memory import MemoryStore
    from gateway.telemetry.metrics import Metrics

    from .conftest import HEALTH, FakeClock

    caplog.set_level(logging.INFO, logger="gateway.routing.controller")
    clock = FakeClock()
    store = MemoryStore(clock=lambda: int(clock() * 1e6))
    regs = [CollectorRegistry() for _ in range(3)]
    pools = [Pool(_rollout(), HEALTH, clock=clock) for _ in range(3)]
    first = CanaryController(pools[0], store=store, owner="r0", wall=clock, metrics=Metrics(regs[0]))
    second = CanaryController(pools[1], store=store, owner="r1", wall=clock, metrics=Metrics(regs[1]))
    for _ in range(11):
        _traffic(pools[0], 50, True, "a")
        await first.tick()
        await second.tick()
        clock.advance(1)
    assert first.leading and first.state.step == 1 and second.state.step == 1
    restarted = CanaryController(pools[2], store=store, owner="r2", wall=clock, metrics=Metrics(regs[2]))
    await restarted.tick()
    assert restarted.state.step == 1

    def started(reg: CollectorRegistry) -> float:
        return reg.get_sample_value("ipgate_canary_events_total", {"model": "m", "event": "started"}) or 0.0

    assert [started(r) for r in regs] == [1.0, 0.0, 0.0]
    assert sum("started, step 1" in r.getMessage() for r in caplog.records) == 1
