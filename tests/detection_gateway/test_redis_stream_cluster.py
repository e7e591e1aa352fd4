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
