"""Alert dispatch: dedup, per-client rate limit, one background delivery task per sink.

``submit`` is the only call on the request side (from ``DetectionSession.account``, itself off the client's
critical path). It decides whether the alert goes out and puts it on each sink's bounded queue without
waiting for any sink; a slow or dead webhook can never hold a request or another sink up.

Suppression, in order (each counted in ``alerts_total{sink="all", outcome=...}``):
1. ``deduplicated``: the same client, tier and set of detectors alerted within ``dedup_window_s``. Across
   replicas the window is shared through a store lease per (client, tier, detectors) held for
   ``dedup_window_s``, with the same fallback as the rate limit's below.
2. ``rate_limited``: this client alerted at the same or a higher tier within ``min_interval_s``. An
   *escalation* (a higher tier than the last alert) always goes out: the team must hear about a block.
   Across replicas the limit is shared through a store lease per (client, tier) held for
   ``min_interval_s``; if the store cannot answer (it raises, or it is degraded and refuses every lease),
   the local decision stands (a duplicate alert is better than a lost one) and that is logged once.

Delivery (per sink): up to ``1 + max_retries`` attempts, exponential back-off with "equal jitter" (half the
step fixed, half random, so retries from many replicas spread out but always grow), honouring a webhook's
``Retry-After``. Outcomes in ``alerts_total{sink, outcome}``: delivered, retried, failed, dropped (queue
full or still queued at shutdown). A sink's failure is logged once when it starts failing and once when it
recovers, never per alert.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from gateway.alerts.model import Alert
from gateway.alerts.sinks import AlertSink, PermanentSinkError, SinkError, StoreSink, build_sinks, store_degraded
from gateway.config import AlertsConfig, GatewayConfig
from gateway.store.base import StateStore
from gateway.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

_K = TypeVar("_K")
_V = TypeVar("_V")

_MAX_TRACKED_CLIENTS = 50_000  # bounds the dedup / rate-limit memory


@dataclass(slots=True)
class _Lane:
    sink: AlertSink
    queue: asyncio.Queue[Alert]
    task: asyncio.Task[None] | None = None
    failing: bool = False
    dropping: bool = False
    stats: dict[str, int] = field(default_factory=dict)


class AlertDispatcher:
    def __init__(
        self,
        cfg: AlertsConfig,
        sinks: Sequence[AlertSink],
        *,
        store: StateStore | None = None,
        metrics: Metrics | None = None,
        replica_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self._store = store
        self._metrics = metrics
        self._replica = replica_id or uuid.uuid4().hex[:12]
        self._clock = clock
        all_sinks: list[AlertSink] = list(sinks)
        if store is not None:
            all_sinks.append(StoreSink(store, cfg.store_max_len))
        self._lanes = [_Lane(s, asyncio.Queue(maxsize=s.delivery.queue_size)) for s in all_sinks]
        self._seen: OrderedDict[tuple[str, int, frozenset[str]], float] = OrderedDict()
        self._last: OrderedDict[str, tuple[float, int]] = OrderedDict()  # client -> (when, tier) last alerted
        self._closed = False
        self._store_lease_failing = False

    @classmethod
    def from_config(cls, cfg: GatewayConfig, store: StateStore | None, metrics: Metrics | None) -> AlertDispatcher:
        sinks = build_sinks(cfg.alerts.sinks, default_redis_url=cfg.store.url,
                            default_cluster_seeds=cfg.store.cluster_urls)
        return cls(cfg.alerts, sinks, store=store, metrics=metrics)

    @property
    def sink_names(self) -> list[str]:
        return [lane.sink.name for lane in self._lanes]

    def stats(self) -> dict[str, dict[str, int]]:
        """Per-sink outcome counts of this process (for the admin API and tests)."""
        return {lane.sink.name: dict(lane.stats) for lane in self._lanes}

    async def start(self) -> None:
        for lane in self._lanes:
            if lane.task is None:
                lane.task = asyncio.create_task(self._run(lane), name=f"alerts:{lane.sink.name}")

    # --- the request side ---------------------------------------------------------------------------------

    async def submit(self, alert: Alert) -> bool:
        """Queue ``alert`` on every sink unless suppressed; True when it was queued. Never waits on a sink."""
        if self._closed:
            self._count("all", "dropped")
            return False
        now = self._clock()
        key = alert.dedup_key()
        seen = self._seen.get(key)
        if seen is not None and now - seen < self.cfg.dedup_window_s:
            self._count("all", "deduplicated")
            return False
        last = self._last.get(alert.client)
        if last is not None and now - last[0] < self.cfg.min_interval_s and alert.tier_index <= last[1]:
            self._count("all", "rate_limited")
            return False
        # Recorded before the lease round trip, so a concurrent submit of the same alert on this replica is
        # suppressed locally; kept when another replica holds the lease (it alerted: we stay quiet too).
        _remember(self._seen, key, now)
        _remember(self._last, alert.client, (now, alert.tier_index))
        suppressed = await self._shared_suppression(alert, key)
        if suppressed is not None:
            if suppressed == "deduplicated" and self._last.get(alert.client) == (now, alert.tier_index):
                # as a local dedup, it starts no rate-limit interval (the other replica's alert may be old)
                if last is None:
                    del self._last[alert.client]
                else:
                    self._last[alert.client] = last
            self._count("all", suppressed)
            return False
        for lane in self._lanes:
            try:
                lane.queue.put_nowait(alert)
            except asyncio.QueueFull:
                self._count(lane.sink.name, "dropped", lane)
                if not lane.dropping:
                    lane.dropping = True
                    log.warning("alert sink %s: queue full (%d), dropping alerts", lane.sink.name, lane.queue.maxsize)
            else:
                if lane.dropping:
                    lane.dropping = False
                    log.info("alert sink %s: queue has room again", lane.sink.name)
        return True

    async def _shared_suppression(self, alert: Alert, key: tuple[str, int, frozenset[str]]) -> str | None:
        """Why another replica's alert suppresses this one (``deduplicated``, ``rate_limited``), or None.

        Both windows are shared through store leases, in the local order: the dedup window (per client, tier
        and detectors, ``dedup_window_s``: it outlasts the rate limit, so without it a second replica sent the
        very alert the first one would have deduplicated) and the rate limit (per client and tier)."""
        if self._store is None:
            return None
        if self.cfg.dedup_window_s > 0:
            basis = hashlib.sha256("\0".join(sorted(key[2])).encode("utf-8", "surrogatepass")).hexdigest()[:16]
            if not await self._lease(f"alert-dedup:{alert.client}:{alert.tier_index}:{basis}",
                                     self.cfg.dedup_window_s):
                return "deduplicated"
        if self.cfg.min_interval_s > 0 and not await self._lease(f"alert:{alert.client}:{alert.tier_index}",
                                                                 self.cfg.min_interval_s):
            return "rate_limited"
        return None

    async def _lease(self, name: str, ttl_s: float) -> bool:
        """True unless another replica holds the lease; True also when the store cannot tell (a duplicate
        alert is better than a lost one)."""
        assert self._store is not None
        try:
            ok = await self._store.acquire_lease(name, self._replica, ttl_s)
        except Exception as e:  # a store fault must not lose an alert: fall back to the local decision
            if not self._store_lease_failing:
                self._store_lease_failing = True
                log.warning("alerts: shared rate limit unavailable (%s: %s); deciding locally", type(e).__name__, e)
            return True
        if not ok and store_degraded(self._store):
            # A degraded store refuses every lease: that is "cannot tell", not "another replica alerted".
            if not self._store_lease_failing:
                self._store_lease_failing = True
                log.warning("alerts: shared rate limit unavailable (store degraded); deciding locally")
            return True
        if self._store_lease_failing:
            self._store_lease_failing = False
            log.info("alerts: shared rate limit available again")
        return ok

    # --- delivery -----------------------------------------------------------------------------------------

    async def _run(self, lane: _Lane) -> None:
        while True:
            alert = await lane.queue.get()
            try:
                await self._deliver(lane, alert)
            except asyncio.CancelledError:
                self._count(lane.sink.name, "dropped", lane)  # shutdown cut its delivery short
                raise
            except Exception as e:  # a bug must cost this alert, not the task (the sink would deliver nothing more)
                self._failed(lane, e)
            finally:
                lane.queue.task_done()

    async def _deliver(self, lane: _Lane, alert: Alert) -> None:
        sink, d = lane.sink, lane.sink.delivery
        payload = alert.to_json(redact=d.redact)
        attempt = 0
        while True:
            try:
                await asyncio.wait_for(sink.emit(alert, payload), timeout=d.timeout_s + 1.0)
            except PermanentSinkError as e:
                self._failed(lane, e)
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:  # isolate the sink: any failure is a failed attempt
                if attempt >= d.max_retries:
                    self._failed(lane, e)
                    return
                self._count(sink.name, "retried", lane)
                # the exponent is capped: max_retries is unbounded, and 2.0**1024 overflows a float (the
                # OverflowError killed the sink's delivery task); 2**60 x any base is past any backoff_max_s
                step = min(d.backoff_max_s, d.backoff_base_s * 2.0 ** min(attempt, 60))
                delay = step / 2 + random.uniform(0, step / 2)
                if isinstance(e, SinkError) and e.retry_after_s is not None:
                    delay = min(d.backoff_max_s, max(delay, e.retry_after_s))
                attempt += 1
                await asyncio.sleep(delay)
                continue
            self._count(sink.name, "delivered", lane)
            if lane.failing:
                lane.failing = False
                log.info("alert sink %s: delivering again", sink.name)
            return

    def _failed(self, lane: _Lane, e: BaseException) -> None:
        self._count(lane.sink.name, "failed", lane)
        if not lane.failing:
            lane.failing = True
            log.warning("alert sink %s: delivery failed (%s: %s); alerts are being lost for this sink",
                        lane.sink.name, type(e).__name__, e)

    def _count(self, sink: str, outcome: str, lane: _Lane | None = None) -> None:
        if lane is not None:
            lane.stats[outcome] = lane.stats.get(outcome, 0) + 1
        if self._metrics is not None:
            self._metrics.alerts_total.labels(sink=sink, outcome=outcome).inc()

    async def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every queued alert was delivered or given up on; False on timeout."""
        try:
            await asyncio.wait_for(asyncio.gather(*(lane.queue.join() for lane in self._lanes)), timeout_s)
        except TimeoutError:
            return False
        return True

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, flush what is queued (bounded), then stop the workers and close the sinks."""
        if self._closed:
            return
        self._closed = True
        if any(lane.task is not None for lane in self._lanes):
            await self.flush(timeout_s)
        for lane in self._lanes:
            if lane.task is not None:
                lane.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await lane.task
                lane.task = None
            left = lane.queue.qsize()
            if left:
                log.warning("alert sink %s: %d alerts still queued at shutdown, dropped", lane.sink.name, left)
                for _ in range(left):
                    self._count(lane.sink.name, "dropped", lane)
            try:
                await lane.sink.close()
            except Exception as e:  # one sink's close must not stop the others
                log.warning("alert sink %s: close failed (%s: %s)", lane.sink.name, type(e).__name__, e)


def _remember(d: OrderedDict[_K, _V], key: _K, value: _V) -> None:
    d[key] = value
    d.move_to_end(key)
    while len(d) > _MAX_TRACKED_CLIENTS:
        d.popitem(last=False)
