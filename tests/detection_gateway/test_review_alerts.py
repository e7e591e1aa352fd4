"""Adversarial review of the alert path: every sink against a real destination (real aiohttp receivers,
the real redis-server fixture, real files), the receiver-side signature check written from the docs."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from email.utils import formatdate
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.alerts.dispatcher import _MAX_TRACKED_CLIENTS, AlertDispatcher
from gateway.alerts.model import Alert
from gateway.alerts.sinks import build_sinks
from gateway.config import AlertsConfig, AlertSinkConfig
from gateway.telemetry.metrics import Metrics
from tests.support.harness import app_backend


def make_alert(client: str = "c1", tier_index: int = 2, examples: tuple[str, ...] = ("order 12345",),
               reasons: tuple[str, ...] = ("212 of the last 250 prompts fill 3 templates",)) -> Alert:
    return Alert(
        id=Alert.new_id(), ts=1_700_000_000.0, client=client, tenant="acme",
        tier={1: "watch", 2: "throttle", 3: "block"}[tier_index], tier_index=tier_index, previous_tier="normal",
        score=0.9, reasons=reasons, detectors=("template",), request_ids=("req-1",), examples=examples,
    )


def counter(metrics: Metrics, sink: str, outcome: str) -> float:
    return metrics.registry.get_sample_value("ipgate_alerts_total", {"sink": sink, "outcome": outcome}) or 0.0


class Receiver:
    """A real loopback HTTP server; ``script`` is a list of (status, headers) answered in turn (then 204)."""

    def __init__(self) -> None:
        self.url = ""
        self.script: list[tuple[int, dict[str, str]]] = []
        self.posts: list[tuple[float, dict[str, str], bytes]] = []
        self.gets = 0

    async def post(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.posts.append((time.monotonic(), dict(request.headers), body))
        if self.script:
            status, headers = self.script.pop(0)
            if 300 <= status < 400:
                raise web.HTTPFound(location="/elsewhere")
            return web.Response(status=status, headers=headers)
        return web.Response(status=204)

    async def get(self, request: web.Request) -> web.Response:
        self.gets += 1
        return web.Response(status=200, text="welcome")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    recv = Receiver()
    app = web.Application()
    app.router.add_post("/hook", recv.post)
    app.router.add_get("/elsewhere", recv.get)
    app.router.add_post("/elsewhere", recv.post)
    async with app_backend(app) as url:
        recv.url = url + "/hook"
        yield recv


# --- the receiver's side of the signature, exactly as docs/detection-gateway.md writes it ---------------


def verify(secret: bytes, headers: dict[str, str], body: bytes, max_age_s: int = 300) -> bool:
    ts = headers["X-Ipgate-Timestamp"]
    if abs(time.time() - int(ts)) > max_age_s:
        return False
    mac = hmac.new(secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers["X-Ipgate-Signature"], "sha256=" + mac)


async def test_signature_verifies_with_the_documented_recipe(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REVIEW_HOOK_SECRET", "s3cret-\u00e9")
    sinks = build_sinks([AlertSinkConfig(kind="webhook", url=receiver.url, secret_env="REVIEW_HOOK_SECRET")],
                        default_redis_url="r")
    d = AlertDispatcher(AlertsConfig(), sinks)
    await d.start()
    assert await d.submit(make_alert(examples=("caf\u00e9 \u2603 order 12",)))
    assert await d.flush(5.0)
    await d.close()
    (_, headers, body), = receiver.posts
    assert verify("s3cret-\u00e9".encode(), headers, body)
    assert not verify(b"other", headers, body)
    assert not verify("s3cret-\u00e9".encode(), headers, body + b" ")
    doc = json.loads(body)
    assert set(doc) >= {"schema", "id", "client", "tenant", "tier", "score", "reasons", "evidence"}
    assert doc["evidence"]["redacted"] is True and doc["evidence"]["examples"] == ["caf\u00e9 \u2603 order ##"]


# --- defects ------------------------------------------------------------------------------------------------


async def test_lone_surrogate_in_a_prompt_cannot_make_an_alert_undeliverable(
    receiver: Receiver, redis_url: str, tmp_path: Path
) -> None:
    """A JSON request body may carry "\\ud800" (a lone surrogate; json.loads accepts it) and the prompt lands
    in the alert's examples. Encoding it as UTF-8 raised in every sink, so an attacker could make every alert
    about themselves fail delivery by putting one escape in their prompts."""
    metrics = Metrics(CollectorRegistry())
    stream = "review:surrogate"
    sinks = build_sinks(
        [AlertSinkConfig(kind="jsonl", path=str(tmp_path / "a.jsonl"), backoff_base_s=0.001, max_retries=1),
         AlertSinkConfig(kind="webhook", url=receiver.url, backoff_base_s=0.001, max_retries=1, redact=False),
         AlertSinkConfig(kind="redis_stream", stream=stream, url=redis_url, backoff_base_s=0.001, max_retries=1)],
        default_redis_url=redis_url,
    )
    d = AlertDispatcher(AlertsConfig(), sinks, metrics=metrics)
    await d.start()
    assert await d.submit(make_alert(examples=("extract \ud800 this",), reasons=("odd \udfff reason",)))
    assert await d.flush(5.0)
    await d.close()
    for sink in ("jsonl", "webhook", "redis_stream"):
        assert counter(metrics, sink, "delivered") == 1, sink
        assert counter(metrics, sink, "failed") == 0, sink
    line = json.loads((tmp_path / "a.jsonl").read_text())
    assert line["evidence"]["examples"] == ["extract \ufffd this"]
    assert json.loads(receiver.posts[0][2])["reasons"] == ["odd \ufffd reason"]
    r = aioredis.Redis.from_url(redis_url)
    try:
        entries = await r.xrange(stream)
        assert entries is not None and len(entries) == 1
        fields = entries[0][1]
        assert fields is not None and json.loads(fields[b"alert"])["client"] == "c1"
        await r.delete(stream)
    finally:
        await r.aclose()


async def test_retry_after_http_date_is_honoured_and_bounded(receiver: Receiver) -> None:
    """RFC 9110 allows Retry-After as an HTTP-date; it was ignored (our own 10 ms back-off hammered a server
    that asked for seconds). Huge and negative values stay bounded by backoff_max_s / fall back."""
    receiver.script = [
        (503, {"Retry-After": formatdate(time.time() + 2.5, usegmt=True)}),  # ~2 s (1 s resolution)
        (429, {"Retry-After": "99999999999"}),  # huge: capped at backoff_max_s
        (503, {"Retry-After": "-5"}),  # negative: our own back-off
        (503, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}),  # in the past: our own back-off
    ]
    metrics = Metrics(CollectorRegistry())
    sinks = build_sinks([AlertSinkConfig(kind="webhook", url=receiver.url, backoff_base_s=0.01,
                                         backoff_max_s=3.0, max_retries=4)], default_redis_url="r")
    d = AlertDispatcher(AlertsConfig(), sinks, metrics=metrics)
    await d.start()
    t0 = time.monotonic()
    assert await d.submit(make_alert())
    assert await d.flush(15.0)
    await d.close()
    times = [t for t, _, _ in receiver.posts]
    assert len(times) == 5 and counter(metrics, "webhook", "delivered") == 1
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] >= 1.0, gaps  # the date was honoured
    assert 2.9 <= gaps[1] <= 3.5, gaps  # capped at backoff_max_s
    assert gaps[2] < 0.5 and gaps[3] < 0.5, gaps
    assert time.monotonic() - t0 < 10.0
    assert len({h["X-Ipgate-Alert-Id"] for _, h, _ in receiver.posts}) == 1  # the idempotency key is kept


async def test_a_redirect_is_not_counted_as_delivered(receiver: Receiver) -> None:
    """aiohttp follows a 302 for a POST as a GET: the receiver's GET page answered 200 and the alert was
    counted `delivered` although no one received it (e.g. an http:// URL redirected to https://)."""
    receiver.script = [(302, {})]
    metrics = Metrics(CollectorRegistry())
    sinks = build_sinks([AlertSinkConfig(kind="webhook", url=receiver.url, backoff_base_s=0.001)],
                        default_redis_url="r")
    d = AlertDispatcher(AlertsConfig(), sinks, metrics=metrics)
    await d.start()
    assert await d.submit(make_alert())
    assert await d.flush(5.0)
    await d.close()
    assert counter(metrics, "webhook", "delivered") == 0
    assert counter(metrics, "webhook", "failed") == 1
    assert receiver.gets == 0 and len(receiver.posts) == 1


# --- probes that passed -------------------------------------------------------------------------------------


async def test_many_clients_keep_the_dispatcher_memory_bounded(tmp_path: Path) -> None:
    d = AlertDispatcher(AlertsConfig(), [])
    n = _MAX_TRACKED_CLIENTS + 2_000
    for i in range(n):
        assert await d.submit(make_alert(f"c{i}"))
    assert len(d._seen) == _MAX_TRACKED_CLIENTS and len(d._last) == _MAX_TRACKED_CLIENTS
    assert not await d.submit(make_alert(f"c{n - 1}"))  # the newest are still remembered
    await d.close()


@contextlib.asynccontextmanager
async def hanging_webhook() -> AsyncIterator[tuple[str, asyncio.Event]]:
    """A webhook receiver that holds every POST until the event is set (it is set on the way out)."""
    hang = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await hang.wait()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", slow)
    async with app_backend(app) as url:
        try:
            yield url + "/hook", hang
        finally:
            hang.set()


async def test_shutdown_flush_is_bounded_with_a_hanging_webhook() -> None:
    async with hanging_webhook() as (url, _):
        metrics = Metrics(CollectorRegistry())
        sinks = build_sinks([AlertSinkConfig(kind="webhook", url=url, timeout_s=30)],
                            default_redis_url="r")
        d = AlertDispatcher(AlertsConfig(min_interval_s=0, dedup_window_s=0), sinks, metrics=metrics)
        await d.start()
        for i in range(3):
            assert await d.submit(make_alert(f"c{i}"))
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        await d.close(timeout_s=0.3)
        assert time.monotonic() - t0 < 1.5
        assert counter(metrics, "webhook", "dropped") == 3


_WRITER = """
import asyncio, sys
from gateway.alerts.dispatcher import AlertDispatcher
from gateway.alerts.model import Alert
from gateway.alerts.sinks import build_sinks
from gateway.config import AlertsConfig, AlertSinkConfig

path, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])

async def go():
    sinks = build_sinks([AlertSinkConfig(kind="jsonl", path=path)], default_redis_url="r")
    d = AlertDispatcher(AlertsConfig(min_interval_s=0, dedup_window_s=0), sinks)
    await d.start()
    for i in range(n):  # each line far larger than any stdio buffer
        await d.submit(Alert(id=Alert.new_id(), ts=0.0, client=f"{tag}{i}", tenant=None, tier="block",
                             tier_index=3, previous_tier="normal", score=1.0, reasons=("r",),
                             examples=(tag * 150,) * 200))
    assert await d.flush(20.0)
    await d.close()

asyncio.run(go())
"""


def test_jsonl_lines_from_two_processes_never_interleave(tmp_path: Path) -> None:
    path = str(tmp_path / "a.jsonl")
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, path, tag, "40"]) for tag in ("x", "y")]
    for p in procs:
        assert p.wait(60) == 0
    docs = [json.loads(line) for line in Path(path).read_text().splitlines()]
    assert sorted(doc["client"] for doc in docs) == sorted(f"{t}{i}" for t in "xy" for i in range(40))


