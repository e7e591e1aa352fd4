"""What each ``StateStore`` operation of ``ResilientStore`` answers while the shared store does not.

failure_mode for the hot path (the request-admission decision):
- ``open``: admit. The client's last known tier and override (a bounded local cache of hot-path answers)
  still apply, so a denylisted client stays denied and a blocked tier stays blocked by the policy. Every
  administrator override (deny, allow, pinned tier) also applies to clients this process has not answered:
  the inner store keeps an index of them, read at start-up and every ``overrides_refresh_s``.
- ``closed``: reject every request (the pipeline answers 503 + Retry-After, not 429: the client did not
  exceed anything, we could not check).
- ``local``: enforce the limits in-process (a ``MemoryStore``), each divided by ``local_replicas`` so the
  fleet together stays near the shared limit; last known tier and override apply.

``peek`` (the look before a request's body, ``Expect: 100-continue``) answers as the hot path would, taking
nothing. Requests in flight (``max_in_flight``) follow the same modes: ``open`` admits without counting, ``closed``
refuses, ``local`` counts them in-process against each replica's share of the cap (the requests already
running are added by the next lease renewal). A slot taken in the shared store and not given back there
because of the outage expires with its lease (``store.in_flight_lease_s``); one taken by a hot path answered by
the failure mode while the store is up (a late deadline, an error reply) is given back at once.

Other operations while degraded: ``reconcile_tokens`` / ``save_client_state`` go to the local store in
``local`` mode and are dropped otherwise (the detector states saved locally are dropped on recovery: Redis is
authoritative again, and ~7 KB per client active during the outage would otherwise stay for the state TTL;
before that, each local state whose tier is above the one Redis holds is written to Redis, so an escalation
reached during the outage is kept);
``link_sketches`` returns no links; ``append_alert`` and ``set_blob`` are dropped; ``get_blob`` returns
None; ``acquire_lease`` returns False (a once-per-cluster duty must not run twice because coordination is
down); ``add_recipient`` is queued (bounded) and replayed on recovery, because watermark attribution must not
lose recipients. Admin reads and writes
(``get_client``, ``get_client_state``, ``set_override``, ``recent_alerts``, ``recipients``, ``recent_audit``) and
``append_audit`` raise ``ServiceUnavailable`` (503):
an administrator must know that a denylist entry was not written.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar

from redis.exceptions import RedisError

from gateway.errors import ServiceUnavailable
from gateway.store.base import AdmitRequest, AdmitResult, ClientRecord, Limits, Override, RateDecision, StateStore
from gateway.store.memory import MemoryStore

T = TypeVar("T")

FailureMode = Literal["open", "closed", "local"]
# what the guard (``ResilientStore._call``), the override copy and the write-back treat as the store being away
OUTAGE = (RedisError, OSError, TimeoutError)  # TimeoutError covers asyncio's in 3.11
_KNOWN_MAX = 100_000  # clients whose last tier/override we remember for the degraded hot path
_PENDING_MAX = 10_000  # recipient records queued while degraded
_NO_TOKENS = Limits(1.0, 1.0, 1, 1)  # a release without tokens to reconcile (its rate goes unread)
_DIVIDED_MAX = 256  # per-replica divisions of limits_by_tier tuples kept (the policy has one per limit class)


class ProbedStore(StateStore, Protocol):
    async def ping(self) -> None: ...


class NotServed(Exception):
    """Internal: the call was not served by the inner store."""


def divide_limits(lim: Limits, replicas: int) -> Limits:
    """One replica's share of a shared limit (bursts rounded up, never below 1)."""
    return Limits(
        requests_per_minute=lim.requests_per_minute / replicas,
        tokens_per_minute=lim.tokens_per_minute / replicas,
        burst_requests=max(1, -(-lim.burst_requests // replicas)),
        burst_tokens=max(1, -(-lim.burst_tokens // replicas)),
        max_in_flight=max(1, -(-lim.max_in_flight // replicas)) if lim.max_in_flight else 0,
    )


class FailureModeOps:
    """``ResilientStore``'s ``StateStore`` operations. Each runs through the guard (``ResilientStore._call``),
    which raises ``NotServed`` for a call the inner store did not serve, and then answers by the failure mode.
    A base of ``ResilientStore``, whose ``__init__`` sets the attributes."""

    inner: ProbedStore
    mode: FailureMode
    _interval: float
    _replicas: int
    _local: MemoryStore
    _known: OrderedDict[str, tuple[int, Override | None]]
    _pending: OrderedDict[tuple[str, int], float]
    _divided: dict[int, tuple[Sequence[Limits], tuple[Limits, ...]]]
    _overrides: dict[str, tuple[Override | None, int | None, float]]
    _overrides_edits: dict[str, tuple[Override | None, int | None, float] | None] | None
    _degraded_since: float | None
    _releases: set[asyncio.Task[None]]  # slots given back after a hot path the store may have served

    if TYPE_CHECKING:  # ``ResilientStore``'s guard
        @property
        def degraded(self) -> bool: ...

        async def _call(self, op: str, make: Callable[[], Awaitable[T]]) -> T: ...

        async def _bulk(self, op: str, make: Callable[[], Awaitable[T]]) -> T: ...

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
        except NotServed:
            res = await self._degraded_admit(req)
            if req.lease and not self.degraded:
                # Not served, yet the store is up: the deadline fired late (a busy event loop) or Redis answered
                # with an error, and the script may have taken the slot. This request holds none there (``open``
                # counts nothing; ``local`` counts in-process; ``closed`` refused it): give it back now, or it
                # stays taken for the lease period. (Behind an outage the release could not reach it: it expires.)
                self._give_back_later(req.client_id, req.lease)
            return res
        self._remember(req.client_id, res.tier, res.override)
        return res

    async def peek(self, req: AdmitRequest) -> AdmitResult:
        """The inner store's look; not served, the failure mode's answer to the same request, as ``hot_path``
        would give it (``local``: the in-process store's look, nothing taken there either)."""
        try:
            res = await self._call("peek", lambda: self.inner.peek(req))
        except NotServed:
            return await self._degraded_admit(req, look=True)
        self._remember(req.client_id, res.tier, res.override)
        return res

    def _give_back_later(self, client_id: str, lease: str) -> None:
        task = asyncio.get_running_loop().create_task(self._give_back(client_id, lease))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _give_back(self, client_id: str, lease: str) -> None:
        with contextlib.suppress(NotServed):  # (counted by the guard; the lease expires)
            await self._call("reconcile_tokens", lambda: self.inner.reconcile_tokens(client_id, 0, 0, _NO_TOKENS,
                                                                                     None, lease))

    async def _degraded_admit(self, req: AdmitRequest, look: bool = False) -> AdmitResult:
        known = self._known.get(req.client_id)
        ov = self._overrides.get(req.client_id)
        expired = ov is not None and ov[2] <= time.time()
        if expired:
            # the override expired since the last read, as its key in Redis has; what this process remembers of
            # the client (the last hot path's answer) held it too: it ends now, not when Redis is back
            assert ov is not None
            if known is not None and known[1] == ov[0]:
                known = (0 if ov[1] is not None and known[0] == ov[1] else known[0], None)
            ov = None
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
            local = AdmitRequest(req.client_id, req.tokens, (lim,), req.state_ttl_s, req.lease, req.lease_s)
            res = await (self._local.peek(local) if look else self._local.hot_path(local))
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

    async def reconcile_tokens(self, client_id: str, reserved: int, actual: int, limits: Limits,
                               until_us: float | None = None, lease: str = "") -> None:
        if lease and self.mode == "local" and self._local.holds_leases:
            # a slot taken in-process during an outage goes back there, whichever store answers now (one taken
            # in the shared store and not given back there for an outage expires with its lease)
            self._local.release_lease(client_id, lease)
        try:
            await self._call("reconcile_tokens", lambda: self.inner.reconcile_tokens(client_id, reserved, actual,
                                                                                     limits, until_us, lease))
        except NotServed:
            if self.mode == "local" and self.degraded:  # (see save_client_state)
                await self._local.reconcile_tokens(
                    client_id, reserved, actual, divide_limits(limits, self._replicas), until_us)

    async def renew_leases(self, leases: Sequence[tuple[str, str]], lease_s: float) -> None:
        try:
            await self._call("renew_leases", lambda: self.inner.renew_leases(leases, lease_s))
        except NotServed:
            # ``local``: the requests running when the store went away count in-process from now on (this
            # replica's share of the cap applies to them); otherwise nothing counts them until it is back
            if self.mode == "local" and self.degraded:
                await self._local.renew_leases(leases, lease_s)

    # --- per-client state -----------------------------------------------------------------------------------

    async def save_client_state(self, client_id: str, state: bytes, tier: int, score: float, ttl_s: float) -> None:
        known = self._known.get(client_id)
        if known is not None and known[1] is None:
            self._remember(client_id, max(known[0], tier), None)  # keep a raised tier even through an outage
        try:
            await self._call("save_client_state",
                             lambda: self.inner.save_client_state(client_id, state, tier, score, ttl_s))
        except NotServed:
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
        except NotServed:
            # While degraded there is no shared state to merge with: the copy is kept as save_client_state
            # keeps it (in process memory in ``local`` mode, nowhere otherwise) and counts as written.
            if self.mode == "local" and self.degraded:
                await self._local.save_client_state(client_id, state, tier, score, ttl_s)
            return True, None

    async def set_override(self, client_id: str, override: Override | None, tier: int | None, ttl_s: float) -> None:
        try:
            await self._call("set_override", lambda: self.inner.set_override(client_id, override, tier, ttl_s))
        except NotServed:
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
        except NotServed:
            raise ServiceUnavailable("The state store is unavailable.", code="store_unavailable") from None

    async def get_client_state(self, client_id: str) -> bytes | None:
        try:
            return await self._call("get_client_state", lambda: self.inner.get_client_state(client_id))
        except NotServed:
            raise ServiceUnavailable("The state store is unavailable.", code="store_unavailable") from None

    async def link_sketches(self, client_id: str, sketches: Sequence[int], ttl_s: float) -> dict[str, int]:
        try:
            return await self._call("link_sketches", lambda: self.inner.link_sketches(client_id, sketches, ttl_s))
        except NotServed:
            return {}

    # --- alerts, recipients, leases, blobs --------------------------------------------------------------------

    async def append_alert(self, alert_json: str, max_len: int) -> None:
        try:
            await self._call("append_alert", lambda: self.inner.append_alert(alert_json, max_len))
        except NotServed:
            return

    async def recent_alerts(self, count: int) -> list[str]:
        try:
            return await self._bulk("recent_alerts", lambda: self.inner.recent_alerts(count))
        except NotServed:
            raise ServiceUnavailable("The state store is unavailable.", code="store_unavailable") from None

    async def append_audit(self, record_json: str, max_len: int) -> None:
        # Not dropped like an alert: the audit trail keeps the record pending and counts the failure.
        try:
            await self._call("append_audit", lambda: self.inner.append_audit(record_json, max_len))
        except NotServed:
            raise ServiceUnavailable("The state store is unavailable; the audit record was not stored.",
                                     code="store_unavailable") from None

    async def recent_audit(self, count: int) -> list[str]:
        try:
            return await self._bulk("recent_audit", lambda: self.inner.recent_audit(count))
        except NotServed:
            raise ServiceUnavailable("The state store is unavailable.", code="store_unavailable") from None

    def _queue_recipient(self, client_id: str, key_version: int, ttl_s: float) -> None:
        key = (client_id, key_version)
        self._pending[key] = max(ttl_s, self._pending.get(key, 0.0))
        if len(self._pending) > _PENDING_MAX:
            self._pending.popitem(last=False)

    async def _replay_recipients(self) -> None:
        while self._pending and self._degraded_since is None:
            (client, version), ttl = self._pending.popitem(last=False)
            try:
                await self._call("add_recipient", partial(self.inner.add_recipient, client, version, ttl))
            except NotServed:
                self._queue_recipient(client, version, ttl)
                return

    async def add_recipient(self, client_id: str, key_version: int, ttl_s: float) -> None:
        try:
            await self._call("add_recipient", lambda: self.inner.add_recipient(client_id, key_version, ttl_s))
        except NotServed:
            self._queue_recipient(client_id, key_version, ttl_s)

    async def recipients(self) -> dict[str, list[int]]:
        try:
            return await self._bulk("recipients", self.inner.recipients)
        except NotServed:
            raise ServiceUnavailable("The state store is unavailable.", code="store_unavailable") from None

    async def acquire_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        try:
            return await self._call("acquire_lease", lambda: self.inner.acquire_lease(name, owner, ttl_s))
        except NotServed:
            return False

    async def get_blob(self, name: str) -> bytes | None:
        try:
            return await self._call("get_blob", lambda: self.inner.get_blob(name))
        except NotServed:
            return None

    async def set_blob(self, name: str, value: bytes, ttl_s: float) -> None:
        try:
            await self._call("set_blob", lambda: self.inner.set_blob(name, value, ttl_s))
        except NotServed:
            return
