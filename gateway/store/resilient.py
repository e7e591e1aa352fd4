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
  still apply, so a denylisted client stays denied and a blocked tier stays blocked by the policy. Every
  administrator override (deny, allow, pinned tier) also applies to clients this process has not answered:
  the inner store keeps an index of them, read at start-up and every ``overrides_refresh_s``.
- ``closed``: reject every request (the pipeline answers 503 + Retry-After, not 429: the client did not
  exceed anything, we could not check).
- ``local``: enforce the limits in-process (a ``MemoryStore``), each divided by ``local_replicas`` so the
  fleet together stays near the shared limit; last known tier and override apply.

Other operations while degraded: ``reconcile_tokens`` / ``save_client_state`` go to the local store in
``local`` mode and are dropped otherwise (the detector states saved locally are dropped on recovery: Redis is
authoritative again, and ~7 KB per client active during the outage would otherwise stay for the state TTL;
before that, each local state whose tier is above the one Redis holds is written to Redis, so an escalation
reached during the outage is kept);
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
from gateway.store.resp import LATE_TIMEOUT_FACTOR, is_unavailable_reply

log = logging.getLogger(__name__)
T = TypeVar("T")

FailureMode = Literal["open", "closed", "local"]
_OUTAGE = (RedisError, OSError, TimeoutError)  # TimeoutError covers asyncio's in 3.11
_KNOWN_MAX = 100_000  # clients whose last tier/override we remember for the degraded hot path
_PENDING_MAX = 10_000  # recipient records queued while degraded
_WRITE_BACK_BATCH = 64  # escalated client states written back to Redis at once on recovery
_DIVIDED_MAX = 256  # per-replica divisions of limits_by_tier tuples kept (the policy has one per limit class)
_BACKSTOP_MARGIN_S = 0.002  # the inner store's own timeout must fire first (it resets its connection)
OVERRIDES_REFRESH_S = 30.0  # how often each process re-reads every client's override (for outages)
LATE_STREAK_S = 1.0  # late timeouts with no call succeeding in between for this long: Redis is down after all
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
        overrides_refresh_s: float = OVERRIDES_REFRESH_S,
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
        self._late_timeouts = 0  # calls timed out while the event loop was busy (not counted as outages)
        self._late_logged = False
        self._late_streak_since: float | None = None  # first late timeout with no call succeeding since
        self._late_last = 0.0  # the latest late timeout (loop time)
        self._recoveries = 0
        self._probe: asyncio.Task[None] | None = None
        self._odd_errors_logged: dict[str, tuple[float, int]] = {}  # op → (last ERROR line, failures since)
        self._closed = False
        # Administrator overrides of every client (the inner store's index): client -> (override, pinned tier,
        # expiry unix s). Read at start-up and every ``overrides_refresh_s``; used only while degraded, for
        # clients this process has not answered (``_known`` covers those it has).
        self._overrides: dict[str, tuple[Override | None, int | None, float]] = {}
        self._overrides_refresh_s = overrides_refresh_s
        self._overrides_logged = False
        self._refresher: asyncio.Task[None] | None = None
        # set_override's own edits made while a read of the index is in flight: the read's snapshot may predate
        # them (a deny set a moment before an outage must not be undone by it), so they are applied over it
        self._overrides_edits: dict[str, tuple[Override | None, int | None, float] | None] | None = None

    @property
    def degraded(self) -> bool:
        return self._degraded_since is not None

    @property
    def recoveries(self) -> int:
        """Changes whenever Redis may have lost what was written before: an outage recovered from, or a
        connection re-established after it was lost (a Redis restarted while no call was in flight is no
        outage here, yet it comes back empty without persistence; so may a failover to a replica that lacked
        the write). Callers that cache "already written" (watermark recipients) write again when it changes."""
        return self._recoveries + int(getattr(self.inner, "reconnects", 0))

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
                break
            except TimeoutError as e:
                if time.monotonic() < deadline and not self._closed:
                    continue
                self._enter_degraded("ping", e)
                break
            except _OUTAGE as e:
                self._enter_degraded("ping", e)
                break
        if getattr(self.inner, "overrides", None) is not None and not self._closed:
            # in the background, first read at once: start-up (and one-shot CLI commands) never wait for it
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_loop(), name="store-overrides")

    # --- the override index (for the failure modes) ---------------------------------------------------------

    async def _refresh_overrides(self) -> bool:
        """Re-read every client's administrator override. Each page is one bounded call of the inner store; a
        failure keeps the last copy and does not degrade the store (the request path notices real outages).
        True when read."""
        read: Callable[[], Awaitable[dict[str, tuple[Override | None, int | None, float]]]] | None = getattr(
            self.inner, "overrides", None)
        if read is None:
            return True
        edits: dict[str, tuple[Override | None, int | None, float] | None] = {}
        self._overrides_edits = edits
        try:
            snapshot = await read()
        except Exception as e:  # an outage, or an odd reply: the last copy stays
            if not self._overrides_logged and not isinstance(e, _OUTAGE):
                self._overrides_logged = True
                log.exception("state store: reading the override index failed; the last copy stays")
            return False
        finally:
            if self._overrides_edits is edits:
                self._overrides_edits = None
        for client_id, entry in edits.items():
            if entry is None:
                snapshot.pop(client_id, None)
            else:
                snapshot[client_id] = entry
        self._overrides = snapshot
        return True

    async def _refresh_loop(self) -> None:
        while not self._closed:
            read = self._degraded_since is None and await self._refresh_overrides()
            # a read skipped (degraded: started during an outage) or failed is tried again at the probe's pace,
            # not 30 s after Redis answers again: a second outage in between would find no overrides at all
            await asyncio.sleep(self._overrides_refresh_s if read else min(self._interval,
                                                                           self._overrides_refresh_s))

    # --- the guard -------------------------------------------------------------------------------------------

    async def _call(self, op: str, make: Callable[[], Awaitable[T]]) -> T:
        if self._degraded_since is not None:
            self._count(op)
            raise _Unavailable
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(self._timeout):
                res = await make()
            self._late_streak_since = None
            return res
        except TimeoutError as e:
            self._count(op)
            now = loop.time()
            if self._late_streak_since is None or now - self._late_last > LATE_STREAK_S:
                self._late_streak_since = now  # (two late calls far apart on an idle gateway are no streak)
            self._late_last = now
            # ...but not for ever: a Redis that hangs while the loop stays saturated times every call out late
            # too, and no call succeeds any more. Late timeouts in a row, no success in between, for LATE_STREAK_S
            # are an outage (before, the store was never declared down then: no probe, no degraded gauge).
            streak = now - self._late_streak_since < LATE_STREAK_S
            if now - started > self._timeout * LATE_TIMEOUT_FACTOR and streak:
                # (a loaded 2-core host showed spurious one-second "outages" at the default 50 ms)
                # The deadline fired late: this process's event loop was busy elsewhere (start-up, a CPU-bound
                # burst on a loaded host) for longer than the timeout, and the reply may have been waiting in
                # the socket. Not evidence of an outage: this call takes the failure-mode answer, the store is
                # not declared down (the next call, or the probe, sees a slow Redis for what it is).
                self._late_timeouts += 1
                if not self._late_logged:
                    self._late_logged = True
                    log.warning("state store call %s timed out after %.0f ms while the event loop was busy (the "
                                "deadline was %.0f ms): answered by failure_mode=%s for this call only; the store "
                                "is not declared unavailable (logged once; store_failures_total counts them)", op,
                                1000 * (loop.time() - started), 1000 * self._timeout, self.mode)
                raise _Unavailable from e
            self._enter_degraded(op, e)
            raise _Unavailable from e
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
            if not await self._write_back():
                continue  # Redis went away again mid-way: still degraded, the local states are kept for the next try
            self._recover()

    async def _write_back(self) -> bool:
        """``local`` mode, before recovery: carry the tiers detection raised during the outage into Redis.

        Without this, a client escalated (throttle, block) while Redis was away went back to its pre-outage
        tier on its next request once Redis answered, and its detector resumed from the pre-outage state. Only
        states above tier 0 are written, and only where Redis holds a lower tier or nothing (restarted without
        persistence): a fresh local state never lowers what Redis or another replica recorded. Runs while the
        store is still degraded (requests keep the local answer meanwhile), so no request reads Redis before
        the escalations are there. False when an outage interrupted it (the caller stays degraded)."""
        merge = getattr(self.inner, "merge_client_state", None)
        if self.mode != "local" or merge is None:
            return True
        states = self._local.escalated_states()
        written = 0
        for i in range(0, len(states), _WRITE_BACK_BATCH):
            results = await asyncio.gather(
                *(self._merge_one(merge, *st) for st in states[i:i + _WRITE_BACK_BATCH]), return_exceptions=True)
            for st, r in zip(states[i:i + _WRITE_BACK_BATCH], results, strict=True):
                if isinstance(r, BaseException):
                    if isinstance(r, _OUTAGE) and not (isinstance(r, ResponseError) and not is_unavailable_reply(r)):
                        return False
                    # an error reply about one key, or a state the shared store refuses: skip that client only
                    log.error("state store: could not write back client %r's outage state: %s", st[0], r)
                else:
                    written += bool(r)
        if states:
            log.info("state store: %d of %d escalated client states from the outage written back", written,
                     len(states))
        return True

    async def _merge_one(self, merge: Callable[..., Awaitable[bool]], client_id: str, state: bytes, tier: int,
                         score: float, ttl_s: float) -> bool:
        async with asyncio.timeout(self._timeout):
            return await merge(client_id, state, tier, score, ttl_s)

    def _recover(self) -> None:
        since = self._degraded_since
        self._degraded_since = None
        self._late_streak_since = None
        self._recoveries += 1
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
        known = self._known.get(req.client_id)
        ov = self._overrides.get(req.client_id)
        if ov is not None and ov[2] <= time.time():
            ov = None  # expired since the last read, as its key in Redis has
        if known is not None:
            tier, override = known
            if ov is not None and ov[0] == "deny":
                override = "deny"  # denied since this process last answered the client
        elif ov is not None:
            override = ov[0]
            tier = 0 if override == "allow" or ov[1] is None else ov[1]
        else:
            tier, override = 0, None
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
            if self.mode == "local" and self.degraded:  # (see save_client_state)
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
            # Only while degraded: a call that failed alone (a late timeout, an odd error reply) leaves the store
            # healthy, so a local copy would never be dropped by a recovery and a later outage's write-back would
            # raise Redis to this stale tier (and its hot path would read this stale state).
            if self.mode == "local" and self.degraded:
                await self._local.save_client_state(client_id, state, tier, score, ttl_s)

    async def swap_client_state(self, client_id: str, expect: bytes | None, state: bytes, tier: int, score: float,
                                ttl_s: float) -> tuple[bool, bytes | None]:
        known = self._known.get(client_id)
        if known is not None and known[1] is None:
            self._remember(client_id, max(known[0], tier), None)  # keep a raised tier even through an outage
        try:
            return await self._call(
                "save_client_state",
                lambda: self.inner.swap_client_state(client_id, expect, state, tier, score, ttl_s))
        except _Unavailable:
            # While degraded there is no shared state to merge with: the copy is kept as save_client_state
            # keeps it (in process memory in ``local`` mode, nowhere otherwise) and counts as written.
            if self.mode == "local" and self.degraded:
                await self._local.save_client_state(client_id, state, tier, score, ttl_s)
            return True, None

    async def set_override(self, client_id: str, override: Override | None, tier: int | None, ttl_s: float) -> None:
        try:
            await self._call("set_override", lambda: self.inner.set_override(client_id, override, tier, ttl_s))
        except _Unavailable:
            raise ServiceUnavailable("The state store is unavailable; the override was NOT saved.",
                                     code="store_unavailable") from None
        self._known.pop(client_id, None)
        entry = None if override is None and tier is None else (override, tier, time.time() + ttl_s)
        if entry is None:
            self._overrides.pop(client_id, None)
        else:
            self._overrides[client_id] = entry
        if self._overrides_edits is not None:
            self._overrides_edits[client_id] = entry

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
        for task in (self._probe, self._refresher):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        try:
            async with asyncio.timeout(self._timeout * 4):
                await self.inner.close()
        except _OUTAGE as e:
            log.warning("closing the state store connection failed: %s", e)