async def test_full_disk_is_counted_not_fatal(tmp_path: Path) -> None:
    metrics = Metrics(CollectorRegistry())
    sinks = build_sinks([AlertSinkConfig(kind="jsonl", path="/dev/full", backoff_base_s=0.001, max_retries=1),
                         AlertSinkConfig(kind="jsonl", name="ok", path=str(tmp_path / "a.jsonl"))],
                        default_redis_url="r")
    d = AlertDispatcher(AlertsConfig(min_interval_s=0, dedup_window_s=0), sinks, metrics=metrics)
    await d.start()
    for i in range(3):
        assert await d.submit(make_alert(f"c{i}"))
    assert await d.flush(5.0)
    await d.close()
    assert counter(metrics, "jsonl", "failed") == 3
    assert counter(metrics, "ok", "delivered") == 3


async def test_redis_stream_is_trimmed_and_recovers_after_an_outage(redis_process: object, tmp_path: Path) -> None:
    from tests.conftest import RedisProcess

    assert isinstance(redis_process, RedisProcess)
    metrics = Metrics(CollectorRegistry())
    sinks = build_sinks([AlertSinkConfig(kind="redis_stream", stream="s", max_len=10, timeout_s=0.5,
                                         backoff_base_s=0.001, max_retries=0)],
                        default_redis_url=redis_process.url)
    d = AlertDispatcher(AlertsConfig(min_interval_s=0, dedup_window_s=0), sinks, metrics=metrics)
    await d.start()
    for i in range(400):
        assert await d.submit(make_alert(f"c{i}"))
    assert await d.flush(10.0)
    r = aioredis.Redis.from_url(redis_process.url)
    assert 10 <= await r.xlen("s") <= 110  # MAXLEN ~: whole macro nodes (100 entries) are trimmed
    await r.aclose()
    redis_process.kill()
    assert await d.submit(make_alert("down"))
    assert await d.flush(5.0)
    assert counter(metrics, "redis_stream", "failed") == 1
    redis_process.restart()
    assert await d.submit(make_alert("back"))
    assert await d.flush(5.0)
    assert counter(metrics, "redis_stream", "delivered") == 401
    await d.close()


