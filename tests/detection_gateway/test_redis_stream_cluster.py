"""The Redis stream sink on a real 3-primary Redis Cluster (fixture ``redis_cluster`` in tests/conftest.py).

Defect: the sink used a plain client to the one node its URL names; a stream whose slot another primary serves
answered ``MOVED`` and every alert on the sink failed. It now routes by the stream's slot through the store's
``ClusterMux`` — the store's seeds when the sink has no URL of its own, or its own URL with ``cluster: true``."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.crc import key_slot

from gateway.alerts.dispatcher import AlertDispatcher
from gateway.alerts.sinks import RedisStreamSink, build_sinks
from gateway.config import AlertSinkConfig, GatewayConfig
from gateway.telemetry.metrics import Metrics
from tests.support.harness import gateway_config

from .test_alert_sinks import counter, make_alert


def stream_elsewhere(redis_cluster: Any, base: str) -> str:
    """A stream name whose slot is served by a primary other than node 0 (the one the seed URL names)."""
    names = (f"{base}:{i}" for i in range(1000))
    return next(n for n in names if redis_cluster.node_of_slot(key_slot(n.encode())) != 0)


async def entries(redis_cluster: Any, stream: str) -> list[dict[bytes, bytes]]:
    node = redis_cluster.nodes[redis_cluster.node_of_slot(key_slot(stream.encode()))]
    r = aioredis.Redis.from_url(node.url)
    try:
        return [f for _, f in await r.xrange(stream)]
    finally:
        await r.aclose()


async def test_alerts_reach_a_stream_on_another_shard_of_the_stores_cluster(
        redis_cluster: Any, redis_cluster_url: str) -> None:
    stream = stream_elsewhere(redis_cluster, "alerts")
    cfg = GatewayConfig.model_validate(gateway_config(
        "http://127.0.0.1:9",
        store={"kind": "redis", "url": redis_cluster_url, "cluster": True},
        alerts={"min_interval_s": 0, "dedup_window_s": 0,
                "sinks": [{"kind": "redis_stream", "stream": stream, "max_retries": 0, "timeout_s": 2}]}))
    metrics = Metrics()
    d = AlertDispatcher.from_config(cfg, None, metrics)
    await d.start()
    try:
        alerts = [make_alert("c1"), make_alert("c2")]
        for a in alerts:
            assert await d.submit(a)
        assert await d.flush(10)
    finally:
        await d.close()
    assert counter(metrics, "redis_stream", "failed") == 0  # before the fix: 2 (MOVED)
    assert counter(metrics, "redis_stream", "delivered") == 2
    assert [f[b"id"].decode() for f in await entries(redis_cluster, stream)] == [a.id for a in alerts]


async def test_a_sinks_own_cluster_url_retries_once_and_pings_every_primary(
        redis_cluster: Any, redis_cluster_url: str) -> None:
    stream = stream_elsewhere(redis_cluster, "own")
    sink = RedisStreamSink(AlertSinkConfig(kind="redis_stream", stream=stream, url=redis_cluster_url, cluster=True),
                           "redis://127.0.0.1:9/0")  # the store's URL: not used
    try:
        await sink.ping()
        alert = make_alert("c1")
        await sink.emit(alert, alert.to_json())
        await sink.emit(alert, alert.to_json())  # the dispatcher's retry of the same alert: no second entry
    finally:
        await sink.close()
    got = await entries(redis_cluster, stream)
    assert [json.loads(f[b"alert"])["client"] for f in got] == ["c1"]


async def test_a_cluster_user_without_scripting_still_gets_alerts_on_the_right_shard(
        redis_cluster: Any, redis_cluster_url: str, caplog: pytest.LogCaptureFixture) -> None:
    stream = stream_elsewhere(redis_cluster, "acl")
    for i in range(len(redis_cluster.nodes)):  # ACLs are per node
        with redis_cluster.client(i) as r:
            r.execute_command("ACL", "SETUSER", "alerts", "reset", "on", ">pw", "~*", "+xadd", "+ping",
                              "+cluster|slots", "+cluster|info")
    host, port = redis_cluster_url.removeprefix("redis://").split(":")
    sink = RedisStreamSink(AlertSinkConfig(kind="redis_stream", stream=stream), f"redis://alerts:pw@{host}:{port}",
                           [f"redis://alerts:pw@{host}:{port}"])
    try:
        with caplog.at_level("WARNING", logger="gateway.alerts.sinks"):
            for client in ("c1", "c2"):
                a = make_alert(client)
                await sink.emit(a, a.to_json())
        assert sum("may not run scripts" in rec.getMessage() for rec in caplog.records) == 1
        assert "pw" not in caplog.text
    finally:
        await sink.close()
        for i in range(len(redis_cluster.nodes)):
            with redis_cluster.client(i) as r:
                r.execute_command("ACL", "DELUSER", "alerts")
    assert len(await entries(redis_cluster, stream)) == 2


def test_a_store_without_cluster_mode_keeps_a_plain_client() -> None:
    sinks = build_sinks([AlertSinkConfig(kind="redis_stream")], default_redis_url="redis://127.0.0.1:6379/0")
    assert isinstance(sinks[0], RedisStreamSink) and not sinks[0].cluster
    own = build_sinks([AlertSinkConfig(kind="redis_stream", url="redis://10.0.0.1:6379/0")],
                      default_redis_url="redis://127.0.0.1:6379", default_cluster_seeds=["redis://127.0.0.1:6379"])
    assert isinstance(own[0], RedisStreamSink) and not own[0].cluster  # a URL of its own: its own mode


@pytest.mark.parametrize(("fields", "message"), [
    ({"kind": "jsonl", "path": "/tmp/a.jsonl", "cluster": True}, "cluster is a redis_stream sink's field"),
    ({"kind": "redis_stream", "url": "redis://:secret@10.0.0.1:7000/2", "cluster": True},
     "url: Redis Cluster has only database 0 (node 10.0.0.1:7000)"),
    ({"kind": "redis_stream", "url": "unix:///tmp/r.sock", "cluster": True}, "url: cluster node URLs are"),
])
def test_cluster_sink_config_is_validated(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as e:
        AlertSinkConfig(**fields)
    msgs = " ".join(err["msg"] for err in e.value.errors())
    assert message in msgs and "secret" not in msgs


async def test_a_sinks_own_url_with_cluster_null_finds_the_cluster_at_first_use(
        redis_cluster: Any, redis_cluster_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """``cluster: null`` with a url of its own used to mean a single endpoint: on a cluster node every alert on a
    stream another primary serves failed (MOVED) until ``cluster: true`` was set by hand. The node is now asked
    (INFO cluster) at the sink's first use."""
    stream = stream_elsewhere(redis_cluster, "auto")
    sink = RedisStreamSink(AlertSinkConfig(kind="redis_stream", stream=stream, url=redis_cluster_url),
                           "redis://127.0.0.1:9/0")
    try:
        assert not sink.cluster  # not known before the first use
        with caplog.at_level("INFO", logger="gateway.alerts.sinks"):
            for client in ("c1", "c2"):
                a = make_alert(client)
                await sink.emit(a, a.to_json())
        assert sink.cluster
        assert sum("runs in cluster mode" in rec.getMessage() for rec in caplog.records) == 1
    finally:
        await sink.close()
    assert [json.loads(f[b"alert"])["client"] for f in await entries(redis_cluster, stream)] == ["c1", "c2"]
    checked = RedisStreamSink(AlertSinkConfig(kind="redis_stream", stream=stream, url=redis_cluster_url), "")
    try:
        await checked.ping()  # `ipgate check --connect`: detected there too, every primary pinged
        assert checked.cluster
    finally:
        await checked.close()


