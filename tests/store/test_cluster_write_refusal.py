"""Redis Cluster: a primary that refuses writes while the other primaries accept them.

``OOM`` (maxmemory reached under ``noeviction``) and ``MISCONF`` (a failed RDB save with
``stop-writes-on-bgsave-error``) are properties of one node. The health probe used to write its key to one
primary only: with the fault on another primary the store degraded on a request, the probe declared it healthy,
the next request to that primary degraded it again — a WARNING, an INFO line and two gauge changes per probe
interval. The probe now writes one key on every primary (``ClusterMux.probe_keys``). Real ``redis-server``
nodes (the session's 3-primary cluster); each fault is undone in ``finally``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from gateway.config import StoreConfig
from gateway.store.base import AdmitRequest, Limits
from gateway.store.cluster import PROBE_TAG_RANGE, ClusterMux
from gateway.store.redis import RedisStore
from gateway.store.resilient import ResilientStore
from gateway.store.resp import RespMux
from gateway.telemetry.metrics import Metrics

SLOW = Limits(requests_per_minute=1, tokens_per_minute=1e9, burst_requests=6, burst_tokens=10**9)  # T = 60 s


def cluster_store(url: str, timeout_ms: float = 200) -> RedisStore:
    return RedisStore.from_config(StoreConfig(kind="redis", url=url, cluster=True, timeout_ms=timeout_ms))


def client_on_node(store: RedisStore, cluster: Any, node: int) -> str:
    return next(f"wr{i}" for i in range(10_000)
                if cluster.node_of_slot(int(key_slot(store.client_keys(f"wr{i}")[0].encode()))) == node)


def _wait(r: redis.Redis, field: str, value: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        info = r.info("persistence")
        if not info["rdb_bgsave_in_progress"] and str(info[field]) == value:
            return
        assert time.monotonic() < deadline, f"{field} never became {value}: {info}"
        time.sleep(0.02)


@contextmanager
def refusing_writes(cluster: Any, node: int, fault: str) -> Iterator[None]:
    """``oom``: maxmemory 1 byte (the nodes run the default ``noeviction``). ``misconf``: an RDB save that fails
    (a directory sits where the dump file goes: rename() fails, even for root) with save points configured,
    which is when Redis refuses writes."""
    with cluster.client(node) as r:
        if fault == "oom":
            assert r.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
            r.config_set("maxmemory", 1)
            try:
                yield
            finally:
                r.config_set("maxmemory", 0)
            return
        blocker = Path(cluster.nodes[node].dir) / r.config_get("dbfilename")["dbfilename"]
        blocker.mkdir()
        try:
            r.config_set("save", "3600 1")
            r.bgsave()
            _wait(r, "rdb_last_bgsave_status", "err")
            yield
        finally:
            blocker.rmdir()
            r.bgsave()  # a successful save ends MISCONF
            _wait(r, "rdb_last_bgsave_status", "ok")
            r.config_set("save", "")


@pytest.mark.parametrize("fault", ["oom", "misconf"])
async def test_a_primary_refusing_writes_keeps_the_store_degraded_until_it_accepts_them(
        fault: str, redis_cluster_url: str, redis_cluster: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.store.resilient")
    registry = CollectorRegistry()
    inner = cluster_store(redis_cluster_url)
    store = ResilientStore(inner, failure_mode="closed", timeout_ms=200, health_interval_s=0.05,
                           metrics=Metrics(registry))
    await store.start()
    assert not store.degraded
    # not the primary of the key the probe used to write: that is the case that flapped
    victim = (redis_cluster.node_of_slot(int(key_slot(b"ipgate:health"))) + 1) % 3
    client = client_on_node(inner, redis_cluster, victim)
    req = AdmitRequest(client, 1, (SLOW,), 60.0)
    assert (await store.hot_path(req)).allowed
    try:
        with refusing_writes(redis_cluster, victim, fault):
            first = await store.hot_path(req)
            assert first.unavailable and store.degraded
            gauge: list[float | None] = []
            for _ in range(20):  # 1 s of requests; the probe runs every 50 ms meanwhile
                await asyncio.sleep(0.05)
                assert (await store.hot_path(req)).unavailable
                gauge.append(registry.get_sample_value("ipgate_store_degraded"))
            messages = [r.getMessage() for r in caplog.records]
            assert [m for m in messages if "available again" in m] == [], "the probe declared the store healthy"
            down = [m for m in messages if "state store unavailable" in m]
            assert len(down) == 1 and fault.upper() in down[0], down
            assert gauge == [1.0] * 20
        deadline = time.monotonic() + 5
        while store.degraded:
            assert time.monotonic() < deadline, "no recovery once the primary accepts writes again"
            await asyncio.sleep(0.02)
        assert registry.get_sample_value("ipgate_store_degraded") == 0
        after = await store.hot_path(req)
        assert after.allowed and not after.degraded
        assert after.requests.remaining == 4  # the refused calls charged nothing
        assert sum("available again" in r.getMessage() for r in caplog.records) == 1
    finally:
        await store.close()


async def test_the_probe_writes_a_key_with_a_ttl_on_every_primary(redis_cluster_url: str, redis_cluster: Any) -> None:
    store = cluster_store(redis_cluster_url, timeout_ms=2000)
    try:
        await store.ping()
        mux = store.connection
        assert isinstance(mux, ClusterMux)
        keys = mux.probe_keys("ipgate:health")
        assert len(keys) == 3
        assert sorted(redis_cluster.node_of_slot(int(key_slot(k.encode()))) for k in keys) == [0, 1, 2]
        for k in keys:
            with redis_cluster.client(redis_cluster.node_of_slot(int(key_slot(k.encode())))) as r:
                assert r.get(k) == b"1" and 0 < r.pttl(k) <= 10_000
        assert mux.probe_keys("ipgate:health") == keys  # found once, kept while the owners keep their slots
    finally:
        await store.close()


def test_the_probe_tag_range_reaches_every_slot() -> None:
    # probe_keys searches tags 0 .. PROBE_TAG_RANGE-1: that range must hit every slot, or a primary serving
    # only an unreached slot would get no health key
    assert len({key_slot(b"%d" % n) for n in range(PROBE_TAG_RANGE)}) == REDIS_CLUSTER_HASH_SLOTS


async def test_a_primary_serving_a_single_slot_gets_its_own_probe_key() -> None:
    mux = ClusterMux(["redis://127.0.0.1:1"], timeout_s=0.05)  # never connects: the map is set by hand
    big, small = RespMux("redis://127.0.0.1:1/0", timeout_s=0.05), RespMux("redis://127.0.0.1:2/0", timeout_s=0.05)
    lone = 12_345
    mux._slots = [big] * REDIS_CLUSTER_HASH_SLOTS
    mux._slots[lone] = small
    keys = mux.probe_keys("p:health")
    assert len(keys) == 2
    assert sorted(key_slot(k.encode()) == lone for k in keys) == [False, True]
    mux._slots[lone] = big  # the slot moves: the small primary is gone, its tag is forgotten
    assert len(mux.probe_keys("p:health")) == 1
