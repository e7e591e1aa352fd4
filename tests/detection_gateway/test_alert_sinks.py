"""Each alert sink against a real destination, and the dispatcher's dedup / rate limit / delivery rules."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import stat
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from gateway.alerts.dispatcher import AlertDispatcher
from gateway.alerts.model import Alert
from gateway.alerts.sinks import JsonlSink, RedisStreamSink, SinkError, WebhookSink, build_sinks
from gateway.config import AlertsConfig, AlertSinkConfig, ConfigError, StoreConfig
from gateway.store.factory import open_store
from gateway.telemetry.metrics import Metrics
from tests.conftest import RedisProcess

from .conftest import WebhookReceiver


def make_alert(client: str = "c1", tier_index: int = 2, detectors: tuple[str, ...] = ("template",)) -> Alert:
    return Alert(
        id=Alert.new_id(), ts=1_700_000_000.0, client=client, tenant="acme",
        tier={1: "watch", 2: "throttle", 3: "block"}[tier_index], tier_index=tier_index, previous_tier="normal",
        score=0.9, reasons=("212 of the last 250 prompts fill 3 templates",), detectors=detectors,
        request_ids=("req-1",), examples=("Summarise order 12345 for bob@example.com",),
    )


def counter(metrics: Metrics, sink: str, outcome: str) -> float:
    v = metrics.registry.get_sample_value("ipgate_alerts_total", {"sink": sink, "outcome": outcome})
    return v or 0.0


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# --- sinks, one attempt each ----------------------------------------------------------------------------


async def test_jsonl_sink_appends_lines_0600(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "alerts.jsonl"
    sink = JsonlSink(AlertSinkConfig(kind="jsonl", path=str(path)))
    a, b = make_alert("c1"), make_alert("c2")
    await sink.emit(a, a.to_json())
    await sink.emit(b, b.to_json())
    await sink.close()
    lines = path.read_text().splitlines()
    assert [json.loads(x)["client"] for x in lines] == ["c1", "c2"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # reopening appends, never truncates
    sink2 = JsonlSink(AlertSinkConfig(kind="jsonl", path=str(path)))
    await sink2.emit(a, a.to_json())
    await sink2.close()
    assert len(path.read_text().splitlines()) == 3


async def test_jsonl_sink_follows_log_rotation(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    sink = JsonlSink(AlertSinkConfig(kind="jsonl", path=str(path)))
    a, b, c = make_alert("c1"), make_alert("c2"), make_alert("c3")
    await sink.emit(a, a.to_json())
    path.rename(tmp_path / "alerts.jsonl.1")  # logrotate's default "create" mode
    await sink.emit(b, b.to_json())
    path.unlink()  # or someone deletes it
    await sink.emit(c, c.to_json())
    await sink.close()
    assert [json.loads(x)["client"] for x in (tmp_path / "alerts.jsonl.1").read_text().splitlines()] == ["c1"]
    assert [json.loads(x)["client"] for x in path.read_text().splitlines()] == ["c3"]


async def test_redis_stream_sink_xadd_with_maxlen(redis_url: str) -> None:
    sink = RedisStreamSink(AlertSinkConfig(kind="redis_stream", stream="t:alerts", max_len=5), redis_url)
    for i in range(300):
        a = make_alert(f"c{i}")
        await sink.emit(a, a.to_json())
    await sink.close()
    r = aioredis.Redis.from_url(redis_url)
    try:
        n = await r.xlen("t:alerts")
        # MAXLEN ~ trims whole macro-nodes only: bounded, but not exactly 5
        assert 5 <= n < 300
        last = await r.xrevrange("t:alerts", count=1)
        fields = last[0][1]
        assert fields[b"client"] == b"c299" and fields[b"tier"] == b"throttle"
        assert json.loads(fields[b"alert"])["client"] == "c299"
    finally:
        await r.aclose()


async def test_redis_stream_sink_unreachable_raises_sink_error() -> None:
    sink = RedisStreamSink(AlertSinkConfig(kind="redis_stream", timeout_s=0.2), "redis://127.0.0.1:1/0")
    a = make_alert()
    with pytest.raises(SinkError, match="redis stream"):
        await sink.emit(a, a.to_json())
    await sink.close()


async def test_webhook_sink_signs(webhook: WebhookReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_SECRET", "s3cret")
    sink = WebhookSink(AlertSinkConfig(kind="webhook", url=webhook.url, secret_env="HOOK_SECRET"))
    a = make_alert()
    await sink.emit(a, a.to_json())
    await sink.close()
    h = webhook.headers[0]
    expected = hmac.new(b"s3cret", f"{h['X-Ipgate-Timestamp']}.".encode() + webhook.raw[0], hashlib.sha256)
    assert h["X-Ipgate-Signature"] == "sha256=" + expected.hexdigest()
    assert h["X-Ipgate-Alert-Id"] == a.id


def test_webhook_secret_env_unset_fails_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE_SECRET", raising=False)
    with pytest.raises(ConfigError, match="NOPE_SECRET"):
        WebhookSink(AlertSinkConfig(kind="webhook", url="http://127.0.0.1:9/x", secret_env="NOPE_SECRET"))


def test_sink_names_must_be_unique(tmp_path: Path) -> None:
    c = AlertSinkConfig(kind="jsonl", path=str(tmp_path / "a"))
    with pytest.raises(ConfigError, match="unique"):
        build_sinks([c, c], default_redis_url="redis://x")


# --- the dispatcher -------------------------------------------------------------------------------------


async def test_webhook_retries_with_backoff_then_delivers(webhook: WebhookReceiver, tmp_path: Path) -> None:
    webhook.fail_first = 2
    metrics = Metrics(CollectorRegistry())
    sinks = build_sinks(
        [AlertSinkConfig(kind="webhook", url=webhook.url, backoff_base_s=0.02, max_retries=3),
         AlertSinkConfig(kind="jsonl", path=str(tmp_path / "a.jsonl"))],
        default_redis_url="redis://unused",
    )
    d = AlertDispatcher(AlertsConfig(), sinks, metrics=metrics)
    await d.start()
    a = make_alert()
    assert await d.submit(a)
    assert await d.flush(5.0)
    assert webhook.attempts == 3
    assert [r["id"] for r in webhook.received] == [a.id]
    assert webhook.received[0]["evidence"]["examples"] == ["Summarise order ##### for <email>"]
    assert counter(metrics, "webhook", "retried") == 2
    assert counter(metrics, "webhook", "delivered") == 1
    assert counter(metrics, "jsonl", "delivered") == 1
    await d.close()


async def test_webhook_gives_up_after_max_retries_and_logs_once(
    webhook: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    webhook.fail_first = 100
    metrics = Metrics(CollectorRegistry())
    sinks = build_sinks([AlertSinkConfig(kind="webhook", url=webhook.url, backoff_base_s=0.001, max_retries=1)],
                        default_redis_url="redis://unused")
    d = AlertDispatcher(AlertsConfig(min_interval_s=0, dedup_window_s=0), sinks, metrics=metrics)
    await d.start()
    with caplog.at_level("WARNING", logger="gateway.alerts.dispatcher"):
        for i in range(3):
            assert await d.submit(make_alert(f"c{i}"))
        assert await d.flush(5.0)
    assert webhook.attempts == 6
    assert counter(metrics, "webhook", "failed") == 3
    assert sum("delivery failed" in r.message for r in caplog.records) == 1
    webhook.fail_first = 0
    with caplog.at_level("INFO", logger="gateway.alerts.dispatcher"):
        assert await d.submit(make_alert("c9"))
        assert await d.flush(5.0)
    assert any("delivering again" in r.message for r in caplog.records)
    await d.close()


async def test_webhook_4xx_is_not_retried(webhook: WebhookReceiver) -> None:
    webhook.fail_first, webhook.fail_status = 1, 400
    sinks = build_sinks([AlertSinkConfig(kind="webhook", url=webhook.url, backoff_base_s=0.001)],
                        default_redis_url="redis://unused")
    d = AlertDispatcher(AlertsConfig(), sinks)
    await d.start()
    await d.submit(make_alert())
    await d.flush(5.0)
    assert webhook.attempts == 1
    assert d.stats()["webhook"] == {"failed": 1}
    await d.close()


async def test_dedup_and_per_client_rate_limit(tmp_path: Path) -> None:
    clock = FakeClock()
    metrics = Metrics(CollectorRegistry())
    sinks = build_sinks([AlertSinkConfig(kind="jsonl", path=str(tmp_path / "a.jsonl"))], default_redis_url="r")
    d = AlertDispatcher(AlertsConfig(min_interval_s=300, dedup_window_s=3600), sinks, metrics=metrics, clock=clock)
    assert await d.submit(make_alert("c1", 2))
    clock.t += 10
    assert not await d.submit(make_alert("c1", 2))  # same client, tier, detectors: duplicate
    assert not await d.submit(make_alert("c1", 2, ("logit_probe",)))  # new reasons, same tier: rate limited
    assert await d.submit(make_alert("c2", 2))  # another client is independent
    assert await d.submit(make_alert("c1", 3))  # escalation always goes out
    assert not await d.submit(make_alert("c1", 1, ("volume",)))  # lower tier within the interval
    clock.t += 301
    assert await d.submit(make_alert("c1", 2, ("logit_probe",)))  # interval passed, new detector set
    assert not await d.submit(make_alert("c1", 3))  # escalation, but the same block alert is a duplicate
    clock.t += 3600
    assert await d.submit(make_alert("c1", 3))  # the dedup window has passed too
    assert counter(metrics, "all", "deduplicated") == 2
    assert counter(metrics, "all", "rate_limited") == 2
    await d.start()
    await d.close()
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    assert len(lines) == 5


async def test_slow_sink_never_blocks_submit_and_overflow_is_counted(webhook: WebhookReceiver) -> None:
    webhook.fail_first = 10_000
    metrics = Metrics(CollectorRegistry())
    sinks = build_sinks(
        [AlertSinkConfig(kind="webhook", url=webhook.url, queue_size=2, backoff_base_s=5, max_retries=5)],
        default_redis_url="r",
    )
    d = AlertDispatcher(AlertsConfig(min_interval_s=0, dedup_window_s=0), sinks, metrics=metrics)
    await d.start()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for i in range(5):
        await d.submit(make_alert(f"c{i}"))
    assert loop.time() - t0 < 0.5
    await asyncio.sleep(0.05)  # the worker takes one and sleeps in back-off
    assert counter(metrics, "webhook", "dropped") >= 2
    await d.close(timeout_s=0.1)  # bounded: does not wait out the back-off
    assert loop.time() - t0 < 2.0
    assert counter(metrics, "webhook", "dropped") + counter(metrics, "webhook", "failed") == 5


async def test_concurrent_submits_of_one_alert_send_it_once(redis_url: str, tmp_path: Path) -> None:
    """Two accounting tasks raising the same alert at once (two requests of one client in flight) must not
    both get through while the first waits on the shared lease in the store."""
    store = await open_store(StoreConfig(kind="redis", url=redis_url), None)
    sinks = build_sinks([AlertSinkConfig(kind="jsonl", path=str(tmp_path / "a.jsonl"))], default_redis_url="")
    d = AlertDispatcher(AlertsConfig(), sinks, store=store)
    await d.start()
    results = await asyncio.gather(*(d.submit(make_alert("c1", 3)) for _ in range(5)))
    assert sorted(results) == [False, False, False, False, True]
    other = AlertDispatcher(AlertsConfig(), [], store=store)  # a second replica
    assert not await other.submit(make_alert("c1", 3, ("logit_probe",)))  # the lease is held by the first
    assert await other.submit(make_alert("c2", 3))
    await d.close()
    await other.close()
    await store.close()
    assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 1


async def test_redis_outage_loses_no_alert_silently(
    redis_process: RedisProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With Redis gone the resilient store refuses leases and swallows writes; the dispatcher must treat that
    as "cannot tell" (the alert still reaches the other sinks) and count the shared list as failed."""
    metrics = Metrics(CollectorRegistry())
    store = await open_store(StoreConfig(kind="redis", url=redis_process.url, failure_mode="local",
                                         timeout_ms=50, health_interval_s=0.05), metrics)
    sinks = build_sinks([AlertSinkConfig(kind="jsonl", path=str(tmp_path / "a.jsonl"))], default_redis_url="")
    d = AlertDispatcher(AlertsConfig(), sinks, store=store, metrics=metrics)
    await d.start()
    assert await d.submit(make_alert("c1"))
    assert await d.flush(5.0)
    redis_process.kill()
    with caplog.at_level("WARNING", logger="gateway.alerts.dispatcher"):
        assert await d.submit(make_alert("c2"))
        assert await d.submit(make_alert("c3"))
        assert await d.flush(10.0)
    assert [json.loads(x)["client"] for x in (tmp_path / "a.jsonl").read_text().splitlines()] == ["c1", "c2", "c3"]
    assert d.stats()["store"] == {"delivered": 1, "retried": 4, "failed": 2}
    assert counter(metrics, "store", "failed") == 2
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("deciding locally" in m for m in msgs) == 1
    assert sum("alert sink store: delivery failed" in m for m in msgs) == 1
    await d.close()
    await store.close()
