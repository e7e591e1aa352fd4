"""The renewal of this process's in-flight leases (``max_in_flight`` slots) while their requests run.

A request holds its slot as a lease that expires (``gateway.store.inflight``, rule 3): this loop pushes the
deadline of every lease in ``ctx.leases`` forward every third of ``store.in_flight_lease_s``, in one store call
per client. A process that dies stops renewing, and its slots are free one lease period later at most.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from gateway.store.base import Limits, StateStore
from gateway.store.inflight import LeaseBook, renew_every_s

log = logging.getLogger(__name__)
RENEW_CLIENTS_PER_CALL = 128  # clients per renewal call (each its own Lua call; ~5 ms of Redis and of this loop)
_NO_LIMITS = Limits(1.0, 1.0, 1, 1)  # a release without tokens to reconcile (its rate goes unread)


class LeaseRenewer:
    def __init__(self, store: StateStore, book: LeaseBook, lease_s: Callable[[], float]) -> None:
        """``lease_s``: read on every round (a reload may change ``store.in_flight_lease_s``)."""
        self._store = store
        self._book = book
        self._lease_s = lease_s
        self._task: asyncio.Task[None] | None = None
        self._failed_logged = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="inflight-lease-renewal")

    async def renew_once(self) -> int:
        """Renew every lease held now; returns how many. A failure is logged (once until a round succeeds);
        the store wrapper counts it (``store_failures_total{op="renew_leases"}``) and applies the failure mode.

        The round goes in slices of at most ``RENEW_CLIENTS_PER_CALL`` clients, one store call each, one after
        the other: all at once, the calls of a few thousand clients outlasted the store's deadline (50 ms) on
        their own, and the store was taken for down every round. A lease whose request ended before its slice
        is sent is left out."""
        held = self._book.held()
        if not held:
            return 0
        lease_s = self._lease_s()
        by_client: dict[str, list[str]] = {}
        for client_id, lease in held:
            by_client.setdefault(client_id, []).append(lease)
        clients = list(by_client)
        try:
            for i in range(0, len(clients), RENEW_CLIENTS_PER_CALL):
                part = [(c, lease) for c in clients[i:i + RENEW_CLIENTS_PER_CALL] for lease in by_client[c]
                        if lease in self._book]
                if part:
                    await self._store.renew_leases(part, lease_s)
        except Exception:
            if not self._failed_logged:
                self._failed_logged = True
                log.exception("renewing %d in-flight leases failed; they expire unless a later round succeeds",
                              len(held))
            return 0
        self._failed_logged = False
        await self._release_ended(held)
        return len(held)

    async def _release_ended(self, held: list[tuple[str, str]]) -> None:
        """Give back again the leases whose request ended while this round was on its way: a release written
        before the round's call for its client was undone by it (``ZADD`` records a lease it does not find), and
        that lease, no longer renewed, would hold its client's slot for a whole lease period."""
        for client_id, lease in held:
            if lease not in self._book:
                try:
                    await self._store.reconcile_tokens(client_id, 0, 0, _NO_LIMITS, None, lease)
                except Exception:
                    log.exception("giving back an in-flight lease after its renewal failed")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(renew_every_s(self._lease_s()))
            await self.renew_once()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
