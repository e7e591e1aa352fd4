"""Per-client requests in flight: slots held as leases that expire. Pure logic, no I/O.

The memory store runs :func:`take` / :func:`release` / :func:`renew` on a dict per client, and
``lua/hot_path.lua`` (admission), ``lua/reconcile.lua`` (release) and ``lua/renew.lua`` (renewal) port them
onto one sorted set per client (member = lease id, score = deadline); the contract tests hold both stores to
the same answers. :class:`LeaseBook` is the replica's side: the leases it holds, for renewal.

Rules:

1. A client's requests in flight are its live leases: a lease is live until its deadline (store clock, µs).
   Admission admits iff fewer than ``cap`` are live, recording the new lease with deadline ``now + lease``;
   when ``cap`` or more are recorded it first drops those whose deadline has passed (below the cap they
   cannot change the answer, so the common case skips the pruning). ``cap`` 0 means no limit: nothing is
   recorded.
2. A lease is released by its id when the request ends, however it ends; releasing a lease that is gone
   (expired, never recorded, released already) does nothing, so a release may be sent whenever in doubt.
3. A request has no upper bound on its duration (a stream ends when the model stops; only the idle timeout
   bounds it), so a fixed lease would either be too short (a long stream stops counting and its client goes
   over the cap unseen) or so long that a replica that died leaves its slots taken for hours. Instead the
   replica that holds a request renews its lease every third of the lease period while it runs. Two
   renewals in a row must fail (a store outage) before a running request stops counting, and a renewal of a
   lease that expired meanwhile records it again. A replica that died stops renewing: its slots are free at
   most one lease period later.
4. Lease ids are unique per request across replicas (a random replica prefix and a counter), never the
   client's ``X-Request-Id``: a client sending one id on every request would otherwise hold one slot only.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(slots=True)  # not frozen: built on every capped admission, frozen __init__ costs ~3x
class SlotDecision:
    allowed: bool
    held: int  # live leases after the decision (this one included when allowed)


def prune(leases: dict[str, float], now_us: float) -> None:
    """Drop the leases whose deadline has passed (in place). A deadline equal to now has passed."""
    if leases:
        for lease in [k for k, deadline in leases.items() if deadline <= now_us]:
            del leases[lease]


def live(leases: dict[str, float] | None, now_us: float) -> int:
    """How many of ``leases`` are still live at ``now_us`` (``prune``'s rule, nothing removed: a look)."""
    return sum(1 for deadline in leases.values() if deadline > now_us) if leases else 0


def take(leases: dict[str, float], lease: str, now_us: float, cap: int, lease_us: float) -> SlotDecision:
    """Rule 1: admit ``lease`` if fewer than ``cap`` leases are live; ``cap`` 0 records nothing."""
    if cap <= 0 or not lease:
        return SlotDecision(True, 0)
    held = len(leases)
    if held >= cap:  # only here can an expired lease change the answer: prune where it decides (one command
        prune(leases, now_us)  # less in the Lua port's common case); below the cap ``held`` may count a few
        held = len(leases)  # expired leases, never more than ``cap`` of them
    if held >= cap:
        return SlotDecision(False, held)
    leases[lease] = now_us + lease_us
    return SlotDecision(True, held + 1)


def release(leases: dict[str, float], lease: str) -> bool:
    """Rule 2: True when the lease was live here."""
    return leases.pop(lease, None) is not None


def renew(leases: dict[str, float], lease: str, now_us: float, lease_us: float) -> None:
    """Rule 3: the lease lives ``lease_us`` from now, recorded again if it had expired; never shortened."""
    deadline = now_us + lease_us
    if leases.get(lease, 0.0) < deadline:
        leases[lease] = deadline


def renew_every_s(lease_s: float) -> float:
    """How often the holder renews: a third of the lease, so two renewals may fail before it lapses."""
    return lease_s / 3.0


class LeaseBook:
    """The leases this replica holds, by id (rule 4 names them): what its renewal loop renews."""

    __slots__ = ("_held", "_ids", "_prefix")

    def __init__(self, prefix: str | None = None) -> None:
        self._prefix = prefix if prefix is not None else secrets.token_hex(6) + ":"
        self._ids = itertools.count(1)
        self._held: dict[str, str] = {}  # lease -> client id

    def new_id(self) -> str:
        return f"{self._prefix}{next(self._ids)}"

    def hold(self, lease: str, client_id: str) -> None:
        self._held[lease] = client_id

    def drop(self, lease: str) -> None:
        self._held.pop(lease, None)

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, lease: object) -> bool:
        return lease in self._held

    def held(self) -> list[tuple[str, str]]:
        """A snapshot of ``(client_id, lease)`` pairs (safe to await while renewing them)."""
        return [(client, lease) for lease, client in self._held.items()]

    def by_client(self) -> Iterator[tuple[str, list[str]]]:
        """The held leases grouped by client (one renewal call per client's key)."""
        groups: dict[str, list[str]] = {}
        for lease, client in self._held.items():
            groups.setdefault(client, []).append(lease)
        yield from groups.items()
