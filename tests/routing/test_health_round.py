"""A health round of a big pool: its probes start a slice per loop turn (a round that started them all at once
held the loop ~0.1 ms per backend: 40-90 ms for 800, every interval and after each reload), and a hung backend
holds its own connection only (aiohttp's default connector allows 100 connections in all: 100 hung backends made
every other backend's check time out waiting for one, and the whole gateway was marked unhealthy)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp import web

from gateway.config import HealthConfig, ModelConfig, RoutingConfig
from gateway.routing.health import PROBE_BURST, HealthChecker
from gateway.routing.pool import Pool
from gateway.routing.router import Router
from tests.support.harness import eventually
from tests.support.stall import OwnClock

HEALTH = HealthConfig(interval_s=30.0, timeout_s=0.5, failure_threshold=1)
# for pools whose backends all answer at once: their probes' timeout bounds nothing the tests prove, and 0.5 s of
# wall time for hundreds of probes served by this same loop was too short on a loaded host (some marked unhealthy)
ROOMY = HealthConfig(interval_s=30.0, timeout_s=10.0, failure_threshold=1)


@pytest.fixture
async def server() -> AsyncIterator[str]:
    """One loopback server: ``/ok{i}/v1/models`` answers 200, ``/hang{i}/v1/models`` never answers."""
    async def handler(request: web.Request) -> web.Response:
        if request.path.startswith("/hang"):
            await asyncio.sleep(3600)
        return web.json_response({"object": "list", "data": []})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, backlog=1024).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def _pool(url: str, names: list[str], health: HealthConfig = HEALTH) -> Pool:
    return Pool(ModelConfig.model_validate({"name": "m", "backends": [
        {"name": n, "url": f"{url}/{n}"} for n in names]}), health)


class TurnCounter:
    """Counts the event loop's turns (one callback that reschedules itself runs once per turn) and, through
    aiohttp's own request tracing, the turn in which each probe's request started."""

    def __init__(self) -> None:
        self.turn = 0
        self.started: list[int] = []
        self.trace = aiohttp.TraceConfig()
        self.trace.on_request_start.append(self._started)
        self._handle: asyncio.Handle | None = None

    async def _started(self, session: aiohttp.ClientSession, ctx: SimpleNamespace,
                       params: aiohttp.TraceRequestStartParams) -> None:
        self.started.append(self.turn)

    def _tick(self) -> None:
        self.turn += 1
        self._handle = asyncio.get_running_loop().call_soon(self._tick)

    def __enter__(self) -> TurnCounter:
        self._tick()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.cancel()

    def per_turn(self) -> list[int]:
        return [self.started.count(t) for t in sorted(set(self.started))]


async def test_a_round_of_a_big_pool_starts_a_slice_of_probes_per_loop_turn(server: str) -> None:
    n = 5 * PROBE_BURST
    pool = _pool(server, [f"ok{i}" for i in range(n)], ROOMY)
    counter = TurnCounter()
    async with aiohttp.ClientSession(trace_configs=[counter.trace]) as session:
        checker = HealthChecker(ROOMY, session, lambda: [pool])
        with counter:
            await checker.check_once()
    assert len(counter.started) == n
    assert max(counter.per_turn()) <= PROBE_BURST, counter.per_turn()  # all n in one turn before
    assert all(s.healthy for s in pool.backends)


async def test_a_pool_no_bigger_than_a_slice_starts_every_probe_at_once(server: str) -> None:
    """Small pools (start-up, most deployments) are probed exactly as before: one turn, side by side."""
    pool = _pool(server, [f"ok{i}" for i in range(PROBE_BURST)], ROOMY)
    counter = TurnCounter()
    async with aiohttp.ClientSession(trace_configs=[counter.trace]) as session:
        with counter:
            await HealthChecker(ROOMY, session, lambda: [pool]).check_once()
    assert counter.per_turn() == [PROBE_BURST]


async def test_probes_run_side_by_side_so_a_round_lasts_its_slowest_probe(server: str) -> None:
    """Slicing the starts caps nothing in flight: 40 hung backends cost a round one timeout, not 40."""
    pool = _pool(server, [f"hang{i}" for i in range(40)] + ["ok0"])
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        checker = HealthChecker(HEALTH, session, lambda: [pool])
        clock = OwnClock()  # the probes' timeouts count in full, a busy host's CPU waits do not
        await checker.check_once()
        took = clock.elapsed()
    assert took < 3 * HEALTH.timeout_s, took
    assert [s.cfg.name for s in pool.backends if s.healthy] == ["ok0"]


async def test_a_cancelled_round_leaves_no_probe_running(server: str) -> None:
    pool = _pool(server, [f"hang{i}" for i in range(3 * PROBE_BURST)])
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        checker = HealthChecker(HEALTH, session, lambda: [pool])
        before = asyncio.all_tasks()
        task = asyncio.create_task(checker.check_once())
        for _ in range(2):  # part of the probes started, the rest not yet
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        probes = [t for t in asyncio.all_tasks() - before
                  if t.get_coro().__qualname__.startswith("HealthChecker.")]  # (not the server's handlers)
        assert probes == []


async def test_hung_backends_do_not_fail_the_other_backends_checks(server: str) -> None:
    """The router's health session: one connection per probe, whatever the pool's size. With aiohttp's default
    connector (100 connections in all) a check queued behind 100 hung backends' waited for a connection, timed
    out, and the backend that answers was marked unhealthy (with 100 hung engines, every backend of the
    gateway: bench/health_round_stall.py --slow 100 failed 780 of 800 checks)."""
    routing = RoutingConfig(health=HEALTH)
    hung = ModelConfig.model_validate({"name": "hung", "backends": [
        {"name": f"hang{i}", "url": f"{server}/hang{i}"} for i in range(200)]})
    ok = ModelConfig.model_validate({"name": "ok", "backends": [{"name": "ok0", "url": f"{server}/ok0"}]})
    router = Router([hung, ok], routing)
    await router.start()
    try:
        pools = {p: router.pool(p) for p in ("hung", "ok")}
        await eventually(lambda: not any(s.healthy for s in pools["hung"].backends), timeout_s=5.0,
                         what="the hung backends marked unhealthy")
        await asyncio.sleep(HEALTH.timeout_s)  # ok0's check, started after theirs, has ended too
        assert pools["ok"].backends[0].healthy, pools["ok"].backends[0].last_error
    finally:
        await router.close()


async def test_a_backend_many_models_share_is_probed_once_a_round(server: str) -> None:
    """One engine serving many models (LoRA adapters, aliases) is one backend entry in each model's pool. Each entry
    was probed on its own, side by side, through a connector without a cap: 200 models on one engine were 200
    health requests to it every interval_s per worker, and 160 connections each side kept open between rounds
    (measured through ipgate's own listener: an fd per connection in the gateway and in the engine, growing with
    models x workers). Now one probe per distinct target (URL and health path, credential, TLS) a round, its
    answer applied to every entry; a failure still counts per entry, and another path or credential is another
    probe."""
    models = [Pool(ModelConfig.model_validate({"name": f"m{i}", "backends": [
        {"name": "engine", "url": f"{server}/ok0"}, {"name": "dead", "url": f"{server}/hang0"}]}), HEALTH)
        for i in range(40)]
    other = Pool(ModelConfig.model_validate({"name": "other", "backends": [
        {"name": "engine", "url": f"{server}/ok0", "health_path": "/health"}]}), HEALTH)
    counter = TurnCounter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     trace_configs=[counter.trace]) as session:
        checker = HealthChecker(HEALTH, session, lambda: [*models, other])
        await checker.check_once()
        assert len(counter.started) == 3  # before: 81 (one per entry)
    for pool in models:
        assert [s.healthy for s in pool.backends] == [True, False], pool.name
        assert pool.backends[1].last_error == f"health check timed out after {HEALTH.timeout_s}s"
    assert other.backends[0].healthy
