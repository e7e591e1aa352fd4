"""The store alert sink: the store's bounded shared alert list that the admin API and dashboard read."""

from __future__ import annotations

from gateway.alerts.model import Alert
from gateway.alerts.sinks.base import Delivery, SinkError
from gateway.store.base import StateStore


def store_degraded(store: StateStore) -> bool:
    """True when the store says it is answering from its failure-mode fallback (``ResilientStore.degraded``).

    Such a store swallows writes (``append_alert`` returns) and refuses leases (``acquire_lease`` is False),
    which for alerts would mean silently lost alerts; callers check this to treat those answers as failures.
    Stores without the notion (memory, a bare Redis store) are never degraded.
    """
    return bool(getattr(store, "degraded", False))


class StoreSink:
    """The shared recent-alerts list (always redacted: any admin may read it)."""

    def __init__(self, store: StateStore, max_len: int) -> None:
        self.name = "store"
        self.delivery = Delivery(redact=True, max_retries=2, backoff_base_s=0.2, backoff_max_s=2.0)
        self._store = store
        self._max_len = max_len

    async def emit(self, alert: Alert, payload: str) -> None:
        if store_degraded(self._store):
            raise SinkError("the state store is degraded; the shared alert list cannot be written")
        await self._store.append_alert(payload, self._max_len)
        if store_degraded(self._store):  # this very write failed and flipped the store to degraded
            raise SinkError("the state store became unavailable while appending the alert")

    async def close(self) -> None:
        return None
