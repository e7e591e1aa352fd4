"""The ``store`` fixture: every contract test runs once on ``MemoryStore`` and once on a real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.config import StoreConfig
from gateway.store.base import StateStore
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[StateStore]:
    if request.param == "memory":
        yield MemoryStore()
        return
    s = RedisStore.from_config(StoreConfig(kind="redis", url=request.getfixturevalue("redis_url"), timeout_ms=2000))
    yield s
    await s.close()