async def test_a_cluster_node_that_may_not_be_asked_is_found_by_its_moved_answer(
        redis_cluster: Any, redis_cluster_url: str, caplog: pytest.LogCaptureFixture) -> None:
    stream = stream_elsewhere(redis_cluster, "noinfo")
    for i in range(len(redis_cluster.nodes)):  # neither INFO nor CLUSTER INFO, nor scripts
        with redis_cluster.client(i) as r:
            r.execute_command("ACL", "SETUSER", "blind", "reset", "on", ">pw", "~*", "+xadd", "+ping",
                              "+cluster|slots")
    host, port = redis_cluster_url.removeprefix("redis://").split(":")
    sink = RedisStreamSink(AlertSinkConfig(kind="redis_stream", stream=stream, url=f"redis://blind:pw@{host}:{port}"),
                           "")
    try:
        with caplog.at_level("INFO", logger="gateway.alerts.sinks"):
            for client in ("c1", "c2"):
                a = make_alert(client)
                await sink.emit(a, a.to_json())
        assert sink.cluster
        assert sum("may run neither INFO nor CLUSTER INFO" in rec.getMessage() for rec in caplog.records) == 1
        assert sum("answered MOVED" in rec.getMessage() for rec in caplog.records) == 1
        assert "pw" not in caplog.text
    finally:
        await sink.close()
        for i in range(len(redis_cluster.nodes)):
            with redis_cluster.client(i) as r:
                r.execute_command("ACL", "DELUSER", "blind")
    assert len(await entries(redis_cluster, stream)) == 2


async def test_a_sinks_own_url_on_a_single_redis_stays_a_plain_client(redis_url: str) -> None:
    sink = RedisStreamSink(AlertSinkConfig(kind="redis_stream", stream="plain:alerts", url=redis_url), "")
    try:
        a = make_alert("c1")
        await sink.emit(a, a.to_json())
        assert not sink.cluster and not sink._detect  # asked once: a single endpoint
    finally:
        await sink.close()
    r = aioredis.Redis.from_url(redis_url)
    try:
        assert len(await r.xrange("plain:alerts")) == 1
    finally:
        await r.aclose()
