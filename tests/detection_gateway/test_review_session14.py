"""Review session 14 (detection in the gateway): each test reproduces a defect the review found (see
/work/team/docs/review-session14-detection-gateway.md). Real parts: real files and FIFOs, the real memory
store, the real redis-server fixture, the real engine."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from detectors.engine import Engine
from gateway.alerts.dispatcher import AlertDispatcher
from gateway.alerts.model import Alert
from gateway.alerts.sinks import build_sinks
from gateway.config import AlertsConfig, AlertSinkConfig, ConfigError, StoreConfig
from gateway.detection import GatewayDetection
from gateway.policy import Policy
from gateway.store.factory import open_store
from gateway.store.memory import MemoryStore
from gateway.telemetry.metrics import Metrics
from tests.detection_gateway.test_detection import PARAMS, Harness, gateway_config, probe


def make_alert(client: str = "c1", tier_index: int = 2, detectors: tuple[str, ...] = ("templates",)) -> Alert:
    return Alert(
        id=Alert.new_id(), ts=1_700_000_000.0, client=client, tenant="acme",
        tier={1: "watch", 2: "throttle", 3: "block"}[tier_index], tier_index=tier_index, previous_tier="normal",
        score=0.9, reasons=("r",), detectors=detectors, request_ids=("req-1",), examples=("order 12345",),
    )


def counter(metrics: Metrics, sink: str, outcome: str) -> float:
    return metrics.registry.get_sample_value("ipgate_alerts_total", {"sink": sink, "outcome": outcome}) or 0.0


# --- 1. a hung alert file (NFS that stopped answering) ------------------------------------------------------


@contextlib.contextmanager
def hung_file(tmp_path: Path) -> Iterator[Path]:
    """A path whose open() blocks forever, like a file on a dead NFS mount: a FIFO nobody reads. A watchdog
    opens the reading end after 15 s so that a regression fails the test instead of hanging the suite; the
    reading end is opened on the way out too, which lets every blocked writer thread finish."""
    fifo = tmp_path / "alerts.jsonl"
    os.mkfifo(fifo)
    readers: list[int] = []
    lock = threading.Lock()

    def release() -> None:
        with lock:
            if not readers:
                readers.append(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))

    watchdog = threading.Timer(15.0, release)
    watchdog.start()
    try:
        yield fifo
    finally:
        watchdog.cancel()
        release()
        time.sleep(0.2)  # the writer threads unblocked above finish their line
        for fd in readers:
            os.close(fd)


async def test_a_hung_alert_file_ties_up_one_thread_and_never_the_event_loop(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    # the size of asyncio's default pool on a 2-core host (min(32, cpus + 4) = 6) or less: that pool also
    # resolves backend host names (aiohttp's resolver), fetches JWKS and writes the audit trail
    pool = ThreadPoolExecutor(max_workers=4)
    loop.set_default_executor(pool)
    metrics = Metrics(CollectorRegistry())
    with hung_file(tmp_path) as path:
        sinks = build_sinks([AlertSinkConfig(kind="jsonl", path=str(path), max_retries=5, timeout_s=0.05,
                                             backoff_base_s=0.01, backoff_max_s=0.02)], default_redis_url="r")
        d = AlertDispatcher(AlertsConfig(min_interval_s=0, dedup_window_s=0), sinks, metrics=metrics)
        await d.start()
        assert await d.submit(make_alert("c0"))
        deadline = time.monotonic() + 10
        while counter(metrics, "jsonl", "failed") < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert counter(metrics, "jsonl", "failed") == 1  # given up on, counted (and logged once)
        # each timed-out attempt used to leave its thread blocked and start another: the shared pool ran dry
        assert await asyncio.wait_for(loop.run_in_executor(None, int, "7"), 2.0) == 7
        t0 = time.monotonic()
        await d.close(timeout_s=0.5)  # used to block the event loop on the writer's lock until the file answered
        assert time.monotonic() - t0 < 3.0


# --- 2. dedup across replicas ---------------------------------------------------------------------------------


async def test_dedup_window_holds_across_replicas(redis_url: str, tmp_path: Path) -> None:
    """The same client, tier and detectors within ``dedup_window_s`` is one alert: on one replica and across
    replicas alike. Only the (shorter) per-client rate limit was shared, so once its lease ran out a second
    replica sent the very alert the first would have deduplicated."""
    store = await open_store(StoreConfig(kind="redis", url=redis_url), None)
    cfg = AlertsConfig(min_interval_s=0.2, dedup_window_s=3600)
    path = tmp_path / "a.jsonl"
    metrics = Metrics(CollectorRegistry())
    a = AlertDispatcher(cfg, build_sinks([AlertSinkConfig(kind="jsonl", path=str(path))], default_redis_url=""),
                        store=store)
    b = AlertDispatcher(cfg, build_sinks([AlertSinkConfig(kind="jsonl", path=str(path))], default_redis_url=""),
                        store=store, metrics=metrics)
    await a.start()
    await b.start()
    try:
        assert await a.submit(make_alert("c1", 2, ("templates",)))
        await asyncio.sleep(0.4)  # the rate-limit lease has expired; the dedup window has not
        assert not await a.submit(make_alert("c1", 2, ("templates",)))  # the first replica: deduplicated
        assert not await b.submit(make_alert("c1", 2, ("templates",)))  # the second: the same answer
        assert counter(metrics, "all", "deduplicated") == 1
        assert await b.submit(make_alert("c1", 2, ("templates", "reasoning")))  # other evidence: a new alert
        assert await b.submit(make_alert("c1", 3, ("templates",)))  # an escalation always goes out
    finally:
        assert await a.flush(5.0) and await b.flush(5.0)
        await a.close()
        await b.close()
        await store.close()
    assert len(path.read_text().splitlines()) == 3


# --- 3. a tier pin below the detector's tier ------------------------------------------------------------------


async def test_a_pin_below_the_detector_tier_raises_no_alert_without_a_rise(tmp_path: Path) -> None:
    """README: "pinning `normal` or `watch` on a client that detection has blocked does not lift the block" and
    sets its rate limits. The alert must still mean "the tier rose": it compared the detector's tier with the
    pin, so every request of such a client built a "normal -> block" alert (reading 200 shared alerts for its
    address peers), counted as deduplicated, and one went out again each time the dedup window ran out."""
    cfg = gateway_config()
    policy = Policy.from_config(cfg)
    store = MemoryStore()
    metrics = Metrics(CollectorRegistry())
    clock = [0.0]
    path = tmp_path / "alerts.jsonl"
    alerts = AlertDispatcher(cfg.alerts, build_sinks([AlertSinkConfig(kind="jsonl", path=str(path))],
                                                     default_redis_url=""),
                             store=store, metrics=metrics, clock=lambda: clock[0])
    await alerts.start()
    h = Harness(GatewayDetection(Engine.from_params(PARAMS), policy, cfg.detection, metrics=metrics,
                                 alerts=alerts), store, policy)
    tiers = [(await h.send("att", probe(i), 1000.0 + i))[0] for i in range(25)]
    assert tiers[-1] == 3
    await alerts.flush()
    assert [a["tier"] for a in map(json.loads, path.read_text().splitlines())] == ["throttle", "block"]
    await store.set_override("att", None, 0, 3600)  # an operator relaxes its rate limits, the block stays
    for i in range(25, 30):
        tier, _ = await h.send("att", probe(i), 1000.0 + i)
        assert tier == 3  # a pin is a floor
    clock[0] += cfg.alerts.dedup_window_s + 1
    for i in range(30, 35):
        assert (await h.send("att", probe(i), 1000.0 + i))[0] == 3
    await alerts.flush()
    assert len(path.read_text().splitlines()) == 2  # nothing rose: no new alert
    assert counter(metrics, "all", "deduplicated") == 0  # and none was even built
    # a rise above the pin is still an alert: pin throttle on a client the detector put at watch
    await store.set_override("w", None, 2, 3600)
    await store.save_client_state("w", b"", 1, 0.6, 3600)
    tiers = [(await h.send("w", probe(i), 5000.0 + i))[0] for i in range(25)]
    assert tiers[-1] == 3
    await alerts.flush()
    last = json.loads(path.read_text().splitlines()[-1])
    assert (last["client"], last["tier"], last["previous_tier"]) == ("w", "block", "throttle")
    await alerts.close()


# --- 4. a store that cannot hold the detectors' state -----------------------------------------------------------


def test_a_store_state_limit_below_the_detectors_bound_is_a_config_error() -> None:
    """``store.max_state_bytes`` below what the enabled detectors' state can reach (≈ 11 KB by default) was
    accepted; then every client whose state grew past it failed ``save_client_state`` (ValueError) on every
    request: its tier never rose across requests and its alerts were lost. Start-up (and ``ipgate check``)
    now refuses it, naming the field."""
    cfg = gateway_config(store={"kind": "memory", "max_state_bytes": 4096})
    with pytest.raises(ConfigError, match=r"store\.max_state_bytes: 4096 is below the \d+ bytes"):
        GatewayDetection.from_config(cfg, Policy.from_config(cfg))
    ok = gateway_config(store={"kind": "memory", "max_state_bytes": 6144},
                        detection={"detectors": {"templates": {"enabled": False}, "coverage": {"enabled": False},
                                                 "reasoning": {"enabled": False}}})
    GatewayDetection.from_config(ok, Policy.from_config(ok))  # a smaller detector set fits: accepted


# --- 5. replay: timestamps that are not unix seconds ---------------------------------------------------------


@pytest.mark.parametrize(("ts", "line"), [(1_767_237_209_071, 2), (-5.0, 2), (1.2e12, 3)])
def test_replay_refuses_a_time_that_is_not_unix_seconds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ts: float, line: int
) -> None:
    """A trace in milliseconds (``Date.now()``, most log pipelines) or with negative times was replayed without
    a word: decay and cool-down ran 1000x too fast (other verdicts than the gateway's), and the engine itself
    refuses such a state as corrupt (``[0, 2^40]`` s), so clients past its decoded cache restarted fresh. The
    error names the line and the field, like the other malformed records."""
    from gateway.cli import main

    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    good = {"ts": 1_767_237_209.0, "client": "a", "endpoint": "/v1/chat/completions", "body": body}
    rows = [good, {**good, "ts": ts}] if line == 2 else [good, {**good, "ts": 1_767_237_210.0}, {**good, "ts": ts}]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["replay", str(path), "--json"]) == 2
    err = capsys.readouterr().err
    assert f"record {line}: field 'ts' must be" in err and "unix seconds" in err


# --- 6. a redis_stream sink whose URL is not a Redis URL ------------------------------------------------------


async def test_a_redis_stream_sink_with_a_bad_url_is_refused_at_start() -> None:
    """``url: http://...`` (or a port out of range) was accepted at start-up and by ``ipgate check``; every alert
    then failed on that sink (the first one, maybe days later, logged it), and ``ipgate check --connect``
    answered "internal error: ValueError". Now a start-up error naming the field (and no password)."""
    from gateway.alerts.sinks import RedisStreamSink, SinkError

    for url in ("http://:s3cret@127.0.0.1:6379/0", "redis://:s3cret@127.0.0.1:99999/0"):
        cfg = AlertSinkConfig(kind="redis_stream", url=url)
        with pytest.raises(ConfigError, match=r"alerts\.sinks\.redis_stream\.url: ") as e:
            build_sinks([cfg], default_redis_url="redis://127.0.0.1:6379/0")
        assert "s3cret" not in str(e.value)
        sink = RedisStreamSink(cfg, "redis://127.0.0.1:6379/0")  # what `ipgate check --connect` pings
        with pytest.raises(SinkError) as e2:
            await sink.ping()
        assert "s3cret" not in str(e2.value)
        await sink.close()
    with pytest.raises(ConfigError, match=r"alerts\.sinks\.redis_stream\.url: "):  # the store's URL by default
        build_sinks([AlertSinkConfig(kind="redis_stream")], default_redis_url="redis://h:99999/0")


# --- 7. JSONL "fsync-light": the last second, not the last alert before a quiet spell ---------------------------


async def test_jsonl_fsyncs_a_late_line_within_the_interval_even_when_no_alert_follows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README: "fsync runs at most once a second and on close: a host crash can lose the last second". An alert
    written less than a second after the previous fsync was synced only by the *next* alert or by shutdown: after
    a burst followed by a quiet night, a host crash lost alerts hours old."""
    import gateway.alerts.sinks.jsonl as jsonl_mod

    synced: list[int] = []
    real = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)  # the sink calls os.fsync
    sink = jsonl_mod.JsonlSink(AlertSinkConfig(kind="jsonl", path=str(tmp_path / "a.jsonl")))
    a1, a2 = make_alert("c1"), make_alert("c2")
    await sink.emit(a1, a1.to_json())
    await asyncio.sleep(0.1)  # the fsync runs in the background, at once (session 15: never inside the attempt)
    assert len(synced) == 1
    await sink.emit(a2, a2.to_json())  # within the interval: not synced now
    await asyncio.sleep(0.1)
    assert len(synced) == 1
    await asyncio.sleep(jsonl_mod.FSYNC_INTERVAL_S + 0.5)  # no alert follows
    assert len(synced) == 2, "the second line was not synced within the interval"
    await sink.close()


