"""``ResilientStore``: what the gateway does when the shared store is unreachable or hung.

Wraps the Redis store. Every call runs under ``asyncio.timeout(timeout_ms + 2 ms)``: a backstop over the Redis
store's own per-call bound (connect included), which fires first and also resets the connection, so even a
SIGSTOPped Redis or a half-dead TCP connection costs a caller at most the timeout.
The first failure flips the store to *degraded*: one WARNING line, ``store_degraded`` = 1, and from then on
calls do not touch Redis at all (no request pays the timeout again) but get the ``failure_mode`` answer.
A background probe PINGs every ``health_interval_s``; when Redis answers, one INFO line, ``store_degraded``
= 0, and normal service resumes. Every operation not served by Redis counts in
``store_failures_total{op}``.

What each operation answers meanwhile (``failure_mode``: ``open``, ``closed`` or ``local``) is
``gateway.store.failure_modes``; the copy of every client's override those answers use,
``gateway.store.override_copy``; the tiers raised during the outage, carried into Redis before recovery,
``gateway.store.write_back``. This module is the guard: when the store counts as unavailable, the probe, and
the recovery.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from redis.exceptions import ResponseError

from gateway.store.base import Limits, Override
from gateway.store.failure_modes import OUTAGE, FailureMode, FailureModeOps, NotServed, ProbedStore
from gateway.store.memory import MemoryStore
from gateway.store.override_copy import OVERRIDES_REFRESH_S, OverrideCopy
from gateway.store.resp import LATE_TIMEOUT_FACTOR, is_unavailable_reply
from gateway.store.write_back import WriteBack

log = logging.getLogger(__name__)
T = TypeVar("T")

_BACKSTOP_MARGIN_S = 0.002  # the inner store's own timeout must fire first (it resets its connection)
LATE_STREAK_S = 1.0  # late timeouts with no call succeeding in between for this long: Redis is down after all
STARTUP_GRACE_S = 2.0  # how long start() keeps retrying a ping that merely times out
ODD_ERROR_LOG_INTERVAL_S = 60.0  # a persistent error reply is logged again at most this often (never silent for ever)


class StoreMetrics(Protocol):
    """The two metrics this module touches (``gateway.telemetry.metrics.Metrics`` has them)."""

    @property
    def store_failures_total(self) -> Any: ...

    @property
    def store_degraded(self) -> Any: ...


class ResilientStore(FailureModeOps, OverrideCopy, WriteBack):
    """The guard around the inner store (this module); the operations and their failure-mode answers are
    ``FailureModeOps``'."""

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
        self._bulk_logged: dict[str, float] = {}  # bulk read op → when its failure was last logged
        self._closed = False
        self._releases: set[asyncio.Task[None]] = set()
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
            except OUTAGE as e:
                self._enter_degraded("ping", e)
                break
        if getattr(self.inner, "overrides", None) is not None and not self._closed:
            # in the background, first read at once: start-up (and one-shot CLI commands) never wait for it
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_loop(), name="store-overrides")

    # --- the guard -------------------------------------------------------------------------------------------

    async def _call(self, op: str, make: Callable[[], Awaitable[T]]) -> T:
        if self._degraded_since is not None:
            self._count(op)
            raise NotServed
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
                raise NotServed from e
            self._enter_degraded(op, e)
            raise NotServed from e
        except ResponseError as e:
            self._count(op)
            if is_unavailable_reply(e):
                # READONLY (a failover demoted our primary), LOADING, OOM, ...: Redis cannot serve us. That is an
                # outage like a dead socket: degraded state, gauge, probe (whose write notices when it clears).
                self._enter_degraded(op, e)
                raise NotServed from e
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
            raise NotServed from e
        except OUTAGE as e:
            self._count(op)
            self._enter_degraded(op, e)
            raise NotServed from e

    async def _bulk(self, op: str, make: Callable[[], Awaitable[T]]) -> T:
        """A bulk admin read (recipients, the alert and audit lists): the inner store reads it page by page, each
        page one command under its own per-call bound, so there is no deadline over the whole read (a large
        list takes longer than ``timeout_ms`` by design). A failure fails this read only: it is counted and
        logged, and the store is not declared unavailable for it (before, a read of 100 000 recipients timed out
        as one call and put every request under the failure mode). A real outage is the request path's, or the
        probe's, to declare."""
        if self._degraded_since is not None:
            self._count(op)
            raise NotServed
        try:
            return await make()
        except OUTAGE as e:
            self._count(op)
            now = time.monotonic()
            if now - self._bulk_logged.get(op, -ODD_ERROR_LOG_INTERVAL_S) >= ODD_ERROR_LOG_INTERVAL_S:
                self._bulk_logged[op] = now  # (detection reads the alert list per alert: at most once a minute)
                log.warning("state store: the %s read failed (%s); only this read is refused (logged at most once "
                            "a minute per read; store_failures_total counts each)", op,
                            type(e).__name__ if not str(e) else f"{type(e).__name__}: {e}")
            raise NotServed from e

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
            except OUTAGE:
                continue
            except Exception:  # an unexpected probe error must not kill recovery
                log.exception("state store probe failed unexpectedly")
                continue
            if not await self._write_back():
                continue  # Redis went away again mid-way: still degraded, the local states are kept for the next try
            self._recover()

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

    async def close(self) -> None:
        self._closed = True
        for task in (self._probe, self._refresher):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._releases:  # (each bounded by the guard's timeout)
            await asyncio.gather(*self._releases, return_exceptions=True)
        try:
            async with asyncio.timeout(self._timeout * 4):
                await self.inner.close()
        except OUTAGE as e:
            log.warning("closing the state store connection failed: %s", e)
