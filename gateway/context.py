"""``AppContext``: everything a request needs, built once per process and passed explicitly.

The pipeline and the admin route modules receive it; nothing in the gateway reads globals. Built and torn
down by ``gateway.app.context_lifecycle`` (an aiohttp ``cleanup_ctx``), in dependency order.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import deque
from collections.abc import Coroutine, Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.clientaddr import ClientAddress
from gateway.store.inflight import LeaseBook

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from gateway.alerts.dispatcher import AlertDispatcher
    from gateway.auth.authenticator import Authenticator
    from gateway.config import GatewayConfig
    from gateway.fingerprinting import FingerprintChecker
    from gateway.hooks import Detection, Watermarking
    from gateway.policy import Policy
    from gateway.proxy.fields import FieldPolicy
    from gateway.proxy.forward import Upstream
    from gateway.routing.router import Router
    from gateway.store.base import StateStore
    from gateway.telemetry.accesslog import AccessLog
    from gateway.telemetry.metrics import Metrics
    from gateway.telemetry.tracing import Tracing


RECENT_FORWARDED = 256  # X-Forwarded-For values kept for the fingerprint probes (newest)

@dataclass(eq=False)
class AppContext:
    config: GatewayConfig
    store: StateStore
    policy: Policy
    router: Router
    auth: Authenticator
    metrics: Metrics
    tracing: Tracing
    access_log: AccessLog
    detection: Detection | None
    watermarking: Watermarking | None
    alerts: AlertDispatcher | None
    upstream: Upstream
    fields: FieldPolicy  # extension fields refused in requests, withheld from answers (config: proxy)
    fingerprint: FingerprintChecker | None = None  # periodic model-fingerprint checks of the backends
    # X-Forwarded-For values of recent proxied requests: the fingerprint probes carry one, so a backend cannot
    # pick them out by the header every proxied request has (gateway/fingerprinting/checker.py)
    recent_forwarded: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT_FORWARDED))
    # the client's address behind server.trusted_proxies (access log, alert evidence, traces)
    client_address: ClientAddress = field(default_factory=ClientAddress)
    config_path: str | None = None  # the file `ipgate serve` loaded (SIGHUP and admin reload re-read it)
    supervisor_pid: int | None = None  # `ipgate serve --workers N`: the supervisor (an admin reload reaches all)
    reloads: asyncio.Lock = field(default_factory=asyncio.Lock)  # config reloads: one at a time, in turn
    draining: bool = False  # set on SIGTERM: /readyz answers 503, new requests 503
    drain_expired: bool = False  # the drain deadline passed: streams still running end with an error event
    models: frozenset[str] = frozenset()  # model names served, refreshed on reload
    inflight: set[asyncio.Task[object]] = field(default_factory=set)  # proxy handlers running now (drain)
    # the in-flight slots (max_in_flight leases) this process's requests hold: renewed while they run
    leases: LeaseBook = field(default_factory=LeaseBook)
    background: set[asyncio.Task[None]] = field(default_factory=set)  # accounting work off the hot path
    # Bound metric children by label values: labels() takes a lock and builds a tuple on every call. The key
    # space is bounded (routes x configured models/backends x statuses), never per client.
    metric_children: dict[tuple[object, ...], Any] = field(default_factory=dict)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run accounting work in the background, keeping a reference so it is not collected mid-way."""
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def start(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` now, up to its first real wait; only then does the rest become a background task
        (what Python 3.12's eager tasks do). For work that usually never waits (the memory store's
        reconciliation) this saves the task, its scheduling and its bookkeeping: ≈ 3 µs per request. An
        exception is logged like a failed background task's, never raised into the caller."""
        # A Task runs its coroutine in a copy of the caller's context: so does the eager part, and the rest
        # continues in that same copy (a contextvars token set before the wait is reset after it). Still not
        # a Task: asyncio.current_task() is the caller's during the eager part, so the coroutine must not
        # use asyncio.timeout() (settle does not).
        context = contextvars.copy_context()
        try:
            waiting = context.run(coro.send, None)
        except StopIteration:
            return
        except Exception:
            log.exception("background work failed")
            return
        task = asyncio.get_running_loop().create_task(_resume(coro, waiting), context=context)
        self.background.add(task)
        task.add_done_callback(self.background.discard)


async def _resume(coro: Coroutine[Any, Any, None], waiting: Any) -> None:
    await _Continue(coro, waiting)


class _Continue:
    """Awaitable that drives an already started coroutine on, from the future it is waiting on, exactly as the
    Task would have: the future goes to the Task, and what the Task sends or throws goes to the coroutine."""

    __slots__ = ("_coro", "_waiting")

    def __init__(self, coro: Coroutine[Any, Any, None], waiting: Any) -> None:
        self._coro, self._waiting = coro, waiting

    def __await__(self) -> Generator[Any, Any, None]:
        coro, waiting = self._coro, self._waiting
        while True:
            try:
                sent = yield waiting
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as e:  # a cancellation (or an exception set on the future) goes to the coroutine
                try:
                    waiting = coro.throw(e)
                except StopIteration:
                    return
                continue
            try:
                waiting = coro.send(sent)
            except StopIteration:
                return


CTX: web.AppKey[AppContext] = web.AppKey("ipgate_ctx", AppContext)