async def test_overflow_is_counted_per_alert_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    async with hanging_webhook() as (url, hang):
        metrics = Metrics(CollectorRegistry())
        sinks = build_sinks([AlertSinkConfig(kind="webhook", url=url, queue_size=2)],
                            default_redis_url="r")
        d = AlertDispatcher(AlertsConfig(), sinks, metrics=metrics)
        await d.start()
        with caplog.at_level("WARNING", logger="gateway.alerts.dispatcher"):
            assert await d.submit(make_alert("c0"))
            await asyncio.sleep(0.05)  # the worker holds c0 in flight; two more fill the queue
            for i in range(1, 50):
                assert await d.submit(make_alert(f"c{i}"))  # accepted for the other sinks; this one drops
        assert counter(metrics, "webhook", "dropped") == 47
        assert sum("queue full" in r.getMessage() for r in caplog.records) == 1
        hang.set()
        assert await d.flush(5.0)
        await d.close()


async def test_jsonl_file_deleted_by_rotation_is_recreated(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    sinks = build_sinks([AlertSinkConfig(kind="jsonl", path=str(path))], default_redis_url="r")
    d = AlertDispatcher(AlertsConfig(min_interval_s=0, dedup_window_s=0), sinks)
    await d.start()
    assert await d.submit(make_alert("before"))
    assert await d.flush(5.0)
    path.unlink()
    assert await d.submit(make_alert("after"))
    assert await d.flush(5.0)
    await d.close()
    assert [json.loads(x)["client"] for x in path.read_text().splitlines()] == ["after"]
    assert path.stat().st_mode & 0o777 == 0o600


async def test_a_short_write_never_merges_the_retried_alert_into_its_fragment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk cuts a line short; the retry must still be a whole, parseable line of its own (the
    fragment stays a line readers skip). The short write is simulated at the OS boundary (os.write)."""
    import gateway.alerts.sinks.jsonl as jsonl_mod
    from gateway.alerts.sinks import JsonlSink, SinkError

    path = tmp_path / "alerts.jsonl"
    sink = JsonlSink(AlertSinkConfig(kind="jsonl", path=str(path)))
    real_write = jsonl_mod.os.write
    calls = {"n": 0}

    def short_once(fd: int, data: bytes) -> int:
        calls["n"] += 1
        return real_write(fd, data[: len(data) // 2]) if calls["n"] == 1 else real_write(fd, data)

    monkeypatch.setattr(jsonl_mod.os, "write", short_once)
    alert = make_alert()
    payload = alert.to_json()
    with pytest.raises(SinkError, match="short write"):
        await sink.emit(alert, payload)
    await sink.emit(alert, payload)  # the dispatcher's retry
    await sink.emit(make_alert("c2"), make_alert("c2").to_json())
    await sink.close()
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and len(lines) == 4  # fragment, retried alert, next alert
    parsed = []
    for line in lines[:-1]:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            parsed.append(None)
    assert parsed[0] is None and parsed[1]["client"] == "c1" and parsed[2]["client"] == "c2"
