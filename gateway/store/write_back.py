"""The write-back: in ``local`` mode, the tiers detection raised during an outage, carried into the shared store.

``ResilientStore``'s probe runs it once Redis answers again, before the store is declared available.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from redis.exceptions import ResponseError

from gateway.store.failure_modes import OUTAGE, FailureMode, ProbedStore
from gateway.store.memory import MemoryStore
from gateway.store.resp import is_unavailable_reply

log = logging.getLogger(__name__)

_WRITE_BACK_BATCH = 64  # escalated client states written back to Redis at once on recovery


class WriteBack:
    """Writing the outage's escalations back (a base of ``ResilientStore``, whose ``__init__`` sets the
    attributes)."""

    inner: ProbedStore
    mode: FailureMode
    _local: MemoryStore
    _timeout: float

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
                    if isinstance(r, OUTAGE) and not (isinstance(r, ResponseError) and not is_unavailable_reply(r)):
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
