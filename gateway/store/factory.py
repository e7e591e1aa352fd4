"""``open_store``: the configured ``StateStore`` — memory, or Redis behind the failure-mode guard."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.config import StoreConfig
from gateway.store.base import StateStore
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore
from gateway.store.resilient import ResilientStore

if TYPE_CHECKING:
    from gateway.telemetry.metrics import Metrics


async def open_store(cfg: StoreConfig, metrics: Metrics | None) -> StateStore:
    """Open the store. A Redis that is down at start-up does not stop the gateway: the store starts
    degraded under ``failure_mode`` and recovers when Redis answers."""
    if cfg.kind == "memory":
        return MemoryStore(max_state_bytes=cfg.max_state_bytes)
    store = ResilientStore(
        RedisStore.from_config(cfg),
        failure_mode=cfg.failure_mode,
        timeout_ms=cfg.timeout_ms,
        health_interval_s=cfg.health_interval_s,
        local_replicas=cfg.local_replicas,
        metrics=metrics,
        local=MemoryStore(max_state_bytes=cfg.max_state_bytes),
    )
    await store.start()
    return store
