"""``MemoryStore``: the embedded single-process ``StateStore`` (the default, and the ``local`` failure mode).

Same contract as the Redis store (one contract test suite runs both), with the same GCRA code
(``gateway.ratelimit.admit``) that ``lua/hot_path.lua`` ports. Every entry expires: lazy expiry on read and an
incremental sweep at most once a second keep memory proportional to live state (see ``ttlmap``).

The clock is the wall clock anchored once and advanced by ``time.monotonic_ns``: it never runs backwards when
NTP steps the wall clock, which would otherwise refund or freeze rate-limit buckets.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.ratelimit import admit, interval_us, reconcile_tat
from gateway.store import inflight
from gateway.store.base import AdmitRequest, AdmitResult, ClientRecord, Limits, Override
from gateway.store.ttlmap import TtlMap

DEFAULT_MAX_STATE_BYTES = 32 * 1024
MAX_SKETCH_MEMBERS = 32  # clients remembered per prompt sketch (most recent)
ALERTS_TTL_S = 30 * 24 * 3600.0
AUDIT_TTL_S = 400 * 24 * 3600.0  # the audit list outlives a year of quiet; refreshed by every append
_SWEEP_EVERY_US = 1_000_000
_RL_GRACE_US = 1_000_000  # keep a bucket 1 s past full refill (mirrors the Lua script)


def monotonic_wall_clock() -> Callable[[], int]:
    """Microseconds since the epoch that never go backwards."""
    wall0 = time.time_ns() // 1000
    mono0 = time.monotonic_ns()
    return lambda: wall0 + (time.monotonic_ns() - mono0) // 1000


@dataclass(frozen=True, slots=True)
class _State:
    state: bytes
    tier: int
    score: float


@dataclass(frozen=True, slots=True)
class _Override:
    override: Override | None
    tier: int | None


def _ttl_us(ttl_s: float) -> int:
    if ttl_s <= 0:
        raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
    return max(1000, int(ttl_s * 1e6))


def effective_tier(stored: int, pinned: int | None, override: Override | None) -> int:
    if override == "allow":
        return 0
    return max(0, pinned if pinned is not None else stored)


def check_state(state: bytes, tier: int, max_bytes: int) -> None:
    if len(state) > max_bytes:
        raise ValueError(f"client state is {len(state)} bytes, above the {max_bytes}-byte limit")
    if tier < 0:
        raise ValueError(f"tier must be >= 0, got {tier}")


class MemoryStore:
    def __init__(
        self,
        *,
        max_state_bytes: int = DEFAULT_MAX_STATE_BYTES,
        max_clients: int = 1_000_000,
        max_sketches: int = 2_000_000,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self._clock = clock or monotonic_wall_clock()
        self._max_state = max_state_bytes
        self._rl: TtlMap[str, tuple[float, float]] = TtlMap(max_clients)  # client → (TAT requests, TAT tokens)
        self._state: TtlMap[str, _State] = TtlMap(max_clients)
        self._ovr: TtlMap[str, _Override] = TtlMap(max_clients)
        self._sketch: TtlMap[int, OrderedDict[str, None]] = TtlMap(max_sketches)
        self._recip: TtlMap[tuple[str, int], None] = TtlMap(max_clients)
        self._lease: TtlMap[str, str] = TtlMap(10_000)
        self._blob: TtlMap[str, bytes] = TtlMap(10_000)
        # client → {lease: deadline µs} (gateway.store.inflight); the entry expires with its latest deadline
        self._inflight: TtlMap[str, dict[str, float]] = TtlMap(max_clients)
        self._alerts: deque[str] = deque()
        self._alerts_expire = 0.0
        self._audit: deque[str] = deque()
        self._audit_expire = 0.0
        self._maps = (self._rl, self._state, self._ovr, self._sketch, self._recip, self._lease, self._blob,
                      self._inflight)
        self._next_sweep = 0.0

    def _now(self) -> int:
        now = self._clock()
        if now >= self._next_sweep:
            self._next_sweep = now + _SWEEP_EVERY_US
            for m in self._maps:
                m.sweep(now)
        return now

    def stored_tier(self, client_id: str) -> int:
        """The detector tier written for a client (0 when none); used by the ``local`` failure mode."""
        st = self._state.get(client_id, self._now())
        return st.tier if st is not None else 0

    # --- hot path ------------------------------------------------------------------------------------------

    async def hot_path(self, req: AdmitRequest) -> AdmitResult:
        now = self._now()
        cid = req.client_id
        ov = self._ovr.get(cid, now)
        st = self._state.get(cid, now)
        override = ov.override if ov is not None else None
        tier = effective_tier(st.tier if st is not None else 0, ov.tier if ov is not None else None, override)
        tier = min(tier, len(req.limits_by_tier) - 1)
        if st is not None and req.state_ttl_s > 0:
            exp = self._state.expires_at(cid, now) or 0.0
            self._state.touch(cid, max(exp, now + req.state_ttl_s * 1e6))  # extend, never shorten
        tats = self._rl.get(cid, now) or (0.0, 0.0)
        lim = req.limits_by_tier[tier]
        a = admit(tats[0], tats[1], now, req.tokens, lim, deny=override == "deny")
        cap, held, slot = lim.max_in_flight, 0, False
        if a.allowed and cap > 0 and req.lease:
            leases = self._inflight.get(cid, now)
            if leases is None:
                leases = {}
            lease_us = req.lease_s * 1e6 if req.lease_s > 0.001 else 1000.0  # (_ttl_us, inlined)
            d = inflight.take(leases, req.lease, now, cap, lease_us)
            held, slot = d.held, d.allowed
            if d.allowed:
                deadline = now + lease_us
                until = self._inflight.expires_at(cid, now)
                self._inflight.set(cid, leases, deadline if until is None or until < deadline else until)
            else:  # the buckets are reported as they stand (uncharged), as for any refusal
                a = admit(tats[0], tats[1], now, req.tokens, lim, deny=True)
        if a.allowed:
            self._rl.set(cid, (a.tat_requests_us, a.tat_tokens_us),
                         max(a.tat_requests_us, a.tat_tokens_us) + _RL_GRACE_US)
        return AdmitResult(
            allowed=a.allowed,
            tier=tier,
            override=override,
            requests=a.requests,
            tokens=a.tokens,
            detector_state=st.state if st is not None else None,
            now=now / 1e6,
            slot=slot,
            in_flight=held,
            in_flight_limit=cap,
        )

    async def peek(self, req: AdmitRequest) -> AdmitResult:
        """``hot_path``'s answer, nothing written (``lua/peek.lua`` ports it)."""
        now = self._now()
        cid = req.client_id
        ov = self._ovr.get(cid, now)
        st = self._state.get(cid, now)
        override = ov.override if ov is not None else None
        tier = effective_tier(st.tier if st is not None else 0, ov.tier if ov is not None else None, override)
        tier = min(tier, len(req.limits_by_tier) - 1)
        tats = self._rl.get(cid, now) or (0.0, 0.0)
        lim = req.limits_by_tier[tier]
        a = admit(tats[0], tats[1], now, req.tokens, lim, deny=override == "deny")
        cap, held = lim.max_in_flight, 0
        if a.allowed and cap > 0:
            held = inflight.live(self._inflight.get(cid, now), now)
            if held >= cap:
                a = admit(tats[0], tats[1], now, req.tokens, lim, deny=True)
        return AdmitResult(allowed=a.allowed, tier=tier, override=override, requests=a.requests, tokens=a.tokens,
                           detector_state=None, now=now / 1e6, in_flight=held, in_flight_limit=cap)

    async def reconcile_tokens(self, client_id: str, reserved: int, actual: int, limits: Limits,
                               until_us: float | None = None, lease: str = "") -> None:
        now = self._now()
        if lease:
            leases = self._inflight.get(client_id, now)
            if leases is not None:
                inflight.release(leases, lease)
        # A negative usage (a buggy or hostile backend) would refund other in-flight reservations too.
        delta = max(0, actual) - reserved
        if delta == 0:
            return
        tats = self._rl.get(client_id, now)
        if tats is None:
            if delta < 0:
                return  # the bucket already refilled completely; nothing to give back
            tats = (0.0, 0.0)
        tat_k = reconcile_tat(tats[1], now, delta, interval_us(limits.tokens_per_minute), until_us)
        self._rl.set(client_id, (tats[0], tat_k), max(tats[0], tat_k, now) + _RL_GRACE_US)

    def release_lease(self, client_id: str, lease: str) -> bool:
        """Give back one in-flight slot (``reconcile_tokens``'s ``lease``); True when it was held here."""
        leases = self._inflight.get(client_id, self._now())
        return leases is not None and inflight.release(leases, lease)

    @property
    def holds_leases(self) -> bool:
        """Any client has (or recently had) requests in flight recorded here."""
        return len(self._inflight) > 0

    def in_flight(self, client_id: str) -> int:
        """The client's live leases (admin and tests)."""
        now = self._now()
        leases = self._inflight.get(client_id, now)
        if leases is None:
            return 0
        inflight.prune(leases, now)
        return len(leases)

    async def renew_leases(self, leases: Sequence[tuple[str, str]], lease_s: float) -> None:
        now = self._now()
        lease_us = _ttl_us(lease_s)
        for client_id, lease in leases:
            held = self._inflight.get(client_id, now)
            if held is None:
                held = {}
            inflight.renew(held, lease, now, lease_us)
            exp = self._inflight.expires_at(client_id, now) or 0.0
            self._inflight.set(client_id, held, max(exp, now + lease_us))

    # --- per-client state and overrides ---------------------------------------------------------------------

    async def save_client_state(self, client_id: str, state: bytes, tier: int, score: float, ttl_s: float) -> None:
        check_state(state, tier, self._max_state)
        now = self._now()
        self._state.set(client_id, _State(bytes(state), tier, float(score)), now + _ttl_us(ttl_s))

    async def swap_client_state(self, client_id: str, expect: bytes | None, state: bytes, tier: int, score: float,
                                ttl_s: float) -> tuple[bool, bytes | None]:
        check_state(state, tier, self._max_state)
        now = self._now()
        cur = self._state.get(client_id, now)
        held = cur.state if cur is not None and cur.state else None  # an empty state reads as none
        if held is not expect and held != (expect or None):  # the same object nearly always: no 7 KB compare
            return False, held
        self._state.set(client_id, _State(bytes(state), tier, float(score)), now + _ttl_us(ttl_s))
        return True, None

    def escalated_states(self) -> list[tuple[str, bytes, int, float, float]]:
        """Live detector states above tier 0, as ``(client, state, tier, score, ttl_s)``: what the ``local``
        failure mode writes back to the shared store on recovery (a snapshot: safe to await between items)."""
        now = self._now()
        out = []
        for cid, st in self._state.items(now):
            exp = self._state.expires_at(cid, now)
            if st.tier > 0 and exp is not None:
                out.append((cid, st.state, st.tier, st.score, (exp - now) / 1e6))
        return out

    def drop_client_states(self) -> int:
        """Forget every client's detector state; returns how many there were. For the ``local`` failure mode's
        store when the shared store is back: the copies written during the outage are never read again (the
        shared store is authoritative) and would otherwise sit here for their whole TTL (7 days by default, up
        to ``max_state_bytes`` each), or be resumed, stale, in the next outage."""
        n = len(self._state)
        self._state.clear()
        return n

    async def set_override(self, client_id: str, override: Override | None, tier: int | None, ttl_s: float) -> None:
        now = self._now()
        if override is None and tier is None:
            self._ovr.pop(client_id)
            return
        if tier is not None and tier < 0:
            raise ValueError(f"tier must be >= 0, got {tier}")
        self._ovr.set(client_id, _Override(override, tier), now + _ttl_us(ttl_s))

    async def get_client(self, client_id: str) -> ClientRecord | None:
        now = self._now()
        st = self._state.get(client_id, now)
        ov = self._ovr.get(client_id, now)
        if st is None and ov is None:
            return None
        override = ov.override if ov is not None else None
        pinned = ov.tier if ov is not None else None
        stored = st.tier if st is not None else 0
        exp = self._ovr.expires_at(client_id, now)
        return ClientRecord(
            client_id=client_id,
            tier=effective_tier(stored, pinned, override),
            override=override,
            score=st.score if st is not None else 0.0,
            detector_tier=stored,
            pinned_tier=pinned,
            override_ttl_s=(exp - now) / 1e6 if exp is not None else None,
        )

    async def get_client_state(self, client_id: str) -> bytes | None:
        st = self._state.get(client_id, self._now())
        return st.state or None if st is not None else None

    # --- cross-account linking --------------------------------------------------------------------------

    async def link_sketches(self, client_id: str, sketches: Sequence[int], ttl_s: float) -> dict[str, int]:
        now = self._now()
        exp = now + _ttl_us(ttl_s)
        shared: dict[str, int] = {}
        for sk in dict.fromkeys(sketches):  # each distinct sketch once, order kept
            members = self._sketch.get(sk, now)
            if members is None:
                members = OrderedDict()
            else:
                for other in members:
                    if other != client_id:
                        shared[other] = shared.get(other, 0) + 1
            members[client_id] = None
            members.move_to_end(client_id)
            while len(members) > MAX_SKETCH_MEMBERS:
                members.popitem(last=False)
            self._sketch.set(sk, members, exp)
        return shared

    # --- alerts, recipients, leases, blobs --------------------------------------------------------------

    async def append_alert(self, alert_json: str, max_len: int) -> None:
        now = self._now()
        if self._alerts_expire <= now:
            self._alerts.clear()
        self._alerts.appendleft(alert_json)
        while len(self._alerts) > max(1, max_len):
            self._alerts.pop()
        self._alerts_expire = now + ALERTS_TTL_S * 1e6

    async def recent_alerts(self, count: int) -> list[str]:
        if self._alerts_expire <= self._now():
            self._alerts.clear()
        return list(self._alerts)[: max(0, count)]

    async def append_audit(self, record_json: str, max_len: int) -> None:
        now = self._now()
        if self._audit_expire <= now:
            self._audit.clear()
        self._audit.appendleft(record_json)
        while len(self._audit) > max(1, max_len):
            self._audit.pop()
        self._audit_expire = now + AUDIT_TTL_S * 1e6

    async def recent_audit(self, count: int) -> list[str]:
        if self._audit_expire <= self._now():
            self._audit.clear()
        return list(itertools.islice(self._audit, max(0, count)))

    async def add_recipient(self, client_id: str, key_version: int, ttl_s: float) -> None:
        now = self._now()
        key = (client_id, key_version)
        exp = now + _ttl_us(ttl_s)
        self._recip.set(key, None, max(exp, self._recip.expires_at(key, now) or 0.0))

    async def recipients(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for (client, version), _ in self._recip.items(self._now()):
            out.setdefault(client, []).append(version)
        return {c: sorted(v) for c, v in out.items()}

    async def acquire_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        now = self._now()
        holder = self._lease.get(name, now)
        if holder is not None and holder != owner:
            return False
        self._lease.set(name, owner, now + _ttl_us(ttl_s))
        return True

    async def get_blob(self, name: str) -> bytes | None:
        return self._blob.get(name, self._now())

    async def set_blob(self, name: str, value: bytes, ttl_s: float) -> None:
        now = self._now()
        self._blob.set(name, bytes(value), now + _ttl_us(ttl_s))

    async def close(self) -> None:
        return None
