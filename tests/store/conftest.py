"""The ``store`` fixture: every contract test runs on ``MemoryStore``, on a real Redis, and on a real 3-primary
Redis Cluster (``cluster``; skipped only where redis-cli is missing)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.config import StoreConfig
from gateway.store.base import StateStore
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore


@pytest.fixture(params=["memory", "redis", "cluster"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[StateStore]:
    if request.param == "memory":
        yield MemoryStore()
        return
    if request.param == "cluster":
        cfg = StoreConfig(kind="redis", url=request.getfixturevalue("redis_cluster_url"), cluster=True,
                          timeout_ms=2000)
    else:
        cfg = StoreConfig(kind="redis", url=request.getfixturevalue("redis_url"), timeout_ms=2000)
    s = RedisStore.from_config(cfg)
    yield s
    await s.close()
