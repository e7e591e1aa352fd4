"""One working copy of each client's detector state while its requests overlap, merged into the store by
compare-and-swap.

Why. A request's detector state is read from the store before it is served and saved after its answer is
done. Each request used to fold itself into its own copy of what it read: two requests of one client that
overlapped both started from the same stored state, and whichever was saved last erased the other's
evidence. A harvester running 16 requests at a time was scored on about one request in 16 (measured through
the gateway: 4 of 60 requests reached the state, and it was never throttled; sequentially it was throttled
after 11). Every distillation pipeline runs its requests concurrently.

How. On one replica, a client's overlapping requests fold into one decoded working copy (``Live``): a request
that finds one uses it, whatever the store handed back (the copy holds everything this replica folded, the
store at most that). Each step (request, response, links) is also logged as an *op* until it is saved.
Saving is a compare-and-swap against the bytes the copy was derived from (``StateStore.swap_client_state``):
when another replica saved in between, the swap hands back the store's state, the logged ops are folded
into it again (``Engine.replay_request`` keeps the turn drawn the first time) and the swap is retried. So no
replica's evidence is lost, and the engine steps are exactly the ones a client whose requests never overlap
has always gone through: its state and verdicts are unchanged, one save per request as before.

One saver per copy at a time: a request accounted while a save is on its way folds in and lets the running
saver write again (saves coalesce under load). A copy with nothing in flight and nothing unsaved leaves the
table and is handed to the engine's cache of decoded states, as every state used to be.

Bounded: at most ``LIVE_CLIENTS`` copies in the table (the oldest is let go beyond that: requests still holding
it finish with it, and the swap merges their work) and ``MAX_OPS`` unsaved ops per copy (more only pile up
while the store refuses every save; the oldest are then dropped, logged once and counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from detectors.engine import Engine
from detectors.state import header_tier
from detectors.state_codec import Pending
from detectors.types import RequestFeatures, ResponseFeatures, Verdict
from gateway.store.base import StateStore

log = logging.getLogger(__name__)

LIVE_CLIENTS = 4096  # working copies kept (clients with requests in flight or a save on its way)
MAX_OPS = 512  # unsaved steps kept per copy (only a store refusing every save lets them pile up)
MAX_SWAPS = 8  # compare-and-swap attempts in a row (each one merges another replica's save) before a pause
BACKOFF_ROUNDS = 4  # pauses before a save gives up (its steps stay logged for the next one)


@dataclass(slots=True)
class Live:
    """A client's working copy: ``pending`` is its decoded state, ``base`` the stored bytes it was derived
    from or last saved as (what this replica believes the store holds), ``ops`` the steps folded in since."""

    client_id: str
    pending: Pending
    base: bytes | None
    ops: list[tuple[Any, ...]] = field(default_factory=list)
    inflight: int = 0  # requests of this client folded in and not accounted yet
    saving: bool = False
    again: bool = False  # a step arrived while a save was on its way: save again after it
    dropped_ops: int = 0
    # the weights its last request was passed explicitly (None: judged by the plans the state records, which
    # the merged state's own verdict follows too)
    weights: Mapping[str, float] | None = None


@dataclass(frozen=True, slots=True)
class MergeRise:
    """A save that merged another replica's state wrote a tier above both the copy's and the other replica's:
    the rise happened in the merge, where no request's verdict shows it (so no request would alert for it).
    ``prior``: the higher of those two tiers; ``tier``: the tier written; ``verdict``: the written state's own
    (``Engine.peek``: its reasons and detectors), None when it could not be computed."""

    prior: int
    tier: int
    verdict: Verdict | None


class SnapshotFailed(Exception):
    """The engine could not serialise a working copy (``__cause__`` says why); nothing was saved."""


class LiveStates:
    """The table of working copies of one gateway process (one event loop; not thread-safe)."""

    def __init__(self, engine: Engine, ttl_s: float) -> None:
        self.engine = engine
        self.ttl_s = ttl_s
        self._table: OrderedDict[str, Live] = OrderedDict()
        self._logged_drop = False
        self.merges = 0  # saves that met another replica's save and merged with it (a metric)
        self.dropped = 0  # unsaved steps let go (a metric)

    def __len__(self) -> int:
        return len(self._table)

    # --- the request path (pure CPU) -------------------------------------------------------------------------

    def begin(self, client_id: str, stored: bytes | None) -> Live:
        """The client's working copy for a new request (one more in flight)."""
        live = self._table.get(client_id)
        if live is None:
            live = Live(client_id, self.engine.open(stored), stored or None)
            self._table[client_id] = live
            if len(self._table) > LIVE_CLIENTS:
                self._table.popitem(last=False)  # its requests finish with it; the swap merges their work
        else:
            self._table.move_to_end(client_id)
        live.inflight += 1
        return live

    def fold_request(self, live: Live, feats: RequestFeatures, now: float, hold: bool = False,
                     weights: Mapping[str, float] | None = None, plan: str | None = None) -> Verdict:
        """``Engine.fold_request`` into the copy; the step is logged with its plan, so that a merge with
        another replica's save records the plan in the merged state too (and judges by the union of both)."""
        v = self.engine.fold_request(live.pending, feats, now, hold, weights, plan)
        live.weights = weights
        read = live.pending.read
        self._log(live, ("r", _light(read if read is not None else feats), now, hold, weights, plan))
        return v

    def restart(self, live: Live, feats: RequestFeatures, now: float, hold: bool = False,
                weights: Mapping[str, float] | None = None, plan: str | None = None) -> Verdict:
        """After the engine failed to fold the request into this copy: fold it into a fresh state, which then
        replaces the copy (the next save writes it; what the copy held is given up, as a stored state the
        engine cannot read is). When the engine fails on the fresh state too, the request is at fault, not the
        state: the copy is put back as it was before the failed fold (from the bytes it was derived from and
        its logged steps, without what that fold left half-done) and the error raised. An unscored request
        changes nothing; a fresh copy left behind was folded into by the client's next request and saved over
        its stored state (one such request reset a blocked client)."""
        fresh = self.engine.open(None)
        try:
            v = self.engine.fold_request(fresh, feats, now, hold, weights, plan)
        except Exception:
            # (when the engine cannot even replay, the copy stays as the failed fold left it)
            with contextlib.suppress(Exception):
                self._rebase(live, live.base)
            raise
        live.pending = fresh
        live.weights = weights
        live.ops.clear()
        read = fresh.read
        self._log(live, ("r", _light(read if read is not None else feats), now, hold, weights, plan))
        return v

    def discard(self, live: Live) -> None:
        """Let a copy go unsaved (the engine cannot serialise it)."""
        if self._table.get(live.client_id) is live:
            del self._table[live.client_id]
        live.ops.clear()

    def abandon(self, live: Live) -> None:
        """A request that folded in will not be accounted (its scoring failed half-way)."""
        live.inflight -= 1
        if live.inflight <= 0 and not live.saving and not live.ops and self._table.get(live.client_id) is live:
            del self._table[live.client_id]  # nothing to save: the client's next request reads the store

    # --- after the answer ----------------------------------------------------------------------------------

    def fold_response(self, live: Live, resp: ResponseFeatures, now: float) -> None:
        self.engine.fold_response(live.pending, resp, now)
        self._log(live, ("s", resp, now))

    def fold_links(self, live: Live, shared: dict[str, int], now: float, peer_scores: dict[str, float]
                   ) -> tuple[tuple[str, ...], float]:
        out = self.engine.fold_links(live.pending, shared, now, peer_scores)
        self._log(live, ("l", shared, peer_scores, now))
        return out

    async def done(self, store: StateStore, live: Live, max_tier: int, now: float | None = None
                   ) -> MergeRise | None:
        """One request of ``live`` is accounted: save what it folded in (and whatever else is unsaved). The
        saver learns of a tier that rose in a merge with another replica's save (``MergeRise``; ``now``: when
        its verdict is computed, None: not computed)."""
        live.inflight -= 1
        if live.saving:
            live.again = True  # the running saver writes it
            return None
        live.saving = True
        try:
            rise = await self._save(store, live, max_tier, now)
        finally:
            live.saving = False
        if live.inflight <= 0 and not live.ops:
            self._retire(live)
        return rise

    async def _save(self, store: StateStore, live: Live, max_tier: int, now: float | None = None
                    ) -> MergeRise | None:
        engine, swaps = self.engine, 0
        risen_from: int | None = None  # the tier reported before a merge raised it (None: no merge raised it)
        while True:
            live.again = False
            try:
                data = engine.snapshot(live.pending)
            except Exception as e:
                # nothing valid to save: the store keeps the client's previous state, and the next request
                # starts from it rather than from this copy
                self.discard(live)
                raise SnapshotFailed(str(e)) from e
            # the last step the snapshot holds, by identity: the log may be trimmed (MAX_OPS) or cleared
            # (``restart``) while the swap is on its way, so a count of steps would cut unsaved ones
            last = live.ops[-1] if live.ops else None
            tier, score = live.pending.tier_score()
            written, current = await store.swap_client_state(
                live.client_id, live.base, data, min(tier, max_tier), score, self.ttl_s)
            if written:
                live.base = data
                _cut_through(live.ops, last)  # steps folded in while the swap was on its way stay unsaved
                if not live.again:
                    return self._merge_rise(risen_from, min(tier, max_tier), data, now, live.weights)
                continue
            swaps += 1
            self.merges += 1
            # Both sides' tiers were reported (by this copy's verdicts, by the other replica's); a tier above
            # both is reached only by the merged evidence, and only this saver can tell the security team.
            reported = max(live.pending.tier_score()[0], header_tier(current))
            self._rebase(live, current)
            merged = live.pending.tier_score()[0]
            if merged > reported:
                risen_from = reported if risen_from is None else min(risen_from, reported)
            if swaps % MAX_SWAPS == 0:
                if swaps >= MAX_SWAPS * BACKOFF_ROUNDS:
                    # Other replicas save this client faster than this one can merge: give up this time; the
                    # steps stay logged and the next request's save merges them.
                    log.debug("client %s: state not saved after %d merges", live.client_id, swaps)
                    return None  # (a rise in the unsaved merge shows in the next request's verdict on the copy)
                # let the other replicas' saves land, then merge once more (a random pause: two replicas
                # backing off in step would meet again)
                await asyncio.sleep(random.uniform(0.002, 0.01) * swaps / MAX_SWAPS)

    def _merge_rise(self, risen_from: int | None, tier: int, data: bytes, now: float | None,
                    weights: Mapping[str, float] | None = None) -> MergeRise | None:
        if risen_from is None or tier <= risen_from:
            return None
        verdict = None
        if now is not None:
            try:  # ``data`` is in no cache yet (``snapshot``): decoding it here takes nothing from a request
                verdict = self.engine.peek(data, now, weights)
            except Exception as e:  # the alert goes out with the saving request's reasons instead
                log.warning("detection: the merged state's verdict could not be computed: %r", e)
        return MergeRise(risen_from, tier, verdict)

    def _rebase(self, live: Live, current: bytes | None) -> None:
        """Fold the unsaved steps into the store's newer state (another replica's save)."""
        engine = self.engine
        try:
            p = engine.open(current)
        except Exception:  # a stored state the engine cannot open (the request path went on afresh too): replaced
            p = engine.open(None)
        # a detector that raised on a logged response (or link) step raises again when it is replayed: counted
        # once, when it happened (the metric counts occurrences, not merges)
        late = dict(engine.late_errors)
        try:
            for op in live.ops:
                kind = op[0]
                if kind == "r":
                    engine.replay_request(p, op[1], op[2], op[3], op[4], op[5])
                elif kind == "s":
                    engine.fold_response(p, op[1], op[2])
                else:
                    engine.fold_links(p, op[1], op[3], op[2])
        finally:
            engine.late_errors.clear()
            engine.late_errors.update(late)
        live.pending, live.base = p, current

    def _retire(self, live: Live) -> None:
        if self._table.get(live.client_id) is live:
            del self._table[live.client_id]
            if live.base is not None:
                self.engine.retire(live.pending, live.base)  # the next request reading these bytes decodes nothing

    def _log(self, live: Live, op: tuple[Any, ...]) -> None:
        ops = live.ops
        ops.append(op)
        if len(ops) > MAX_OPS:
            del ops[0]
            live.dropped_ops += 1
            self.dropped += 1
            if not self._logged_drop:
                self._logged_drop = True
                log.warning("client %s: more than %d detection steps could not be saved (the store refuses the "
                            "saves); the oldest are dropped if another replica's state must be merged (logged "
                            "once; ipgate_detection_state_merges_total{outcome=\"dropped\"} counts them)",
                            live.client_id, MAX_OPS)


def _cut_through(ops: list[tuple[Any, ...]], last: tuple[Any, ...] | None) -> None:
    """Remove the saved steps: ``ops`` up to and including ``last`` (none when it is gone already)."""
    if last is None:
        return
    for i in range(len(ops) - 1, -1, -1):
        if ops[i] is last:
            del ops[: i + 1]
            return


def _light(read: RequestFeatures) -> RequestFeatures:
    """A request's features as the step log keeps them: without the texts of its earlier chat turns (a replay
    never draws again, it only needs the turn read), which could be most of a long conversation's size."""
    return dataclasses.replace(read, history=()) if read.history else read
