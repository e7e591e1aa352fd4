"""ResilientStore against a real redis-server that is killed or SIGSTOPped mid-traffic, per failure mode.

Each scenario checks: bounded latency (no call waits much past timeout_ms), the failure-mode answer, one log
line per state change (not per request), the metrics, and automatic recovery once Redis is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gateway.config import StoreConfig
from gateway.errors import RateLimited, ServiceUnavailable
from gateway.ratelimit import admission_error
from gateway.store.base import AdmitRequest, AdmitResult, Limits
from gateway.store.factory import open_store
from gateway.store.failure_modes import divide_limits
from gateway.store.redis import RedisStore
from gateway.store.resilient import ResilientStore
from gateway.telemetry.metrics import Metrics
from tests.support.stall import OwnClock

TIMEOUT_MS = 50.0
# "timeout_ms plus a little": the rest is event-loop scheduling (measured max on an idle loop: a few ms over
# the timeout; the time spent waiting for a CPU is not counted, see Harness.timed). The defect this guards
# against (a SIGSTOPped Redis or a half-dead socket) would hold a call for seconds, not tens of milliseconds.
SLACK_S = 0.1
BOUND_S = TIMEOUT_MS / 1000 + SLACK_S
NORMAL = Limits(requests_per_minute=1, tokens_per_minute=1e6, burst_requests=10, burst_tokens=10**6)
SUSPECT = Limits(requests_per_minute=1, tokens_per_minute=1e6, burst_requests=2, burst_tokens=10**6)
TIERS = (NORMAL, SUSPECT)
LOGGER = "gateway.store.resilient"


def req(client: str) -> AdmitRequest:
    return AdmitRequest(client, 10, TIERS, 60.0)


class Harness:
    def __init__(self, store: ResilientStore, registry: CollectorRegistry) -> None:
        self.store = store
        self.registry = registry

    def failures(self, op: str) -> float:
        return self.registry.get_sample_value("ipgate_store_failures_total", {"op": op}) or 0.0

    def degraded_gauge(self) -> float:
        return self.registry.get_sample_value("ipgate_store_degraded") or 0.0

    async def timed(self, coro: Awaitable[Any]) -> tuple[Any, float]:
        """``coro``'s result and how long it took, less the time this thread waited for a CPU meanwhile (a
        busy host's scheduling, not the store's: its timeouts and a hung Redis count in full)."""
        clock = OwnClock()
        res = await coro
        return res, clock.elapsed()

    async def wait_recovered(self, within_s: float = 5.0) -> None:
        deadline = time.monotonic() + within_s
        while self.store.degraded:
            assert time.monotonic() < deadline, "the store did not recover on its own"
            await asyncio.sleep(0.02)


def make_store(url: str, mode: str, registry: CollectorRegistry) -> ResilientStore:
    cfg = StoreConfig(kind="redis", url=url, failure_mode=mode, timeout_ms=TIMEOUT_MS,  # type: ignore[arg-type]
                      health_interval_s=0.05, local_replicas=2)
    return ResilientStore(RedisStore.from_config(cfg), failure_mode=cfg.failure_mode, timeout_ms=cfg.timeout_ms,
                          health_interval_s=cfg.health_interval_s, local_replicas=cfg.local_replicas,
                          metrics=Metrics(registry))


@pytest.fixture
async def harness(redis_process: Any, request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    registry = CollectorRegistry()
    store = make_store(redis_process.url, getattr(request, "param", "local"), registry)
    await store.start()
    yield Harness(store, registry)
    await store.close()


def check_open(results: list[AdmitResult], bad: AdmitResult, denied: AdmitResult) -> None:
    assert all(r.allowed and r.degraded for r in results)
    assert bad.allowed and bad.tier == 1, "the last known tier still applies"
    assert not denied.allowed and denied.override == "deny", "a denylisted client stays denied"


def check_closed(results: list[AdmitResult], bad: AdmitResult, denied: AdmitResult) -> None:
    assert not any(r.allowed for r in results) and all(r.degraded for r in results)
    err = admission_error(results[0])
    assert isinstance(err, ServiceUnavailable) and err.status == 503 and err.headers["Retry-After"] == "1"
    assert not bad.allowed and not denied.allowed


def check_local(results: list[AdmitResult], bad: AdmitResult, denied: AdmitResult) -> None:
    # burst 10 shared by local_replicas=2 → 5 per process; the suspect tier's burst 2 → 1
    assert [r.allowed for r in results] == [True] * 5 + [False] * (len(results) - 5)
    assert all(r.degraded for r in results) and results[0].requests.limit == 5
    assert bad.allowed and bad.tier == 1 and bad.requests.limit == 1
    assert not denied.allowed and denied.override == "deny"
    assert isinstance(admission_error(results[-1]), RateLimited), "local limits are real limits: 429"


CHECKS: dict[str, Callable[[list[AdmitResult], AdmitResult, AdmitResult], None]] = {
    "open": check_open, "closed": check_closed, "local": check_local,
}


@pytest.mark.parametrize("harness", ["open", "closed", "local"], indirect=True)
@pytest.mark.parametrize("fault", ["kill", "pause"])
async def test_failure_mode_under_fault(harness: Harness, redis_process: Any, fault: str,
                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    s = harness.store
    # healthy traffic teaches the local cache who is suspicious and who is denylisted
    await s.save_client_state("bad", b"", tier=1, score=0.9, ttl_s=60)
    await s.set_override("denied", "deny", None, ttl_s=60)
    assert (await s.hot_path(req("bad"))).tier == 1
    assert not (await s.hot_path(req("denied"))).allowed
    healthy = await s.hot_path(req("warmup"))
    assert healthy.allowed and not healthy.degraded and harness.degraded_gauge() == 0

    getattr(redis_process, fault)()
    # a burst of concurrent requests in flight when Redis goes away, then sequential traffic
    concurrent = await asyncio.gather(*(harness.timed(s.hot_path(req(f"cc{i}"))) for i in range(16)))
    sequential = [await harness.timed(s.hot_path(req("c"))) for _ in range(8)]
    others = [await harness.timed(s.hot_path(req(c))) for c in ("bad", "denied")]
    writes = [
        await harness.timed(s.save_client_state("c", b"x", 0, 0.1, 60)),
        await harness.timed(s.reconcile_tokens("c", 10, 5, NORMAL)),
        await harness.timed(s.link_sketches("c", [1, 2], 60)),
        await harness.timed(s.append_alert("{}", 10)),
        await harness.timed(s.add_recipient("c", 7, 60)),
    ]
    worst = max(t for _, t in concurrent + sequential + others + writes)
    assert worst <= BOUND_S, f"a call waited {worst * 1000:.1f} ms (timeout {TIMEOUT_MS} ms)"

    CHECKS[s.mode]([r for r, _ in sequential], others[0][0], others[1][0])
    assert all(r.degraded for r, _ in concurrent)
    assert await s.link_sketches("c", [1], 60) == {}
    assert not await s.acquire_lease("duty", "me", 60), "no once-per-cluster duty without coordination"
    assert await s.get_blob("b") is None
    for admin_op in (s.get_client("c"), s.set_override("c", "deny", None, 60), s.recent_alerts(5), s.recipients()):
        with pytest.raises(ServiceUnavailable):
            await admin_op

    assert harness.failures("hot_path") >= 16 + 8 + 2
    assert harness.failures("save_client_state") >= 1 and harness.failures("set_override") >= 1
    assert harness.degraded_gauge() == 1
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unavailable" in warnings[0].getMessage(), "one line per state change"

    if fault == "pause":
        redis_process.resume()
    else:
        redis_process.restart()
    await harness.wait_recovered()
    assert harness.degraded_gauge() == 0
    infos = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.INFO]
    assert len(infos) == 1 and "available again" in infos[0].getMessage()

    # back to normal, and no stale replies from the calls cancelled during the pause
    # (a stale reply would repeat a cancelled call's answer: remaining 9 for a fresh client)
    after = [await s.hot_path(req("after")) for _ in range(5)]
    assert [r.requests.remaining for r in after] == [9, 8, 7, 6, 5]
    assert all(r.allowed and not r.degraded and r.tier == 0 for r in after)
    await s.save_client_state("after0", b"new", 1, 0.5, 60)
    rec = await s.get_client("after0")
    assert rec is not None and rec.detector_tier == 1
    await asyncio.sleep(0.05)  # the queued recipient is replayed on recovery
    assert (await s.recipients()).get("c") == [7]
    assert len([r for r in caplog.records if r.name == LOGGER]) == 2


async def test_starts_degraded_when_redis_is_down_and_recovers(redis_process: Any,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    redis_process.kill()
    registry = CollectorRegistry()
    cfg = StoreConfig(kind="redis", url=redis_process.url, failure_mode="closed", timeout_ms=TIMEOUT_MS,
                      health_interval_s=0.05)
    store = await open_store(cfg, Metrics(registry))
    try:
        assert isinstance(store, ResilientStore) and store.degraded
        r = await store.hot_path(req("x"))
        assert not r.allowed and r.degraded
        redis_process.start()
        await Harness(store, registry).wait_recovered()
        r = await store.hot_path(req("x"))
        assert r.allowed and not r.degraded
    finally:
        await store.close()
    assert [r.levelno for r in caplog.records if r.name == LOGGER] == [logging.WARNING, logging.INFO]


async def test_slow_first_ping_at_start_is_retried_not_degraded(redis_process: Any,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A Redis that is alive but slow to answer at start-up (here SIGSTOPped for 0.3 s, six times the
    timeout) must not start the replica degraded: start() retries timed-out pings within its grace."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    registry = CollectorRegistry()
    store = make_store(redis_process.url, "closed", registry)
    redis_process.pause()
    loop = asyncio.get_running_loop()
    loop.call_later(0.3, redis_process.resume)
    try:
        t0 = time.monotonic()
        await store.start()
        assert time.monotonic() - t0 >= 0.25
        assert not store.degraded
        assert (await store.hot_path(req("x"))).allowed
        assert [r for r in caplog.records if r.name == LOGGER] == []
    finally:
        redis_process.resume()
        await store.close()


async def test_refused_connection_at_start_degrades_at_once(redis_process: Any) -> None:
    """Only a timeout is retried: a refused connection is an outage, reported without the grace delay."""
    redis_process.kill()
    store = make_store(redis_process.url, "closed", CollectorRegistry())
    try:
        clock = OwnClock()  # a grace delay would count in full; a busy host's CPU waits do not
        await store.start()
        assert store.degraded
        assert clock.elapsed() < 0.5
    finally:
        await store.close()


async def test_redis_error_reply_is_not_an_outage(harness: Harness, redis_process: Any,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A command Redis rejects (here: a key of the wrong type) falls back for that call only."""
    import redis.asyncio as aredis

    raw = aredis.Redis.from_url(redis_process.url)
    await raw.set(RedisStore("redis://unused").client_keys("odd")[0], "not a hash", ex=60)
    await raw.aclose()
    for _ in range(3):
        r = await harness.store.hot_path(req("odd"))
        assert r.degraded
    assert not harness.store.degraded and harness.degraded_gauge() == 0
    assert (await harness.store.hot_path(req("fine"))).allowed
    errors = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.ERROR]
    assert len(errors) == 1 and harness.failures("hot_path") == 3


@pytest.mark.parametrize(
    ("lim", "replicas", "expect"),
    [
        (Limits(600, 200_000, 100, 33_333), 1, Limits(600, 200_000, 100, 33_333)),
        (Limits(600, 200_000, 100, 33_333), 3, Limits(200, 200_000 / 3, 34, 11_111)),
        (Limits(30, 10_000, 5, 1_666), 8, Limits(3.75, 1_250, 1, 209)),
    ],
)
def test_divide_limits(lim: Limits, replicas: int, expect: Limits) -> None:
    assert divide_limits(lim, replicas) == expect
