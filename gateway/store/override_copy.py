"""The override copy: every client's administrator override, read from the shared store for the failure modes.

In ``open`` and ``local`` mode an overridden client keeps its override while the shared store is away, also a
client this process has not answered yet: ``ResilientStore`` keeps a copy of the inner store's override index,
read at start-up (in the background) and every ``overrides_refresh_s``, and ``set_override`` applies its own
edits to it at once (``gateway.store.failure_modes``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from gateway.store.base import Override
from gateway.store.failure_modes import OUTAGE, ProbedStore

log = logging.getLogger(__name__)

OVERRIDES_REFRESH_S = 30.0  # how often each process re-reads every client's override (for outages)


class OverrideCopy:
    """Reading the override index (a base of ``ResilientStore``, whose ``__init__`` sets the attributes)."""

    inner: ProbedStore
    _interval: float
    _closed: bool
    _degraded_since: float | None
    _overrides: dict[str, tuple[Override | None, int | None, float]]
    _overrides_refresh_s: float
    _overrides_logged: bool
    _overrides_edits: dict[str, tuple[Override | None, int | None, float] | None] | None

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
            if not self._overrides_logged and not isinstance(e, OUTAGE):
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
