"""The canary controller: drives the sans-IO state machine (``canary.py``) with time, stats and commands.

With a shared store (several gateway replicas), exactly one replica decides:

- every replica publishes its **cumulative** observations of the canary (``canary:<model>:obs:<owner>``)
  and registers in ``canary:<model>:members``; cumulative counters mean a missed or late read loses no
  data, it only lands in the next window (the leader diffs each replica's series, as Prometheus' rate());
- the replica holding the lease ``canary:<model>`` gathers all replicas' observations at each analysis,
  runs the state machine and publishes the state to ``canary:<model>:state``;
- every other replica reads that state each poll and applies the same weights, so all replicas split the
  traffic the same way;
- an operator command (abort/promote/...) is applied at once on the replica that received it, written to
  the state blob, and also left in ``canary:<model>:cmd`` for the leader to apply at its next poll, so a
  concurrent leader write cannot undo it.

Without a store the controller is its own leader. Store errors are logged once per change of state and the
controller keeps going: routing keeps the last weights it had.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from gateway.config import CanaryConfig
from gateway.errors import ServiceUnavailable
from gateway.routing import canary
from gateway.routing.canary import CanaryState, Op, Phase, Transition
from gateway.routing.pool import Pool
from gateway.routing.window import OutcomeWindow
from gateway.store.base import StateStore

if TYPE_CHECKING:
    from gateway.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

STATE_TTL_S = 7 * 24 * 3600.0


def _not_saved(op: Op, *, unconfirmed: bool = False) -> ServiceUnavailable:
    what = ("the state store did not confirm the canary command {!r}: it was NOT applied here and may not reach "
            "the other replicas (a write that timed out may still land; check GET /admin/routing)" if unconfirmed
            else "the state store is unavailable; the canary command {!r} was NOT applied")
    return ServiceUnavailable(
        what.format(op.value).capitalize() + ". Retry when the store is back, or change the rollout in the config "
        "and reload.", code="store_unavailable")


class CanaryController:
    def __init__(
        self,
        pool: Pool,
        *,
        store: StateStore | None = None,
        owner: str | None = None,
        wall: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
        state: CanaryState | None = None,
        synced: bool | None = None,
    ) -> None:
        cfg = pool.model.canary
        if cfg is None:
            raise ValueError(f"model {pool.name!r} has no canary")
        self.model = pool.name
        self.cfg: CanaryConfig = cfg
        self.fingerprint = canary.fingerprint(cfg, pool.backends[pool.canary_index or 0].cfg.url)
        self._pool = pool
        self._store = store
        self.owner = owner or uuid.uuid4().hex[:12]
        self._wall = wall
        self._metrics = metrics
        self.poll_s = min(1.0, cfg.analysis.interval_s / 2.0)
        self._lease_ttl = 3.0 * self.poll_s + 0.5
        self.leading = store is None  # alone, it leads; with a store, the lease decides
        # With a store, the rollout's state lives there (it may be aborted, or further on). Until this replica
        # has read it (or taken the lead), the canary gets no traffic: a restarted or new replica must not send
        # a first step's share to a canary the others have aborted, even while the store is unreachable.
        # (``synced=True``: the caller accepts the configured first step until the first poll - a live reload.)
        self.synced = store is None if synced is None else synced
        self._last_seen: dict[str, OutcomeWindow] = {}
        self._gone: set[str] = set()  # members whose observations expired (seen by _gather): dropped next poll
        self._applied_cmd: str | None = None  # the last command this replica applied (as leader or issuer)
        self._awaiting: tuple[str, float] | None = None  # (command id, until): ours, not yet seen applied
        self._store_ok = True
        # With a store, a replica's own start of the rollout is announced (logged, counted as "started") only if
        # it leads before adopting a published state: every replica builds one, and a restarted replica would
        # otherwise log "started, step 1" and count a start for a rollout that is at step 3 (or aborted).
        self._unannounced: tuple[canary.CanaryEvent, ...] = ()
        base = f"canary:{self.model}"
        self._k_lease, self._k_state, self._k_cmd = base, f"{base}:state", f"{base}:cmd"
        self._k_members, self._k_obs = f"{base}:members", f"{base}:obs:{self.owner}"
        if state is not None and state.fingerprint == self.fingerprint:
            self.state = state
        else:
            t = canary.start(cfg, self.fingerprint, wall())
            self.state = t.state
            if store is None:
                self._emit(t.events)
            else:
                self._unannounced = t.events
        self._apply()

    # --- binding to the pool -----------------------------------------------------------------------------

    def rebind(self, pool: Pool) -> None:
        """After a reload that kept this rollout: route the new pool with the current state."""
        self._pool = pool
        self._apply()

    def _apply(self) -> None:
        self._pool.set_canary_weight(self.state.weight if self.synced else 0.0)
        m = self._metrics
        if m is not None:
            for name, share in self._pool.shares().items():
                m.canary_weight.labels(model=self.model, backend=name).set(share * 100.0)
            for phase in Phase:
                m.canary_state.labels(model=self.model, state=phase.value).set(1 if phase is self.state.phase else 0)

    def _emit(self, events: tuple[canary.CanaryEvent, ...], *, count: bool = True) -> None:
        for e in events:
            if self._metrics is not None and count:
                self._metrics.canary_events_total.labels(model=self.model, event=e.kind).inc()
            if e.kind == "analysis_passed":
                log.debug("canary %s: analysis passed at step %d (weight %.1f)", self.model, e.step, e.weight)
            elif e.kind in ("analysis_failed", "aborted"):
                log.warning("canary %s: %s at step %d: %s", self.model, e.kind, e.step + 1, e.detail)
            else:
                log.info("canary %s: %s, step %d, weight %.1f%% (%s)", self.model, e.kind, e.step + 1, e.weight,
                         e.detail)

    def _take(self, t: Transition, *, count: bool = True) -> bool:
        changed = t.state != self.state
        self.state = t.state
        self._emit(t.events, count=count)
        if changed:
            self._apply()
        return changed

    # --- the loop ----------------------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
                self._set_store_ok(True, None)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # store trouble must not stop the rollout's safety loop
                self._set_store_ok(False, e)
            await asyncio.sleep(self.poll_s)

    def _set_store_ok(self, ok: bool, err: Exception | None) -> None:
        if ok != self._store_ok:
            if ok:
                log.info("canary %s: controller works again", self.model)
            else:
                # once per change of state, with the traceback: a store outage and a bug look different
                log.warning("canary %s: controller step failed (%s); the weights stay as they are until it "
                            "works again", self.model, type(err).__name__, exc_info=err)
            self._store_ok = ok

    async def tick(self) -> None:
        """One poll: publish observations, then decide (leader) or follow the published state."""
        now = self._wall()
        store = self._store
        obs = self._pool.canary_obs or OutcomeWindow()
        if store is None:
            await self._lead(now, {self.owner: obs})
            return
        await self._publish_obs(store, obs, now)
        if await store.acquire_lease(self._k_lease, self.owner, self._lease_ttl):
            if not self.leading:
                await self._adopt(store)
                self._emit(self._unannounced)  # no published state of this rollout: this replica started it
                self._unannounced = ()
                # Start the series from what the replicas report now and give the first analysis a full
                # interval, so this leader never judges a window that is partly from before it led. By this
                # replica's clock only: the published times are the previous leader's, and a clock an hour
                # ahead would freeze the rollout (no abort either) for that hour; a step cannot have started
                # in the future either (its hold would not end for that long).
                self._last_seen = {o: w.copy() for o, w in (await self._gather(store)).items()}
                self.state = replace(self.state, next_analysis=now + self.cfg.analysis.interval_s,
                                     step_started=min(self.state.step_started, now))
                self.leading = True
                log.info("canary %s: this replica (%s) now leads the rollout", self.model, self.owner)
            await self._apply_command(store, now)
            if now >= self.state.next_analysis:
                await self._lead(now, await self._gather(store))
                await self._publish_state(store)
        else:
            self.leading = False
            await self._adopt(store)
        # A store that fails soft (the Redis store's resilient wrapper) answers "no lease, no state" while it
        # is down: that is not having read the state, so the canary stays out until it answers again.
        if not self.synced and getattr(store, "degraded", False) is not True:
            self.synced = True
            log.info("canary %s: rollout state read from the store (%s, weight %.1f%%)", self.model,
                     self.state.phase.value, self.state.weight)
            self._apply()

    async def _lead(self, now: float, observations: dict[str, OutcomeWindow]) -> None:
        if now < self.state.next_analysis:
            return
        window = OutcomeWindow()
        for owner, cum in observations.items():
            prev = self._last_seen.get(owner)
            window.merge(cum.minus(prev) if prev is not None else cum)
            self._last_seen[owner] = cum.copy()
        self._take(canary.on_analysis(self.state, self.cfg, window.stats(), now))

    async def _adopt(self, store: StateStore) -> None:
        raw = await store.get_blob(self._k_state)
        if raw is None:
            return
        data = json.loads(raw)
        state = canary.from_json(data)
        if state.fingerprint != self.fingerprint:
            return  # another rollout (config not yet reloaded here, or stale): keep ours
        if self._awaiting is not None:
            cmd_id, until = self._awaiting
            if data.get("applied_cmd") != cmd_id and self._wall() < until:
                return  # a state from before our command (a leader's write raced it): keep ours for now
            self._awaiting = None
        applied = data.get("applied_cmd")
        if applied:
            self._applied_cmd = str(applied)  # reflected in this state: a new leader must not apply it again
        self._unannounced = ()  # the rollout was started elsewhere (or earlier): not by this replica
        self._take(Transition(state, ()))

    async def _gather(self, store: StateStore) -> dict[str, OutcomeWindow]:
        members = await self._members(store)
        out: dict[str, OutcomeWindow] = {}
        for owner in members:
            raw = await store.get_blob(f"canary:{self.model}:obs:{owner}")
            if raw is None:
                # its observations expired (the store's TTL, the store's clock): a replica gone for good
                self._gone.add(owner)
                self._last_seen.pop(owner, None)
                continue
            data = json.loads(raw)
            if data.get("fingerprint") == self.fingerprint:
                out[owner] = OutcomeWindow.from_json(data["obs"])
        return out

    async def _members(self, store: StateStore) -> dict[str, float]:
        raw = await store.get_blob(self._k_members)
        members: dict[str, float] = json.loads(raw) if raw else {}
        return members

    async def _publish_obs(self, store: StateStore, obs: OutcomeWindow, now: float) -> None:
        payload = {"fingerprint": self.fingerprint, "obs": obs.to_json()}
        ttl = max(60.0, 10.0 * self.cfg.analysis.interval_s)
        await store.set_blob(self._k_obs, json.dumps(payload).encode(), ttl)
        # read-modify-write: a lost update only delays a replica's data to the next window (cumulative).
        # Members leave when their observations have expired in the store (found by the leader's gather), not
        # by comparing this replica's clock with the others' timestamps: a replica whose clock runs ahead by
        # more than the TTL would drop every other replica, and as leader analyse only its own traffic.
        members = await self._members(store)
        members[self.owner] = now
        members = {o: t for o, t in members.items() if o not in self._gone or o == self.owner}
        self._gone.clear()
        await store.set_blob(self._k_members, json.dumps(members).encode(), ttl)

    async def _publish_state(self, store: StateStore) -> None:
        payload = canary.to_json(self.state)
        payload["applied_cmd"] = self._applied_cmd
        await store.set_blob(self._k_state, json.dumps(payload).encode(), STATE_TTL_S)

    async def _apply_command(self, store: StateStore, now: float) -> None:
        raw = await store.get_blob(self._k_cmd)
        if raw is None:
            return
        cmd: dict[str, Any] = json.loads(raw)
        if cmd.get("fingerprint") != self.fingerprint:
            if cmd.get("id") is not None:
                # A command for another rollout of this model (an earlier config): this leader's rollout replaced
                # it, so it can never apply. Left in the store (7 days) it would be applied to a later rollout with
                # that earlier config - a revert - at once: a fresh rollout promoted to its last step, or aborted.
                await store.set_blob(self._k_cmd, json.dumps({"id": None, "fingerprint": None}).encode(), STATE_TTL_S)
            return
        if cmd.get("id") == self._applied_cmd:
            return
        self._applied_cmd = str(cmd["id"])
        op, by = Op(cmd["op"]), str(cmd.get("by", "operator"))
        if op is Op.PROMOTE and self.state.phase is Phase.ABORTED and cmd.get("seen") != Phase.ABORTED.value:
            # Issued on a replica that had not yet seen this abort (its operator saw the rollout progressing):
            # applied now it would hand the last step's share to the canary that has just failed its analysis.
            # A promote of a rollout its issuer saw aborted is deliberate, and applies.
            log.warning("canary %s: promote by %s not applied: the rollout was aborted before the command reached "
                        "the leader (restart it, or promote again knowing it was aborted)", self.model, by)
        else:
            # logged here too, but counted in ipgate_canary_events_total by the replica that issued it (once)
            self._take(canary.command(self.state, self.cfg, op, now, by=by), count=False)
        await self._publish_state(store)  # even when nothing changed: the issuer waits to see it applied

    # --- operator commands -------------------------------------------------------------------------------

    async def command(self, op: Op, *, by: str = "operator") -> CanaryState:
        """Apply an operator command here at once and hand it to the leader through the store.

        With a store, a command the store did not take is refused (``ServiceUnavailable``, 503) and changes
        nothing: the resilient store drops writes while Redis is away, and a command applied only here would be
        undone without a word once this replica reads the leader's state again (an "abort" that comes back)."""
        now = self._wall()
        store = self._store
        if store is not None and getattr(store, "degraded", False) is True:
            raise _not_saved(op)
        before, applied_before, awaiting_before = self.state, self._applied_cmd, self._awaiting
        t = canary.command(self.state, self.cfg, op, now, by=by)
        if store is None:
            self._take(t)
            return self.state
        # at once on this replica (events only once the store has the command: a refused one did not happen)
        self._take(Transition(t.state, ()))
        # "seen": the phase the operator's command was issued against (the leader may be further on)
        cmd = {"id": uuid.uuid4().hex, "op": op.value, "by": by, "at": now, "fingerprint": self.fingerprint,
               "seen": before.phase.value}
        cmd_id = str(cmd["id"])
        if self.leading:
            self._applied_cmd = cmd_id  # applied here already; RESTART must not run twice
        else:
            # Until the leader has applied it, a state it wrote before reading the command must not
            # undo our command here (it will be applied at the leader's next poll).
            self._awaiting = (cmd_id, now + 10.0 * self.poll_s + 5.0)

        def undo() -> None:
            if self.state is t.state:  # nothing moved the rollout meanwhile: undo it here too
                self.state, self._applied_cmd, self._awaiting = before, applied_before, awaiting_before
                self._apply()

        try:
            await self._publish_state(store)
            await store.set_blob(self._k_cmd, json.dumps(cmd).encode(), STATE_TTL_S)
            raw = await store.get_blob(self._k_cmd)  # read back: a dropped write answers nothing (or another id)
        except Exception:
            undo()
            raise
        if raw is None or json.loads(raw).get("id") != cmd_id:
            undo()
            raise _not_saved(op, unconfirmed=True)
        self._emit(t.events)
        return self.state

    def snapshot(self) -> dict[str, Any]:
        out = canary.to_json(self.state)
        out.update({"backend": self.cfg.backend, "steps": [s.model_dump() for s in self.cfg.steps],
                    "analysis": self.cfg.analysis.model_dump(), "leader": self.leading, "owner": self.owner})
        return out
