"""The Redis stream sink writes one entry per alert however often the alert is retried: an XADD that ran but
whose reply came after the sink's timeout used to be added again by the retry (a slow Redis wrote one alert up
to 1 + max_retries times). Real redis-server; a real TCP relay in front of it holds replies back."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis

from gateway.alerts.sinks import RedisStreamSink, SinkError
from gateway.config import AlertSinkConfig

from .test_alert_sinks import make_alert


class _LateReplies:
    """A TCP relay to Redis that delivers commands at once and holds replies back while ``late`` is set."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.late = True
        self.server: asyncio.Server | None = None

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, replies: bool) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await r.read(65536):
                if replies and self.late:
                    await asyncio.sleep(0.5)
                w.write(data)
                await w.drain()
        w.close()

    async def _serve(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        rr, rw = await asyncio.open_connection(*self.target)
        await asyncio.gather(self._pipe(cr, rw, False), self._pipe(rr, cw, True))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        try:
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            self.server.close()


async def test_a_retry_after_a_late_reply_adds_no_second_entry(redis_url: str) -> None:
    u = urlsplit(redis_url)
    relay = _LateReplies((u.hostname or "127.0.0.1", u.port or 6379))
    async with relay.running() as url:
        sink = RedisStreamSink(AlertSinkConfig(kind="redis_stream", stream="once:alerts", timeout_s=0.2), url)
        alert = make_alert("c1")
        with pytest.raises(SinkError):
            await sink.emit(alert, alert.to_json())  # ran in Redis; the reply came too late
        relay.late = False
        await sink.emit(alert, alert.to_json())  # the dispatcher's retry of the same alert
        other = make_alert("c2")
        await sink.emit(other, other.to_json())
        await sink.close()
    r = aioredis.Redis.from_url(redis_url)
    try:
        entries = await r.xrange("once:alerts")
        assert [json.loads(f[b"alert"])["client"] for _, f in entries] == ["c1", "c2"]
        assert [f[b"id"].decode() for _, f in entries] == [alert.id, other.id]
        assert 0 < await r.pttl(f"{{once:alerts}}:seen:{alert.id}") <= 86_400_000  # the marker expires
    finally:
        await r.aclose()


@pytest.mark.parametrize("grants", [("+xadd", "+ping"), ("+xadd", "+ping", "+eval")],
                         ids=["no-eval", "eval-but-no-set"])
async def test_a_user_without_scripting_still_gets_alerts_and_is_told(
        redis_url: str, caplog: pytest.LogCaptureFixture, grants: tuple[str, ...]) -> None:
    r = aioredis.Redis.from_url(redis_url)
    await r.execute_command("ACL", "SETUSER", "alerts", "reset", "on", ">pw", "~*", *grants)
    u = urlsplit(redis_url)
    sink = RedisStreamSink(AlertSinkConfig(kind="redis_stream", stream="acl:alerts"),
                           f"redis://alerts:pw@{u.hostname}:{u.port}/0")
    try:
        with caplog.at_level("WARNING", logger="gateway.alerts.sinks"):
            for client in ("c1", "c2"):
                a = make_alert(client)
                await sink.emit(a, a.to_json())
        assert await r.xlen("acl:alerts") == 2
        assert sum("may not run scripts" in rec.getMessage() for rec in caplog.records) == 1
        assert "pw" not in caplog.text
    finally:
        await sink.close()
        await r.execute_command("ACL", "DELUSER", "alerts")
        await r.delete("acl:alerts")
        await r.aclose()


@pytest.mark.parametrize("stream", ["ipgate:alerts", "alerts:{fleet}:eu", "odd}name"])
async def test_the_marker_shares_the_streams_slot_on_a_redis_cluster(redis_cluster: Any, stream: str) -> None:
    """Defect: the script names the stream and the alert's marker key, which hashed to another slot: a Redis
    Cluster refuses such a script (CROSSSLOT) on whichever node it runs, even the one serving the stream (and a
    one-shard cluster, where the plain XADD used to work), so every alert on the sink failed. The marker now
    lives in the stream's slot (its hash tag, or the stream's name as one)."""
    from redis.crc import key_slot

    redis_cluster.flush()
    node = redis_cluster.nodes[redis_cluster.node_of_slot(key_slot(stream.encode()))]
    sink = RedisStreamSink(AlertSinkConfig(kind="redis_stream", stream=stream), node.url)
    try:
        alert = make_alert("c1")
        await sink.emit(alert, alert.to_json())  # before the fix: SinkError ... CROSSSLOT
        await sink.emit(alert, alert.to_json())  # a retry: still one entry
        other = make_alert("c2")
        await sink.emit(other, other.to_json())
    finally:
        await sink.close()
    r = aioredis.Redis.from_url(node.url)
    try:
        entries = await r.xrange(stream)
        assert [f[b"id"].decode() for _, f in entries] == [alert.id, other.id]
    finally:
        await r.aclose()
