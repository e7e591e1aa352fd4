"""The ``StateStore`` contract: the few atomic operations the request pipeline needs.

Rules every implementation keeps (the contract test suite checks them on both):
- ``hot_path`` is **one** round trip: it reads the client's stored tier/override and detector state, runs GCRA
  on requests and on reserved tokens at the limits of the client's effective tier, takes a slot among the
  client's requests in flight when that tier caps them (``gateway.store.inflight``), and returns all of it.
- ``peek`` is one read-only round trip: what ``hot_path`` would answer for the same request now, writing nothing.
- A slot taken is given back by ``reconcile_tokens(..., lease=)`` when the request ends, kept alive by
  ``renew_leases`` while it runs, and expires by itself otherwise (a replica that died with it).
- Every key written has a TTL. The store's clock (Redis ``TIME``) decides shared limits.
- Tiers are small ints: 0 is the most trusted tier; the gateway's policy maps ints to names and actions.
- Overrides: ``"allow"`` pins tier 0 and skips detection blocks; ``"deny"`` blocks; ``None`` none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

Override = Literal["allow", "deny"]


@dataclass(frozen=True, slots=True)
class Limits:
    """One tier's limits: GCRA emission interval and burst, for requests and for tokens; the in-flight cap."""

    requests_per_minute: float
    tokens_per_minute: float
    burst_requests: int
    burst_tokens: int
    max_in_flight: int = 0  # requests in flight at once (all replicas); 0: no limit, nothing recorded


@dataclass(slots=True)  # not frozen: built on every request (a frozen __init__ costs ~3x); never mutated
class AdmitRequest:
    client_id: str
    tokens: int  # reserved up front: prompt estimate + max_tokens (x n)
    limits_by_tier: Sequence[Limits]  # index = tier int
    state_ttl_s: float = 7 * 24 * 3600.0
    lease: str = ""  # this request's unique in-flight lease id ("" takes no slot)
    lease_s: float = 120.0  # how long the slot lives unless renewed (StoreConfig.in_flight_lease_s)


@dataclass(slots=True)  # not frozen: built on every request (a frozen __init__ costs ~3x); never mutated
class RateDecision:
    allowed: bool
    limit: int  # burst size (RateLimit-Limit)
    remaining: int  # RateLimit-Remaining
    reset_s: float  # seconds until the bucket is full again (RateLimit-Reset)
    retry_after_s: float  # 0 when allowed


@dataclass(slots=True)  # not frozen: built on every request (a frozen __init__ costs ~3x); never mutated
class AdmitResult:
    allowed: bool  # both requests and tokens admitted (and not denied by override)
    tier: int  # effective tier (after override)
    override: Override | None
    requests: RateDecision
    tokens: RateDecision
    detector_state: bytes | None  # the client's serialized detector state, None when new
    now: float  # store clock, unix seconds
    degraded: bool = False  # answered by the failure-mode fallback, not the store
    unavailable: bool = False  # refused only because the store could not decide (failure_mode "closed")
    slot: bool = False  # a slot among the client's requests in flight was taken: give it back at the end
    in_flight: int = 0  # the client's requests in flight, this one included when admitted (0: not counted)
    in_flight_limit: int = 0  # the cap that applied (0: none)

    @property
    def too_many_in_flight(self) -> bool:
        """Refused by the in-flight cap alone (both rate limits would have admitted it)."""
        return (not self.allowed and self.in_flight_limit > 0 and self.in_flight >= self.in_flight_limit
                and self.override != "deny" and not self.unavailable)

    @property
    def tokens_until_us(self) -> float:
        """The tokens bucket's TAT after this admission (store clock, µs): when time alone has repaid the
        reservation; ``reconcile_tokens`` gives back only what of it is still ahead."""
        return round(self.now * 1e6) + round(self.tokens.reset_s * 1e6)


@dataclass(frozen=True, slots=True)
class ClientRecord:
    client_id: str
    tier: int  # effective tier, as hot_path would apply it (allow → 0, else pinned, else detector)
    override: Override | None
    score: float
    detector_tier: int = 0  # the tier detection last wrote
    pinned_tier: int | None = None  # an administrator's tier pin
    override_ttl_s: float | None = None  # seconds until the override/pin expires (None: no override)


class StateStore(Protocol):
    async def hot_path(self, req: AdmitRequest) -> AdmitResult: ...

    async def peek(self, req: AdmitRequest) -> AdmitResult:
        """What ``hot_path(req)`` would answer now, changing nothing: no bucket charged, no slot taken (whatever
        ``req.lease``), no TTL extended. ``detector_state`` is None (not read); ``slot`` is False; ``in_flight``
        counts the client's live leases (this request not included) when its tier caps them. For a refusal
        before a request's body is read (``Expect: 100-continue``): the real admission follows the body."""

    async def reconcile_tokens(self, client_id: str, reserved: int, actual: int, limits: Limits,
                               until_us: float | None = None, lease: str = "") -> None:
        """Give back (or charge more) tokens once the real usage is known. ``until_us`` (store clock, µs): the
        tokens TAT the reservation was admitted with (``AdmitResult.tokens_until_us``); a give-back returns only
        the part of the reservation still ahead of now (time has repaid the rest). None: no bound. ``lease``:
        the request's in-flight slot, given back in the same call (a lease gone already is no error)."""

    async def renew_leases(self, leases: Sequence[tuple[str, str]], lease_s: float) -> None:
        """Push the deadline of each ``(client_id, lease)`` in flight to now + ``lease_s`` (one that expired
        meanwhile is counted again: the request is still running)."""

    async def save_client_state(self, client_id: str, state: bytes, tier: int, score: float, ttl_s: float) -> None:
        """Write the detector state and tier that the next ``hot_path`` for this client reads."""

    async def swap_client_state(self, client_id: str, expect: bytes | None, state: bytes, tier: int, score: float,
                                ttl_s: float) -> tuple[bool, bytes | None]:
        """``save_client_state`` only if the stored state is still ``expect`` (None: no state stored), atomically.
        Returns (True, None) when written, else (False, the state stored now) for the caller to merge with."""

    async def set_override(self, client_id: str, override: Override | None, tier: int | None, ttl_s: float) -> None:
        """Admin: allowlist/denylist a client, or pin its tier (``tier``); ``None`` clears."""

    async def get_client(self, client_id: str) -> ClientRecord | None: ...

    async def get_client_state(self, client_id: str) -> bytes | None:
        """Admin: the client's stored detector state (what ``hot_path`` hands the next request); None: none."""

    async def link_sketches(self, client_id: str, sketches: Sequence[int], ttl_s: float) -> dict[str, int]:
        """Add the client's prompt sketches to the account-agnostic table; return other clients that share
        sketches with it and how many (Blacklight-style cross-account linking)."""

    async def append_alert(self, alert_json: str, max_len: int) -> None: ...

    async def recent_alerts(self, count: int) -> list[str]: ...

    async def append_audit(self, record_json: str, max_len: int) -> None:
        """Push an admin-audit record onto the shared capped list (newest first, at most ``max_len``)."""

    async def recent_audit(self, count: int) -> list[str]: ...

    async def add_recipient(self, client_id: str, key_version: int, ttl_s: float) -> None:
        """Record that a client received watermarked output under a key version."""

    async def recipients(self) -> dict[str, list[int]]: ...

    async def acquire_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        """Take or renew a named lease (for once-per-cluster duties such as canary analysis)."""

    async def get_blob(self, name: str) -> bytes | None: ...

    async def set_blob(self, name: str, value: bytes, ttl_s: float) -> None: ...

    async def close(self) -> None: ...