# --- 8. replay from a pipe --------------------------------------------------------------------------------------


def test_replay_reads_a_trace_from_a_pipe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``ipgate replay <(zcat trace.jsonl.gz)`` or ``... | ipgate replay /dev/stdin``: the first pass (validation
    and the order check) consumed the pipe and the replay read nothing: "0 requests from 0 clients", exit 0. (A
    named FIFO hung on the second open.) A trace that is not a regular file is read once."""
    from gateway.cli import main

    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    rows = [{"ts": 1_767_237_209.0 + i, "client": f"c{i % 3}", "endpoint": "/v1/chat/completions", "body": body}
            for i in range(12)]
    r, w = os.pipe()
    try:
        os.write(w, "".join(json.dumps(x) + "\n" for x in rows).encode())  # fits the pipe's buffer
        os.close(w)
        assert main(["replay", f"/dev/fd/{r}", "--json"]) == 0
    finally:
        os.close(r)
    out = json.loads(capsys.readouterr().out)
    assert out["summary"]["records"] == 12 and out["summary"]["clients"] == 3


# --- 9. fail_policy: block with a policy that has no blocking tier ------------------------------------------------


def test_fail_policy_block_without_a_blocking_tier_is_a_config_error() -> None:
    """``fail_policy: block`` answers an unscored request "at the first tier whose policy blocks"; a policy with no
    ``block: true`` tier fell back to its last tier, which serves: the requests that must never pass unscreened
    were served, without a word. Start-up (and ``ipgate check``) now refuses the combination, naming the field."""
    tiers = {"tiers": [{"name": "normal"}, {"name": "watch", "alert": True}], "flag_tier": "watch"}
    cfg = gateway_config(policy=tiers, detection={"fail_policy": "block"})
    with pytest.raises(ConfigError, match=r"detection\.fail_policy: block needs a policy tier with block: true"):
        GatewayDetection.from_config(cfg, Policy.from_config(cfg))
    ok = gateway_config(policy=tiers, detection={"fail_policy": "allow"})
    GatewayDetection.from_config(ok, Policy.from_config(ok))
