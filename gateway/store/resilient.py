"""``ResilientStore``: what the gateway does when the shared store is unreachable or hung.

Wraps the Redis store. Every call runs under ``asyncio.timeout(timeout_ms + 2 ms)``: a backstop over the Redis
store's own per-call bound (connect included), which fires first and also resets the connection, so even a
SIGSTOPped Redis or a half-dead TCP connection costs a caller at most the timeout.
The first failure flips the store to *degraded*: one WARNING line, ``store_degraded`` = 1, and from then on
calls do not touch Redis at all (no request pays the timeout again) but get the ``failure_mode`` answer.
A background probe PINGs every ``health_interval_s``; when Redis answers, one INFO line, ``store_degraded``
= 0, and normal service resumes. Every operation not served by Redis counts in
``store_failures_total{op}``.

failure_mode for the hot path (the request-admission decision):
- ``open``: admit. The client's last known tier and override (a bounded local cache of hot-path answers)
  still apply, so a denylisted client stays denied and a blocked tier stays blocked by the policy.
- ``closed``: reject every request (the pipeline answers 503 + Retry-After, not 429: the client did not
  exceed anything, we could not check).
- ``local``: enforce the limits in-process (a ``MemoryStore``), each divided by ``local_replicas`` so the
  fleet together stays near the shared limit; last known tier and override apply.

Other operations while degraded: ``reconcile_tokens`` / ``save_client_state`` go to the local store in
``local`` mode and are dropped otherwise (the detector states saved locally are dropped on recovery: Redis is
authoritative again, and ~7 KB per client active during the outage would otherwise stay for the state TTL);
``link_sketches`` returns no links; ``append_alert`` and ``set_blob`` are dropped; ``get_blob`` returns
None; ``acquire_lease`` returns False (a once-per-cluster duty must not run twice because coordination is
down); ``add_recipient`` is queued (bounded) and replayed on recovery, because watermark attribution must not
lose recipients. Admin reads and writes
(``get_client``, ``set_override``, ``recent_alerts``, ``recipients``, ``recent_audit``) and ``append_audit``
raise ``ServiceUnavailable`` (503):
an administrator must know that a denylist entry was not written.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import Any, Literal, Protocol, TypeVar

from redis.exceptions import RedisError, ResponseError

from gateway.errors import ServiceUnavailable
from gateway.store.base import AdmitRequest, AdmitResult, ClientRecord, Limits, Override, RateDecision, StateStore
from gateway.store.memory import MemoryStore
from gateway.store.resp import is_unavailable_reply

log = logging.getLogger(__name__)
T = TypeVar("T")

FailureMode = Literal["open", "closed", "local"]
_OUTAGE = (RedisError, OSError, TimeoutError)  # TimeoutError covers asyncio's in 3.11
_KNOWN_MAX = 100_000  # clients whose last tier/override we remember for the degraded hot path
_PENDING_MAX = 10_000  # recipient records queued while degraded
_DIVIDED_MAX = 256  # per-replica divisions of limits_by_tier tuples kept (the policy has one per limit class)
_BACKSTOP_MARGIN_S = 0.002  # the inner store's own timeout must fire first (it resets its connection)
STARTUP_GRACE_S = 2.0  # how long start() keeps retrying a ping that merely times out
ODD_ERROR_LOG_INTERVAL_S = 60.0  # a persistent error reply is logged again at most this often (never silent for ever)


class ProbedStore(StateStore, Protocol):
    async def ping(self) -> None: ...


class StoreMetrics(Protocol):
    """The two metrics this module touches (``gateway.telemetry.metrics.Metrics`` has them)."""

    @property
    def store_failures_total(self) -> Any: ...

    @property
    def store_degraded(self) -> Any: ...


class _Unavailable(Exception):
    """Internal: the call was not served by the inner store."""


def divide_limits(lim: Limits, replicas: int) -> Limits:
    """One replica's share of a shared limit (bursts rounded up, never below 1)."""
    return Limits(
        requests_per_minute=lim.requests_per_minute / replicas,
        tokens_per_minute=lim.tokens_per_minute / replicas,
        burst_requests=max(1, -(-lim.burst_requests // replicas)),
        burst_tokens=max(1, -(-lim.burst_tokens // replicas)),
    )


class ResilientStore:
    def __init__(
        self,
        inner: ProbedStore,
        *,
        failure_mode: FailureMode,
        timeout_ms: float,
        health_interval_s: float = 1.0,
        local_replicas: int = 1,
        metrics: StoreMetrics | None = None,
        local: MemoryStore | None = None,
    ) -> None:
        self.inner = inner
        self.mode = failure_mode
        self._timeout = timeout_ms / 1000.0 + _BACKSTOP_MARGIN_S
        self._interval = health_interval_s
        self._replicas = local_replicas
        self._metrics = metrics
        self._local = local or MemoryStore()
        self._known: OrderedDict[str, tuple[int, Override | None]] = OrderedDict()
        self._pending: OrderedDict[tuple[str, int], float] = OrderedDict()
        # id(limits_by_tier) -> (that tuple, its per-replica share): one entry per limit class
        self._divided: dict[int, tuple[Sequence[Limits], tuple[Limits, ...]]] = {}
        self._degraded_since: float | None = None
        self._failed_while_degraded = 0
        #: Outages recovered from. Redis may come back without what was written before (restarted without
        #: persistence, a failover to a replica that lacked the write): callers that cache "already written"
        #: (watermark recipients) write again when this changes.
        self.recoveries = 0
        self._probe: asyncio.Task[None] | None = None
        self._odd_errors_logged: dict[str, tuple[float, int]] = {}  # op → (last ERROR line, failures since)
        self._closed = False

    @property
    def degraded(self) -> bool:
        return self._degraded_since is not None

    async def start(self) -> None:
        """Check the store at start-up; an unreachable store starts degraded (never a crash).

        A refused or failed connection is an outage at once. A ping that only *times out* is retried for up
        to ``STARTUP_GRACE_S``: no request is waiting yet, and the first connect to a healthy Redis on a
        loaded host (TCP handshake, HELLO, script loads) can exceed a hot-path timeout of tens of
        milliseconds, which must not start the whole replica degraded (503 for everyone in ``closed`` mode).
        """
        deadline = time.monotonic() + STARTUP_GRACE_S
        while True:
            try:
                async with asyncio.timeout(self._timeout):
                    await self.inner.ping()
                return
            except TimeoutError as e:
                if time.monotonic() < deadline and not self._closed:
                    continue
                self._enter_degraded("ping", e)
                return
            except _OUTAGE as e:
                self._enter_degraded("ping", e)
                return

    # --- the guard -------------------------------------------------------------------------------------------

    async def _call(self, op: str, make: Callable[[], Awaitable[T]]) -> T:
        if self._degraded_since is not None:
            self._count(op)
            raise _Unavailable
        try:
            async with asyncio.timeout(self._timeout):
                return await make()
        except ResponseError as e:
            self._count(op)
            if is_unavailable_reply(e):
                # READONLY (a failover demoted our primary), LOADING, OOM, ...: Redis cannot serve us. That is an
                # outage like a dead socket: degraded state, gauge, probe (whose write notices when it clears).
                self._enter_degraded(op, e)
                raise _Unavailable from e
            # Redis answered, with an error: a bug or a misconfiguration (e.g. one key of the wrong type), not an
            # outage. Fall back for this call, log it at most once per op per interval, but do not declare the
            # store down (the probe would flap).
            now = time.monotonic()
            last = self._odd_errors_logged.get(op)
            if last is None or now - last[0] >= ODD_ERROR_LOG_INTERVAL_S:
                more = f"; {last[1]} more such failures since the last report" if last is not None and last[1] else ""
                self._odd_errors_logged[op] = (now, 0)
                log.error("state store rejected %s: %s (failure_mode=%s applies to such calls%s)", op, e, self.mode,
                          more)
            else:
                self._odd_errors_logged[op] = (last[0], last[1] + 1)
            raise _Unavailable from e
        except _OUTAGE as e:
            self._count(op)
            self._enter_degraded(op, e)
            raise _Unavailable from e

    def _count(self, op: str) -> None:
        if self._degraded_since is not None:
            self._failed_while_degraded += 1
        if self._metrics is not None:
            self._metrics.store_failures_total.labels(op=op).inc()

    def _enter_degraded(self, op: str, e: BaseException) -> None:
        if self._degraded_since is not None:
            return
        self._degraded_since = time.monotonic()
        self._failed_while_degraded = 0
        if self._metrics is not None:
            self._metrics.store_degraded.set(1)
        log.warning(
            "state store unavailable (%s failed: %s); failure_mode=%s applies until it answers again",
            op, type(e).__name__ if not str(e) else f"{type(e).__name__}: {e}", self.mode,
        )
        if not self._closed and (self._probe is None or self._probe.done()):
            self._probe = asyncio.get_running_loop().create_task(self._probe_loop(), name="store-probe")

    async def _probe_loop(self) -> None:
        while self._degraded_since is not None and not self._closed:
            await asyncio.sleep(self._interval)
            try:
                async with asyncio.timeout(self._timeout):
                    await self.inner.ping()
            except _OUTAGE:
                continue
            except Exception:  # an unexpected probe error must not kill recovery
                log.exception("state store probe failed unexpectedly")
                continue
            self._recover()

    def _recover(self) -> None:
        since = self._degraded_since
        self._degraded_since = None
        self.recoveries += 1
        if self._metrics is not None:
            self._metrics.store_degraded.set(0)
        dropped = self._local.drop_client_states()
        log.info(
            "state store available again after %.1f s (%d operations answered by failure_mode=%s; %d local "
            "client states dropped)",
            time.monotonic() - (since or time.monotonic()), self._failed_while_degraded, self.mode, dropped,
        )
        if self._pending:
            asyncio.get_running_loop().create_task(self._replay_recipients(), name="store-replay")

    async def _replay_recipients(self) -> None:
        while self._pending and self._degraded_since is None:
            (client, version), ttl = self._pending.popitem(last=False)
            try:
                await self._call("add_recipient", partial(self.inner.add_recipient, client, version, ttl))
            except _Unavailable:
                self._queue_recipient(client, version, ttl)
                return

    # --- hot path ----------------------------------------------------------------------------------------

    def _remember(self, client_id: str, tier: int, override: Override | None) -> None:
        self._known[client_id] = (tier, override)
        self._known.move_to_end(client_id)
        if len(self._known) > _KNOWN_MAX:
            self._known.popitem(last=False)

    def _local_limits(self, limits_by_tier: Sequence[Limits]) -> tuple[Limits, ...]:
        # One cached division per limit class (the policy passes the same tuple object per class): keyed by
        # identity, the entry keeps the tuple alive so its id is not reused while cached; bounded for callers
        # that build a tuple per call.
        cached = self._divided.get(id(limits_by_tier))
        if cached is not None and cached[0] is limits_by_tier:
            return cached[1]
        divided = tuple(divide_limits(lim, self._replicas) for lim in limits_by_tier)
        if len(self._divided) >= _DIVIDED_MAX:
            self._divided.clear()
        self._divided[id(limits_by_tier)] = (limits_by_tier, divided)
        return divided

    async def hot_path(self, req: AdmitRequest) -> AdmitResult:
        try:
            res = await self._call("hot_path", lambda: self.inner.hot_path(req))
        except _Unavailable:
            return await self._degraded_admit(req)
        self._remember(req.client_id, res.tier, res.override)
        return res

    async def _degraded_admit(self, req: AdmitRequest) -> AdmitResult:
        tier, override = self._known.get(req.client_id, (0, None))
        top = len(req.limits_by_tier) - 1
        if self.mode == "local":
            if override != "allow":
                tier = max(tier, self._local.stored_tier(req.client_id))
            tier = min(tier, top)
            lim = self._local_limits(req.limits_by_tier)[tier]
            res = await self._local.hot_path(AdmitRequest(req.client_id, req.tokens, (lim,), req.state_ttl_s))
            denied = override == "deny"
            return replace(res, allowed=res.allowed and not denied, tier=tier, override=override, degraded=True)
        tier = min(tier, top)
        lim = req.limits_by_tier[tier]
        if self.mode == "open":
            r = RateDecision(True, lim.burst_requests, lim.burst_requests, 0.0, 0.0)
            k = RateDecision(True, lim.burst_tokens, lim.burst_tokens, 0.0, 0.0)
            allowed = override != "deny"
        else:
            r = RateDecision(False, lim.burst_requests, 0, self._interval, self._interval)
            k = RateDecision(False, lim.burst_tokens, 0, self._interval, self._interval)
            allowed = False
        return AdmitResult(allowed, tier, override, r, k, None, time.time(), degraded=True,
                           unavailable=self.mode == "closed")

    async def reconcile_tokens(self, client_id: str, reserved: int, actual: int, limits: Limits) -> None:
        try:
            await self._call("reconcile_tokens",
                             lambda: self.inner.reconcile_tokens(client_id, reserved, actual, limits))
        except _Unavailable:
            if self.mode == "local":
                await self._local.reconcile_tokens(
                    client_id, reserved, actual, divide_limits(limits, self._replicas))

    # --- per-client state -----------------------------------------------------------------------------------

    async def save_client_state(self, client_id: str, state: bytes, tier: int, score: float, ttl_s: float) -> None:
        known = self._known.get(client_id)
        if known is not None and known[1] is None:
            self._remember(client_id, max(known[0], tier), None)  # keep a raised tier even through an outage
        try:
            await self._call("save_client_state",
                             lambda: self.inner.save_client_state(client_id, state, tier, score, ttl_s))
        except _Unavailable:
            if self.mode == "local":
                await self._local.save_client_state(client_id, state, tier, score, ttl_s)

    async def set_override(self, client_id: str, override: Override | None, tier: int | None, ttl_s: float) -> None:
        try:
            await self._call("set_override", lambda: self.inner.set_override(client_id, override, tier, ttl_s))
        except _Unavailable:
            raise ServiceUnavailable("The state store is unavailable; the override was NOT saved.",
                                     code="store_unavailable") from None
        self._known.pop(client_id, None)

    async def get_client(self, client_id: str) -> ClientRecord | None:
        try:
            return await self._call("get_client", lambda: self.inner.get_client(client_id))
        except _Unavailable:
            raise ServiceUnavailable("The state store is unavailable.", code="store_unavailable") from None

    async def link_sketches(self, client_id: str, sketches: Sequence[int], ttl_s: float) -> dict[str, int]:
        try:
            return await self._call("link_sketches", lambda: self.inner.link_sketches(client_id, sketches, ttl_s))
        except _Unavailable:
            return {}

    # --- alerts, recipients, leases, blobs --------------------------------------------------------------------

    async def append_alert(self, alert_json: str, max_len: int) -> None:
        try:
            await self._call("append_alert", lambda: self.inner.append_alert(alert_json, max_len))
        except _Unavailable:
            return

    async def recent_alerts(self, count: int) -> list[str]:
        try:
            return await self._call("recent_alerts", lambda: self.inner.recent_alerts(count))
        except _Unavailable:
            raise ServiceUnavailable("The state store is unavailable.", code="store_unavailable") from None

    async def append_audit(self, record_json: str, max_len: int) -> None:
        # Not dropped like an alert: the audit trail keeps the record pending and counts the failure.
        try:
            await self._call("append_audit", lambda: self.inner.append_audit(record_json, max_len))
        except _Unavailable:
            raise ServiceUnavailable("The state store is unavailable; the audit record was not stored.",
                                     code="store_unavailable") from None

    async def recent_audit(self, count: int) -> list[str]:
        try:
            return await self._call("recent_audit", lambda: self.inner.recent_audit(count))
        except _Unavailable:
            raise ServiceUnavailable("The state store is unavailable.", code="store_unavailable") from None

    def _queue_recipient(self, client_id: str, key_version: int, ttl_s: float) -> None:
        key = (client_id, key_version)
        self._pending[key] = max(ttl_s, self._pending.get(key, 0.0))
        if len(self._pending) > _PENDING_MAX:
            self._pending.popitem(last=False)

    async def add_recipient(self, client_id: str, key_version: int, ttl_s: float) -> None:
        try:
            await self._call("add_recipient", lambda: self.inner.add_recipient(client_id, key_version, ttl_s))
        except _Unavailable:
            self._queue_recipient(client_id, key_version, ttl_s)

    async def recipients(self) -> dict[str, list[int]]:
        try:
            return await self._call("recipients", self.inner.recipients)
        except _Unavailable:
            raise ServiceUnavailable("The state store is unavailable.", code="store_unavailable") from None

    async def acquire_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        try:
            return await self._call("acquire_lease", lambda: self.inner.acquire_lease(name, owner, ttl_s))
        except _Unavailable:
            return False

    async def get_blob(self, name: str) -> bytes | None:
        try:
            return await self._call("get_blob", lambda: self.inner.get_blob(name))
        except _Unavailable:
            return None

    async def set_blob(self, name: str, value: bytes, ttl_s: float) -> None:
        try:
            await self._call("set_blob", lambda: self.inner.set_blob(name, value, ttl_s))
        except _Unavailable:
            return

    async def close(self) -> None:
        self._closed = True
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
        try:
            async with asyncio.timeout(self._timeout * 4):
                await self.inner.close()
        except _OUTAGE as e:
            log.warning("closing the state store connection failed: %s", e)
