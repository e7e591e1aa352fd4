"""Review session 15 (detection in the gateway): each test reproduces a defect the review found (see
/work/team/docs/review-session15-detection-gateway.md). Real parts: the real engine and memory store, real
files, real aiohttp receivers."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from detectors.engine import Engine
from gateway.alerts.dispatcher import AlertDispatcher
from gateway.alerts.sinks import build_sinks
from gateway.config import AlertsConfig, AlertSinkConfig, StoreConfig
from gateway.detection import GatewayDetection
from gateway.hooks import ResponseFacts
from gateway.policy import Policy
from gateway.principal import Principal
from gateway.store.base import AdmitRequest, StateStore
from gateway.store.factory import open_store
from gateway.store.memory import MemoryStore
from gateway.telemetry.metrics import Metrics
from tests.detection_gateway.test_detection import CHAT, PARAMS, gateway_config, probe
from tests.detection_gateway.test_review_session14 import counter, make_alert
from tests.support.harness import app_backend

FACTS = ResponseFacts(status=200, prompt_tokens=9, completion_tokens=1)


# --- 1. a tier that rose while two replicas' evidence was merged raised no alert -------------------------------


async def _replicas(tmp_path: Path, store: StateStore, n: int = 2) -> tuple[list[GatewayDetection], Policy, Path]:
    cfg = gateway_config()
    policy = Policy.from_config(cfg)
    path = tmp_path / "alerts.jsonl"
    dets = []
    for i in range(n):
        metrics = Metrics(CollectorRegistry())
        sinks = build_sinks([AlertSinkConfig(kind="jsonl", path=str(path), name=f"r{i}")], default_redis_url="")
        alerts = AlertDispatcher(cfg.alerts, sinks, store=store, metrics=metrics)
        await alerts.start()
        dets.append(GatewayDetection(Engine.from_params(PARAMS), policy, cfg.detection, metrics=metrics,
                                     alerts=alerts))
    return dets, policy, path


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[StateStore]:
    if request.param == "memory":
        yield MemoryStore()
        return
    s = await open_store(StoreConfig(kind="redis", url=request.getfixturevalue("redis_url")), None)
    try:
        yield s
    finally:
        await s.close()


async def test_a_tier_raised_by_merging_two_replicas_evidence_is_alerted(tmp_path: Path, store: StateStore
                                                                         ) -> None:
    """A prober whose overlapping requests a load balancer spreads over two replicas: each replica's working
    copy holds half of the evidence, and the tier rises only when the second save merges the first replica's
    state (``LiveStates._save``). No request's verdict ever showed that rise, and the next requests read the
    raised tier from the store: the client went normal -> throttle -> block with no alert at all."""
    dets, policy, path = await _replicas(tmp_path, store)
    p = Principal("att", tenant="acme")
    reached = set()
    for k in range(15):
        res = await store.hot_path(AdmitRequest("att", 10, policy.limits_by_tier))
        now = 1000.0 + 2 * k
        sa = dets[0].observe(p, CHAT, probe(2 * k), res.detector_state, res.tier, now, request_id=f"a{k}")
        sb = dets[1].observe(p, CHAT, probe(2 * k + 1), res.detector_state, res.tier, now + 0.5,
                             request_id=f"b{k}")
        await sa.account(store, FACTS)
        await sb.account(store, FACTS)
        rec = await store.get_client("att")
        assert rec is not None
        reached.add(rec.tier)
    assert dets[1].live.merges > 0
    assert {2, 3} <= reached
    for d in dets:
        assert d.alerts is not None
        await d.alerts.flush()
    alerts = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    assert [(a["previous_tier"], a["tier"]) for a in alerts] == [("normal", "throttle"), ("throttle", "block")]
    blk = alerts[-1]
    assert "logit_probing" in blk["detectors"] and blk["reasons"], blk  # the merged state's own reasons
    assert blk["score"] > 0.9
    for d in dets:
        assert d.alerts is not None
        await d.alerts.close()


async def test_a_merge_that_raises_nothing_new_raises_no_alert(tmp_path: Path, store: StateStore) -> None:
    """The other side of the fix: replica A alone raises the tier (and alerts); B's merge with it carries the
    tier A reported, which is no rise."""
    dets, policy, path = await _replicas(tmp_path, store)
    p = Principal("att", tenant="acme")
    for k in range(25):  # A alone: the prober reaches block, one alert per rise
        res = await store.hot_path(AdmitRequest("att", 10, policy.limits_by_tier))
        s = dets[0].observe(p, CHAT, probe(k), res.detector_state, res.tier, 1000.0 + k)
        await s.account(store, FACTS)
    res = await store.hot_path(AdmitRequest("att", 10, policy.limits_by_tier))
    assert res.tier == 3
    # B folds a request into a copy of an old state (None) and merges A's blocked state when it saves
    sb = dets[1].observe(p, CHAT, {"model": "sim", "messages": [{"role": "user", "content": "hi"}]}, None, 0, 1030.0)
    await sb.account(store, FACTS)
    assert dets[1].live.merges == 1
    for d in dets:
        assert d.alerts is not None
        await d.alerts.flush()
    alerts = [json.loads(x) for x in path.read_text().splitlines()]
    assert [a["tier"] for a in alerts] == ["throttle", "block"]
    for d in dets:
        assert d.alerts is not None
        await d.alerts.close()


# --- 2. an fsync that failed after the line was written duplicated the alert in the file ----------------------


async def test_a_failed_fsync_does_not_write_the_alert_twice(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The line was written (one write()), then fsync raised (EIO; on NFS, ENOSPC/EDQUOT show up at fsync): the
    attempt counted as failed and the retry appended the same alert again."""
    path = tmp_path / "alerts.jsonl"
    cfg = AlertSinkConfig(kind="jsonl", path=str(path), backoff_base_s=0.01, backoff_max_s=0.02)
    metrics = Metrics(CollectorRegistry())
    d = AlertDispatcher(AlertsConfig(sinks=[cfg]), build_sinks([cfg], default_redis_url=""), metrics=metrics)
    await d.start()
    real, calls = os.fsync, []

    def failing_once(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fsync", failing_once)
    with caplog.at_level(logging.WARNING, logger="gateway.alerts.sinks"):
        await d.submit(make_alert())
        assert await d.flush(3)
        deadline = time.monotonic() + 10
        while not [r for r in caplog.records if "fsync" in r.getMessage()]:  # the background fsync ran and failed
            assert time.monotonic() < deadline, "a failing fsync is logged"
            await asyncio.sleep(0.02)
    await d.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 1, lines
    assert counter(metrics, "jsonl", "delivered") == 1 and counter(metrics, "jsonl", "retried") == 0
    assert len(calls) >= 2, "the line stays unsynced after the failure: close syncs it again"


async def test_an_fsync_slower_than_the_attempt_does_not_write_the_alert_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An fsync that outlasts the attempt's timeout (a loaded disk, NFS): the dispatcher's timeout cancelled the
    attempt after the line was written, every retry appended it again (5 lines for one alert here), and the
    alert was finally counted ``failed`` ("alerts are being lost for this sink")."""
    path = tmp_path / "alerts.jsonl"
    cfg = AlertSinkConfig(kind="jsonl", path=str(path), timeout_s=0.2, backoff_base_s=0.2, backoff_max_s=0.4)
    metrics = Metrics(CollectorRegistry())
    d = AlertDispatcher(AlertsConfig(sinks=[cfg]), build_sinks([cfg], default_redis_url=""), metrics=metrics)
    await d.start()
    real = os.fsync

    def slow(fd: int) -> None:
        time.sleep(1.5)
        real(fd)

    monkeypatch.setattr(os, "fsync", slow)
    await d.submit(make_alert())
    assert await d.flush(10)
    await d.close()
    assert len(path.read_text().splitlines()) == 1
    assert counter(metrics, "jsonl", "delivered") == 1 and counter(metrics, "jsonl", "failed") == 0


async def test_a_burst_of_alerts_is_not_held_up_by_the_background_fsync(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard of the fix above: the fsync now runs beside the deliveries, and the next alert's write must
    neither wait for it nor fail as "busy" (retried)."""
    path = tmp_path / "alerts.jsonl"
    cfg = AlertSinkConfig(kind="jsonl", path=str(path))
    metrics = Metrics(CollectorRegistry())
    d = AlertDispatcher(AlertsConfig(sinks=[cfg], min_interval_s=0, dedup_window_s=0),
                        build_sinks([cfg], default_redis_url=""), metrics=metrics)
    await d.start()
    real = os.fsync

    def slow(fd: int) -> None:
        time.sleep(0.3)
        real(fd)

    monkeypatch.setattr(os, "fsync", slow)
    t0 = time.monotonic()
    for i in range(20):
        await d.submit(make_alert(f"c{i}"))
    assert await d.flush(10)
    assert time.monotonic() - t0 < 5.0, "20 writes serialised behind 0.3 s fsyncs would take 6 s"
    await d.close()
    assert len(path.read_text().splitlines()) == 20
    assert counter(metrics, "jsonl", "delivered") == 20 and counter(metrics, "jsonl", "retried") == 0


# --- 3. a sink retried "for ever" died after ~1 000 attempts ---------------------------------------------------


async def test_many_retries_never_kill_the_sinks_delivery_task(tmp_path: Path) -> None:
    """``max_retries`` has no upper bound (an operator may mean "keep trying"). At attempt 1 024 the back-off
    ``backoff_base_s * 2**attempt`` overflowed a float: OverflowError killed the sink's delivery task, so that
    sink delivered nothing any more (its queue filled, then every alert was dropped) until a restart."""
    target = tmp_path / "dir"
    target.mkdir()  # a directory: every write fails at once
    cfg = AlertSinkConfig(kind="jsonl", path=str(target), max_retries=1100, backoff_base_s=1e-300,
                          backoff_max_s=1e-4)
    metrics = Metrics(CollectorRegistry())
    d = AlertDispatcher(AlertsConfig(sinks=[cfg]), build_sinks([cfg], default_redis_url=""), metrics=metrics)
    await d.start()
    await d.submit(make_alert("c1"))
    deadline = asyncio.get_running_loop().time() + 20
    while counter(metrics, "jsonl", "failed") < 1:
        assert asyncio.get_running_loop().time() < deadline, d.stats()
        await asyncio.sleep(0.05)
    assert counter(metrics, "jsonl", "retried") == 1100
    task = d._lanes[0].task
    assert task is not None and not task.done(), "the sink's delivery task is still running"
    target.rmdir()  # the file system is writable again: the next alert is delivered
    await d.submit(make_alert("c2"))
    assert await d.flush(5)
    assert counter(metrics, "jsonl", "delivered") == 1
    await d.close()


# --- 4. a webhook that acknowledged (2xx) but sent its body late got the alert again, counted as failed --------


async def test_a_2xx_whose_body_is_slow_is_delivered_once() -> None:
    """The receiver answers 200 at once and sends its body late (a handler that acknowledges first, then works;
    a proxy that flushes the headers). Reading the body hit the sink's timeout: the alert the receiver had
    acknowledged was posted again on every retry and finally counted ``failed``, logged as "alerts are being
    lost for this sink"."""
    posts: list[bytes] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        posts.append(await request.read())
        resp = web.StreamResponse(status=200)
        resp.content_length = 100
        await resp.prepare(request)
        await asyncio.sleep(30)  # the body never comes in time (the server's shutdown cancels this)
        return resp

    app = web.Application()
    app.router.add_post("/hook", handle)
    async with app_backend(app) as url:
        cfg = AlertSinkConfig(kind="webhook", url=url + "/hook", timeout_s=1.0, max_retries=2, backoff_base_s=0.01,
                              backoff_max_s=0.02)
        metrics = Metrics(CollectorRegistry())
        d = AlertDispatcher(AlertsConfig(sinks=[cfg]), build_sinks([cfg], default_redis_url=""), metrics=metrics)
        await d.start()
        await d.submit(make_alert())
        assert await d.flush(10)
        await d.close()
    assert len(posts) == 1
    assert counter(metrics, "webhook", "delivered") == 1
    assert counter(metrics, "webhook", "failed") == counter(metrics, "webhook", "retried") == 0


# --- 5. a webhook URL no request can reach was found by the first alert only ------------------------------------


@pytest.mark.parametrize("url", [
    "https://hooks.example.com:70000/services/T0/B0/s3cretpath",
    "https://[::1/services/T0/B0/s3cretpath",
    "http:///services/T0/B0/s3cretpath",
    "https://hooks..example.com/services/T0/B0/s3cretpath",
    "https://hooks.example.com:0/services/T0/B0/s3cretpath",
])
def test_a_webhook_url_no_request_can_reach_is_refused_at_start(url: str) -> None:
    """As a bad ``redis_stream`` URL already is (session 14): ``build_sinks`` runs at start-up and in ``ipgate
    check``. Before, each of these started fine and every alert on the sink failed (InvalidUrlClientError, or a
    UnicodeError from the IDNA encoding of an empty label). The message never holds the path (a token)."""
    from gateway.config import ConfigError

    cfg = AlertSinkConfig(kind="webhook", url=url, name="siem")
    with pytest.raises(ConfigError, match=r"alerts\.sinks\.siem\.url: ") as e:
        build_sinks([cfg], default_redis_url="")
    assert "s3cretpath" not in str(e.value)


def test_usable_webhook_urls_still_start() -> None:
    for url in ("https://hooks.example.com/services/T0/B0/x", "http://127.0.0.1:8080/hook", "http://[::1]:9/h",
                "https://bücher.example/hook"):
        (sink,) = build_sinks([AlertSinkConfig(kind="webhook", url=url)], default_redis_url="")
        assert sink.name == "webhook"


# --- 6. a sink named "all" shared its metric label with the dispatcher's own outcomes ---------------------------


def test_a_sink_cannot_be_named_all(tmp_path: Path) -> None:
    """``alerts_total{sink="all"}`` counts what the dispatcher suppressed or dropped for every sink; a sink
    named ``all`` added its own ``dropped`` (and delivered, failed...) to the same series."""
    from gateway.config import ConfigError

    with pytest.raises(ConfigError, match="'all'"):
        build_sinks([AlertSinkConfig(kind="jsonl", path=str(tmp_path / "a"), name="all")], default_redis_url="")


# --- 7. a detector raising on the response was counted again each time a merge replayed that response ----------


async def test_a_merge_replaying_a_failed_response_step_does_not_count_it_again() -> None:
    """README: the gateway counts every occurrence of a detector's exception in
    ``ipgate_detector_errors_total{detector}``. A merge with another replica's save replays the copy's logged
    responses (``LiveStates._rebase``), and each replay raised again and was counted again: 2 requests on
    two replicas that overlapped counted 3 errors; a client merged 8 times in a row, 9 per response."""
    from detectors.registry import REGISTRY
    from tests.detection_gateway.test_concurrent_requests import ExplodingOnResponses

    cfg = gateway_config()
    policy = Policy.from_config(cfg)
    store = MemoryStore()
    dets, metrics = [], []
    for _ in range(2):
        m = Metrics(CollectorRegistry())
        eng = Engine(PARAMS, [REGISTRY["logit_probing"](), ExplodingOnResponses()],  # type: ignore[list-item]
                     {"logit_probing": 14.0, "exploding": 1.0}, PARAMS.tiers, 0.9)
        dets.append(GatewayDetection(eng, policy, cfg.detection, metrics=m))
        metrics.append(m)
    p = Principal("c", tenant="acme")
    body = {"model": "sim", "messages": [{"role": "user", "content": "What is the capital of France?"}]}
    res = await store.hot_path(AdmitRequest("c", 10, policy.limits_by_tier))
    sa = dets[0].observe(p, CHAT, body, res.detector_state, res.tier, 1000.0)
    sb = dets[1].observe(p, CHAT, body, res.detector_state, res.tier, 1000.5)
    await sa.account(store, FACTS)
    await sb.account(store, FACTS)  # B's save meets A's: B's request and response are replayed on A's state
    assert dets[1].live.merges == 1

    def errors(m: Metrics) -> float:
        return m.registry.get_sample_value("ipgate_detector_errors_total", {"detector": "exploding"}) or 0.0

    assert [errors(m) for m in metrics] == [1.0, 1.0]


async def test_a_refused_requests_accounting_failure_is_logged_and_counted(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A blocked client sends only refused requests: their detection accounting ran in a bare background task,
    so a failure there (a store error passed through) was neither logged by us nor counted."""
    import aiohttp

    from tests.support.harness import gateway_config, running_gateway, settled, sim_backend

    async with sim_backend() as sim, running_gateway(gateway_config(sim.url, detection={"enabled": True})) as gw:
        async with aiohttp.ClientSession() as s:
            async with s.put(gw.admin_url + "/admin/clients/mallory/override", json={"override": "deny"},
                             headers={"Authorization": f"Bearer {gw.admin_token}"}) as r:
                assert r.status == 200, await r.text()

            async def broken(*args: object, **kwargs: object) -> object:
                raise RuntimeError("store said no")

            monkeypatch.setattr(gw.ctx.store, "swap_client_state", broken)
            caplog.set_level(logging.ERROR, logger="gateway.admit")
            body = {"model": "sim", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
            async with s.post(gw.url + "/v1/chat/completions", json=body,
                              headers={"Authorization": f"Bearer {gw.token('mallory')}"}) as r:
                assert r.status == 403
            await settled(gw)
        counted = gw.ctx.metrics.registry.get_sample_value("ipgate_detector_errors_total", {"detector": "account"})
    assert counted == 1
    assert any("detection accounting failed" in r.getMessage() for r in caplog.records)
