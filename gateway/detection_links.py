"""Cross-account linking through the store, for one request's accounting: which other accounts sent the same
prompt sketches (a hydra campaign filling one template), and their stored scores.

A store fault skips linking for that request (its state is still saved) and is logged once per change of
state, never per request: the store's own metrics count the fault.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from gateway.config import DetectionConfig
from gateway.store.base import StateStore

log = logging.getLogger(__name__)

MAX_PEERS_SCORED = 16  # linked peers whose stored score is read to score a cluster


class Links:
    """The store's sketch links for a client's requests, with the failing/available state of the last try."""

    __slots__ = ("_cfg", "_failing")

    def __init__(self, cfg: DetectionConfig) -> None:
        self._cfg = cfg
        self._failing = False

    async def link(self, store: StateStore, client_id: str, sketches: tuple[int, ...]
                   ) -> tuple[dict[str, int], dict[str, float]]:
        """Cross-account linking through the store; a store fault skips linking for this request (the state
        is still saved) and is logged once per change of state."""
        try:
            shared = await store.link_sketches(client_id, sketches, self._cfg.state_ttl_s)
            peer_scores = await _peer_scores(store, shared) if shared else {}
        except Exception as e:  # the store's own metrics count the fault; detection goes on without links
            if not self._failing:
                self._failing = True
                log.warning("cross-account linking unavailable (%s: %s); scoring without it", type(e).__name__, e)
            return {}, {}
        if self._failing:
            self._failing = False
            log.info("cross-account linking available again")
        return shared, peer_scores


async def _peer_scores(store: StateStore, shared: Mapping[str, int]) -> dict[str, float]:
    """The stored scores of the peers sharing the most sketches (bounded; unknown peers score 0)."""
    peers = sorted(shared, key=lambda p: -shared[p])[:MAX_PEERS_SCORED]
    records = await asyncio.gather(*(store.get_client(p) for p in peers))
    return {p: (r.score if r is not None else 0.0) for p, r in zip(peers, records, strict=True)}
