"""``append_audit`` / ``recent_audit``: the same contract on the memory store and a real redis-server (capped,
newest first, a TTL on the key), and the resilient wrapper answers 503 instead of dropping a record."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis

from gateway.config import StoreConfig
from gateway.errors import ServiceUnavailable
from gateway.store.base import StateStore
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore
from gateway.store.resilient import ResilientStore
from tests.conftest import RedisProcess


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[StateStore]:
    if request.param == "memory":
        yield MemoryStore()
        return
    url = request.getfixturevalue("redis_url")
    s = RedisStore.from_config(StoreConfig(kind="redis", url=url, timeout_ms=1000))
    yield s
    await s.close()


async def test_capped_newest_first(store: StateStore) -> None:
    assert await store.recent_audit(10) == []
    for i in range(5):
        await store.append_audit(f'{{"seq":{i}}}', 3)
    assert await store.recent_audit(10) == ['{"seq":4}', '{"seq":3}', '{"seq":2}']
    assert await store.recent_audit(2) == ['{"seq":4}', '{"seq":3}']
    assert await store.recent_audit(0) == []


async def test_the_redis_key_has_a_ttl(redis_url: str) -> None:
    s = RedisStore.from_config(StoreConfig(kind="redis", url=redis_url, timeout_ms=1000))
    await s.append_audit("{}", 10)
    await s.close()
    with redis.Redis.from_url(redis_url) as r:
        assert r.pttl("ipgate:audit") > 300 * 24 * 3600 * 1000


async def test_resilient_store_refuses_loudly(redis_process: RedisProcess) -> None:
    inner = RedisStore.from_config(StoreConfig(kind="redis", url=redis_process.url, timeout_ms=200))
    s = ResilientStore(inner, failure_mode="open", timeout_ms=200, health_interval_s=30)
    await s.start()
    await s.append_audit("{}", 10)
    redis_process.kill()
    for call in (lambda: s.append_audit("{}", 10), lambda: s.recent_audit(10)):
        with pytest.raises(ServiceUnavailable):
            await call()
    await s.close()
