"""Active health checks against real aiohttp servers on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from gateway.config import ModelConfig, RoutingConfig
from gateway.errors import ServiceUnavailable
from gateway.routing.health import MAX_BODY_BYTES, HealthChecker
from gateway.routing.pool import Pool
from gateway.routing.router import Router
from tests.support.harness import eventually

from .conftest import HEALTH

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Backend:
    """A real HTTP server on a free loopback port whose health answer the test can change."""

    def __init__(self) -> None:
        self.status = 200
        self.delay = 0.0
        self.hits = 0
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def _models(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.json_response({"object": "list", "data": []}, status=self.status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def backends() -> AsyncIterator[dict[str, Backend]]:
    out = {name: Backend() for name in ("good", "err", "stops", "slow")}
    for b in out.values():
        await b.start()
    out["err"].status = 500
    out["slow"].delay = 0.4
    yield out
    for b in out.values():
        await b.stop()


def _model(backends: dict[str, Backend]) -> ModelConfig:
    return ModelConfig.model_validate({
        "name": "m",
        "backends": [{"name": n, "url": b.url, "weight": 1} for n, b in backends.items()],
    })


def _healthy(pool: Pool) -> dict[str, bool]:
    return {s.cfg.name: s.healthy for s in pool.backends}


async def test_checker_marks_failing_backends_and_recovers(backends: dict[str, Backend]) -> None:
    pool = Pool(_model(backends), HEALTH)
    async with aiohttp.ClientSession() as session:
        checker = HealthChecker(HEALTH, session, lambda: [pool])
        await checker.check_once()
        assert all(_healthy(pool).values())  # one failure is below failure_threshold (2)
        await backends["stops"].stop()  # the server goes away: connection refused from now on
        await checker.check_once()
        assert _healthy(pool)["stops"]  # one failure after a pass is not enough
        await checker.check_once()
        assert _healthy(pool) == {"good": True, "err": False, "stops": False, "slow": False}
        assert pool.backends[1].last_error == "health check answered 500"
        assert "timed out" in (pool.backends[3].last_error or "")
        assert "ClientConnectorError" in (pool.backends[2].last_error or "")
        # only the healthy backend gets traffic now
        assert {pool.acquire(f"c{i}").backend.name for i in range(50)} == {"good"}
        # recovery: the first passing check brings a backend back
        backends["err"].status = 200
        await backends["stops"].start()  # same port again
        await checker.check_once()
        assert _healthy(pool) == {"good": True, "err": True, "stops": True, "slow": False}


async def test_no_healthy_backend_is_503(backends: dict[str, Backend]) -> None:
    model = ModelConfig.model_validate({"name": "m", "backends": [{"name": "err", "url": backends["err"].url}]})
    pool = Pool(model, HEALTH)
    async with aiohttp.ClientSession() as session:
        checker = HealthChecker(HEALTH, session, lambda: [pool])
        await checker.check_once()
        await checker.check_once()
    with pytest.raises(ServiceUnavailable) as ei:
        pool.acquire("c")
    assert ei.value.code == "no_healthy_backend"


async def test_router_runs_checks_in_the_background(backends: dict[str, Backend]) -> None:
    del backends["slow"]
    router = Router([_model(backends)], RoutingConfig(health=HEALTH))
    await router.start()
    try:
        await backends["stops"].stop()
        pool = router.pool("m")
        # two failed rounds mark them unhealthy; the good backend is checked in each round (waited for too: a
        # round's checks run concurrently, so its verdict on err may land before the good backend's check)
        await eventually(lambda: _healthy(pool) == {"good": True, "err": False, "stops": False}
                         and backends["good"].hits >= 2, 10, "two background rounds")
        snap = router.snapshot()["models"]["m"]["backends"]
        assert [b["status"] for b in snap] == ["healthy", "unhealthy", "unhealthy"]
    finally:
        await router.close()


async def test_an_endless_health_body_is_not_read_to_the_end() -> None:
    """A backend whose health answer is a 200 with a body that never ends: the status decides at once, and the
    checker reads at most ``MAX_BODY_BYTES`` of it (it used to read until the check timed out, holding the body
    in memory, and then failed a backend that had answered 200)."""
    sent = [0]

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=200)
        await resp.prepare(request)
        block = b"x" * 65_536
        try:
            while True:
                await resp.write(block)
                sent[0] += len(block)
        except (ConnectionResetError, ConnectionError):
            pass
        return resp

    app = web.Application()
    app.router.add_get("/v1/models", endless)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        pool = Pool(ModelConfig.model_validate({"name": "m", "backends": [{"name": "b", "url": url}]}), HEALTH)
        async with aiohttp.ClientSession() as session:
            checker = HealthChecker(HEALTH, session, lambda: [pool])
            assert await checker.probe(pool.backends[0].cfg) is None  # not "timed out": the 200 decided
    finally:
        await runner.cleanup()
    assert sent[0] < 64 * MAX_BODY_BYTES  # the backend was cut off, not drained


@pytest.mark.parametrize("yields", [0, 1, 2, 3])
async def test_a_cancel_right_after_a_kick_ends_the_checker(yields: int) -> None:
    """A reload kicks the checker (the next round now); a shutdown right after cancels it. On Python 3.11
    ``asyncio.wait_for`` swallowed a cancellation that arrived as the event was set, the loop went on, and
    ``Router.close`` waited for the task for ever (a gateway stopped after a reload hung)."""
    pool = Pool(ModelConfig.model_validate({"name": "m", "backends": [{"name": "b", "url": "http://127.0.0.1:9"}]}),
                HEALTH.model_copy(update={"interval_s": 30.0}))
    async with aiohttp.ClientSession() as session:
        checker = HealthChecker(HEALTH.model_copy(update={"interval_s": 30.0}), session, lambda: [pool])
        task = asyncio.create_task(checker.run())
        await asyncio.sleep(0.3)  # the first round is done: the task waits for the interval or a kick
        checker.kick()
        for _ in range(yields):
            await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=2.0)
        assert task in done, "the checker ignored its cancellation"
