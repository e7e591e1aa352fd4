"""An administrator's denylist during a Redis outage, on a worker or replica that has not served the client.

The docs promise that in failure modes ``open`` and ``local`` "the denylist and blocks still apply". They did
only where the process had answered the denied client itself since it started (its cache of hot-path answers):
with ``--workers N`` or several replicas, a denied client whose next connection reached another worker was
admitted for the whole outage, and so was every denied client after a gateway restart. Overrides are now also
listed in one index key, which every process reads at start-up and every ``overrides_refresh_s``, and which
the degraded hot path consults.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis

from gateway.config import StoreConfig
from gateway.store.base import AdmitRequest, Limits
from gateway.store.redis import RedisStore
from gateway.store.resilient import ResilientStore

LIMITS = tuple(
    Limits(requests_per_minute=600, tokens_per_minute=10**6, burst_requests=100, burst_tokens=10**6)
    for _ in range(4)
)


async def _until(cond: Callable[[], bool], what: str, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not cond():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


@pytest.fixture
async def workers(redis_process: Any, request: pytest.FixtureRequest) -> AsyncIterator[list[ResilientStore]]:
    """Two processes' stores on one Redis (``--workers 2``, or two replicas)."""
    mode: Any = getattr(request, "param", "local")
    stores = []
    for _ in range(2):
        cfg = StoreConfig(kind="redis", url=redis_process.url, failure_mode=mode, timeout_ms=100.0,
                          health_interval_s=0.05)
        stores.append(ResilientStore(RedisStore.from_config(cfg), failure_mode=mode, timeout_ms=cfg.timeout_ms,
                                     health_interval_s=cfg.health_interval_s, overrides_refresh_s=0.1))
    for s in stores:
        await s.start()
    yield stores
    for s in stores:
        await s.close()


async def _admit(store: ResilientStore, client: str) -> tuple[bool, bool, int]:
    res = await store.hot_path(AdmitRequest(client, 1, LIMITS))
    return res.allowed, res.degraded, res.tier


@pytest.mark.parametrize("workers", ["local", "open"], indirect=True)
async def test_a_denied_client_stays_denied_on_a_worker_that_never_served_it(
        workers: list[ResilientStore], redis_process: Any) -> None:
    a, b = workers
    await a.set_override("mallory", "deny", None, 3600.0)
    await a.set_override("pinned", None, 2, 3600.0)
    assert (await _admit(a, "mallory"))[0] is False  # a has answered mallory: it knows
    await _until(lambda: {"mallory", "pinned"} <= set(b._overrides), "b's next read of the override index")
    redis_process.kill()
    assert await _admit(b, "mallory") == (False, True, 0)  # was (True, True, 0): admitted for the outage
    assert await _admit(b, "pinned") == (True, True, 2)  # an administrator's tier pin too
    assert await _admit(b, "someone-else") == (True, True, 0)


async def test_a_process_started_before_the_outage_reads_the_denylist_at_once(redis_process: Any) -> None:
    cfg = StoreConfig(kind="redis", url=redis_process.url, failure_mode="local", timeout_ms=100.0)
    admin = RedisStore.from_config(cfg)
    await admin.set_override("mallory", "deny", None, 3600.0)
    await admin.close()
    store = ResilientStore(RedisStore.from_config(cfg), failure_mode="local", timeout_ms=100.0)  # default refresh
    await store.start()
    try:
        await _until(lambda: "mallory" in store._overrides, "the first read, in the background")
        redis_process.kill()
        assert await _admit(store, "mallory") == (False, True, 0)
    finally:
        await store.close()


async def test_lifted_and_expired_overrides_leave_the_index(workers: list[ResilientStore],
                                                           redis_process: Any) -> None:
    a, b = workers
    await a.set_override("lifted", "deny", None, 3600.0)
    await a.set_override("short", "deny", None, 0.3)
    await a.set_override("allowed", "allow", None, 3600.0)
    await a.set_override("lifted", None, None, 3600.0)  # the administrator lifts the deny
    with redis.Redis(port=redis_process.port) as r:
        assert {m.decode() for m in r.zrange("ipgate:overrides", 0, -1)} == {"short", "allowed"}
        assert 0 < r.pttl("ipgate:overrides") <= 3600 * 1000  # every key has a TTL: the longest override's
    await _until(lambda: set(b._overrides) == {"short", "allowed"} or set(b._overrides) == {"allowed"},
                 "b's next read of the override index")
    await asyncio.sleep(0.35)  # "short" has expired
    redis_process.kill()
    assert (await _admit(b, "lifted"))[0] is True
    assert (await _admit(b, "short"))[0] is True
    assert await _admit(b, "allowed") == (True, True, 0)


async def test_an_override_set_during_an_outage_is_refused_and_changes_nothing(workers: list[ResilientStore],
                                                                              redis_process: Any) -> None:
    a, b = workers
    redis_process.kill()
    assert (await _admit(b, "x"))[1] is True
    from gateway.errors import ServiceUnavailable
    with pytest.raises(ServiceUnavailable):
        await b.set_override("x", "deny", None, 60.0)
    assert (await _admit(b, "x"))[0] is True
    redis_process.start()
    await _until(lambda: not a.degraded and not b.degraded, "recovery")


async def test_the_override_index_on_redis_and_on_a_cluster(store: Any) -> None:
    """``overrides()`` lists what ``set_override`` wrote, on a standalone Redis and on a Redis Cluster (the
    index lives in its own slot, each override in its client's)."""
    if not isinstance(store, RedisStore):
        pytest.skip("the index serves the Redis store's failure modes")
    ids = [f"c{i}" for i in range(1200)] + ["{odd}%id"]  # more than two pages
    for c in ids:
        await store.set_override(c, "deny", None, 600.0)
    await store.set_override("c5", None, 2, 60.0)
    await store.set_override("c6", None, None, 60.0)
    got = await store.overrides()
    assert set(got) == set(ids) - {"c6"}
    assert got["c5"][:2] == (None, 2) and got["{odd}%id"][:2] == ("deny", None)
    assert time.time() + 590 < got["c7"][2] <= time.time() + 600


@pytest.mark.parametrize("workers", ["open", "local"], indirect=True)
async def test_an_override_that_expires_during_an_outage_ends(workers: list[ResilientStore],
                                                              redis_process: Any) -> None:
    """A process answers a client it served from what Redis last said (tier, override): an override whose TTL
    ran out during the outage stayed in force until Redis was back (an expired allow kept exempting the client
    from blocks). The override copy knows the expiry."""
    a, _ = workers
    await a.set_override("ci-bot", "deny", None, 1.0)
    assert (await _admit(a, "ci-bot"))[0] is False  # a remembers (tier, "deny") for the outage
    redis_process.kill()
    await asyncio.sleep(1.3)  # the deny's TTL ran out (its key in Redis would be gone)
    assert (await _admit(a, "ci-bot"))[0] is True
