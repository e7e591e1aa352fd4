"""A model's pool of backends: sticky weighted choice, concurrency caps and passive health (ejection).

- **Concurrency cap**: a backend at ``max_concurrency`` in-flight requests is skipped; when every backend
  the client could use is full the pool answers ``ServiceUnavailable`` at once. Nothing ever queues: a queue
  in a gateway hides overload from the client and from the autoscaler.
- **Passive health**: ``health.consecutive_failures`` failed requests in a row eject a backend for
  ``ejection_base_s * 2**k`` seconds (capped at ``ejection_max_s``; ``k`` counts ejections since the backend
  last stayed healthy for ``ejection_max_s``). When the time is up the backend is half-open: exactly one
  trial request at a time goes to it; success reinstates it, failure ejects it again for twice as long.
- **Active health** (``health.py``) flips ``healthy``; an unhealthy backend gets no traffic.
- **Quarantine** (``quarantine``/``release_quarantine``, used by the fingerprint checker and operators): a
  backend that does not serve the model it claims gets no traffic until it is released. Unlike an ejection
  it has no timer and no half-open trial: a request's success says nothing about which weights answered.
- **KGW plugin** (``gateway/kgw_probe.py``, run by ``health.py``): a ``watermark_capable`` backend watermarks
  in its engine only while the last probe *verified* its plugin (``engine_watermark``, taken with each lease);
  until then, after a failed probe, and while the probe gets no answer, its responses get the lexical
  watermark post hoc. One log line per change (ERROR when a verdict fails), counted in
  ``ipgate_watermark_plugin_probe_failures_total`` and shown by ``ipgate_watermark_plugin_ok``.
- **Canary weight**: with a canary configured, the canary gets the rollout's current weight (percent) and
  the other backends share the rest in proportion to their configured weights. The canary's outcomes are
  accumulated (cumulatively, mergeable across replicas) for the rollout's analysis.

Outcomes decide health: the pipeline reports ``ok=False`` for connection errors, timeouts and 5xx answers,
``ok=True`` for anything the backend answered deliberately (2xx-4xx). Clocks are injectable.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.config import BackendConfig, HealthConfig, ModelConfig
from gateway.errors import ServiceUnavailable
from gateway.routing.hashing import WeightTable
from gateway.routing.window import OutcomeWindow

if TYPE_CHECKING:
    from gateway.kgw_probe import PluginVerdict
    from gateway.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass(slots=True)  # not frozen: built on every request (a frozen __init__ costs ~3x); never mutated
class Outcome:
    ok: bool
    status: int | None
    latency_s: float
    error: str | None = None


class BackendState:
    """Mutable per-backend state. Survives a reload when the backend keeps its name and URL, so in-flight
    counts and ejections carry over to the new pool."""

    __slots__ = (
        "cfg", "ejected_until", "ejection_count", "ejections_total", "failures", "healthy", "in_flight",
        "last_error", "plugin_detail", "plugin_logged", "plugin_ok", "plugin_reason", "probation", "quarantine",
        "reinstated_at", "retired", "trial_in_flight",
    )
    # ``ejections_total`` doubles as the ejection generation: a lease remembers it, and an outcome from a
    # lease taken before the latest ejection decides nothing (it describes the backend as it was then).

    def __init__(self, cfg: BackendConfig) -> None:
        self.cfg = cfg
        self.in_flight = 0
        self.failures = 0  # consecutive failed outcomes
        self.ejected_until = 0.0  # > 0: ejected (until then) or half-open (after then)
        self.probation = False  # half-open: one trial request decides
        self.trial_in_flight = False
        self.ejection_count = 0  # exponent of the next backoff
        self.ejections_total = 0
        self.reinstated_at = 0.0
        # a reload removed it (or its model): requests still running on it end in the pool they were taken
        # from, and export nothing (its series were retired; a 0 would stay until a restart and keep the
        # backend alerts firing about a backend that no longer exists)
        self.retired = False
        self.healthy = True  # active health check verdict
        self.last_error: str | None = None
        self.quarantine: str | None = None  # why it is kept out of rotation (fingerprint mismatch), or None
        self.plugin_ok: bool | None = None  # the KGW plugin probe's verdict; None: not probed / no answer
        self.plugin_reason = "unchecked"
        self.plugin_detail: str | None = None
        self.plugin_logged: str | None = None  # the failure reason last logged at ERROR (one line per change)

    def engine_watermark(self) -> bool:
        """Whether this backend's own sampler watermarks (it gets KGW directives and no post-hoc rewrite):
        marked ``watermark_capable`` and, unless ``kgw_probe`` is off, its plugin verified by the last probe."""
        return self.cfg.watermark_capable and (not self.cfg.kgw_probe or self.plugin_ok is True)

    def ejected(self, now: float) -> bool:
        return self.ejected_until > now


def plugin_target(b: BackendConfig) -> tuple[object, ...]:
    """What a KGW plugin verdict is about: the engine the probe reaches (URL, model name, endpoint) and the
    flags that ask for it. A reload that changes any of these drops the verdict and probes again at once."""
    return (b.url, b.upstream_model, b.kgw_probe_endpoint, b.watermark_capable, b.kgw_probe)


class BackendLease:
    """One request's hold on a backend. ``release`` exactly once (further calls are ignored)."""

    __slots__ = ("_done", "_generation", "_pool", "_state", "_trial", "backend", "engine_watermark", "model")

    def __init__(self, pool: Pool, state: BackendState, trial: bool) -> None:
        self.backend: BackendConfig = state.cfg
        # fixed for the request: a verdict that changes mid-request must not switch its scheme half way
        self.engine_watermark = state.engine_watermark()
        self.model = pool.name
        self._pool = pool
        self._state = state
        self._trial = trial
        self._generation = state.ejections_total
        self._done = False

    def release(self, outcome: Outcome) -> None:
        if self._done:
            return
        self._done = True
        self._pool._release(self._state, self._trial, outcome, self._generation)

    def answered(self) -> None:
        """The backend is answering (a stream's first chunk is in). A half-open trial has passed: the backend
        is back for everyone now, not when the stream ends - a long generation would otherwise keep it out
        (a single-backend pool answering 503 to every other client) for as long as one stream runs. The
        lease goes on as an ordinary request whose end is judged like any other."""
        if self._trial and not self._done:
            self._trial = False
            self._pool._trial_passed(self._state)
            self._generation = self._state.ejections_total

    def abandon(self) -> None:
        """Give the slot back without a verdict: the request ended before the backend answered for a reason
        that is not the backend's (the client left, a bug in the gateway). Nothing is learned, so nothing is
        decided: the failure count stays, a half-open backend stays half-open (the next request is its
        trial), and the canary's analysis does not count it - neither as a success nor as a failure."""
        if self._done:
            return
        self._done = True
        self._pool._abandon(self._state, self._trial)


class Pool:
    def __init__(
        self,
        model: ModelConfig,
        health: HealthConfig,
        *,
        clock: Clock = time.monotonic,
        metrics: Metrics | None = None,
        carry: Iterable[BackendState] = (),
    ) -> None:
        self.name = model.name
        self.model = model
        self.health = health
        self.sticky = model.sticky
        self._clock = clock
        self._metrics = metrics
        old = {(s.cfg.name, s.cfg.url): s for s in carry}
        self.backends: list[BackendState] = []
        for b in model.backends:
            state = old.get((b.name, b.url))
            if state is None:
                state = BackendState(b)
            else:
                if plugin_target(state.cfg) != plugin_target(b):
                    # the KGW plugin verdict was about what the old settings reached (another engine behind a
                    # router that dispatches by model name, another endpoint): unchecked until probed again
                    state.plugin_ok, state.plugin_reason, state.plugin_detail = None, "unchecked", None
                    state.plugin_logged = None
                state.cfg = b  # same backend: keep counts and ejection, take the new limits and weight
            self.backends.append(state)
        self._by_name = {s.cfg.name: i for i, s in enumerate(self.backends)}
        self.canary_index: int | None = None
        self.canary_obs: OutcomeWindow | None = None
        self.canary_weight: float | None = None
        if model.canary is not None:
            self.canary_index = self._by_name[model.canary.backend]
            self.canary_obs = OutcomeWindow()
            self.canary_weight = model.canary.steps[0].weight
        self.table = self._build_table()

    # --- weights -----------------------------------------------------------------------------------------

    def _build_table(self) -> WeightTable:
        names = [s.cfg.name for s in self.backends]
        weights = [s.cfg.weight for s in self.backends]
        ci = self.canary_index
        if ci is not None and self.canary_weight is not None:
            others = sum(w for i, w in enumerate(weights) if i != ci)
            weights = [
                self.canary_weight if i == ci else (100.0 - self.canary_weight) * w / others
                for i, w in enumerate(weights)
            ]
        return WeightTable.build(names, weights)

    def set_canary_weight(self, percent: float) -> None:
        if self.canary_index is None:
            raise ValueError(f"model {self.name!r} has no canary")
        if percent != self.canary_weight:
            self.canary_weight = max(0.0, min(100.0, percent))
            self.table = self._build_table()  # one attribute swap: acquire sees the old or the new table

    def shares(self) -> dict[str, float]:
        return dict(zip(self.table.names, self.table.shares, strict=True))

    # --- acquire / release -------------------------------------------------------------------------------

    def acquire(self, client_id: str, exclude: frozenset[str] = frozenset(), *,
                engine_watermark: bool = False) -> BackendLease:
        """A lease on the client's backend (sticky or weighted), skipping ``exclude``; with ``engine_watermark``
        only among backends whose engine watermarks (verified KGW plugin), for an answer that can carry no
        post-hoc watermark."""
        now = self._clock()
        backends = self.backends

        def eligible(i: int) -> bool:
            s = backends[i]
            if not s.healthy or s.quarantine is not None or s.in_flight >= s.cfg.max_concurrency \
                    or s.cfg.name in exclude or (engine_watermark and not s.engine_watermark()):
                return False
            if s.ejected_until:
                return s.ejected_until <= now and not s.trial_in_flight
            return True

        table = self.table
        i = table.pick_sticky(client_id, eligible) if self.sticky else table.pick_random(eligible)
        if i is None:
            raise self._unavailable(now, exclude, engine_watermark)
        state = backends[i]
        trial = False
        if state.ejected_until:
            # half-open: this request is the trial that decides whether the backend comes back
            trial = state.probation = state.trial_in_flight = True
        state.in_flight += 1
        return BackendLease(self, state, trial)

    def _unavailable(self, now: float, exclude: frozenset[str], engine_watermark: bool = False
                     ) -> ServiceUnavailable:
        usable = [
            s for i, s in enumerate(self.backends)
            if self.table.shares[i] > 0 and s.healthy and s.quarantine is None and not s.ejected(now)
            and not s.trial_in_flight and s.cfg.name not in exclude  # half-open, its one trial out: not usable
            and (not engine_watermark or s.engine_watermark())
        ]
        if usable:
            return ServiceUnavailable(
                f"model {self.name!r}: every backend is at its concurrency limit", code="pool_saturated",
                headers={"Retry-After": "1"},  # slots free up as requests finish
            )
        if exclude:
            return ServiceUnavailable(
                f"model {self.name!r}: no other healthy backend to retry on", code="no_healthy_backend"
            )
        # When passive ejections are what keeps the pool out, say when the first one ends (its half-open
        # trial): the openai SDKs honour Retry-After. Unhealthy or quarantined backends have no such time.
        ends = [
            s.ejected_until for i, s in enumerate(self.backends)
            if self.table.shares[i] > 0 and s.healthy and s.quarantine is None and s.ejected(now)
            and (not engine_watermark or s.engine_watermark())
        ]
        headers = {"Retry-After": str(max(1, math.ceil(min(ends) - now)))} if ends else None
        return ServiceUnavailable(f"model {self.name!r}: no healthy backend", code="no_healthy_backend",
                                  headers=headers)

    def _abandon(self, state: BackendState, trial: bool) -> None:
        state.in_flight -= 1
        if trial:
            state.trial_in_flight = False

    def _release(self, state: BackendState, trial: bool, outcome: Outcome, generation: int) -> None:
        state.in_flight -= 1
        ci = self.canary_index
        if ci is not None and self.canary_obs is not None and self.backends[ci] is state:
            self.canary_obs.record(outcome.ok, outcome.latency_s)
        now = self._clock()
        if trial:
            state.trial_in_flight = False
            if outcome.ok:
                self._reinstate(state, now)
            else:
                state.last_error = outcome.error or f"status {outcome.status}"
                self._eject(state, now, "half-open trial failed")
            return
        if state.ejected_until or generation != state.ejections_total:
            # a request from before the ejection: only the half-open trial decides now, and once the trial
            # has reinstated the backend a late timeout from before the ejection must not eject it again
            return
        if outcome.ok:
            state.failures = 0
            return
        state.failures += 1
        state.last_error = outcome.error or f"status {outcome.status}"
        if state.failures >= self.health.consecutive_failures:
            self._eject(state, now, f"{state.failures} consecutive failures")

    def _trial_passed(self, state: BackendState) -> None:
        state.trial_in_flight = False
        self._reinstate(state, self._clock())

    def _eject(self, state: BackendState, now: float, why: str) -> None:
        if state.reinstated_at and now - state.reinstated_at >= self.health.ejection_max_s:
            state.ejection_count = 0  # it stayed healthy long enough: start the backoff afresh
        backoff = min(self.health.ejection_base_s * 2.0**state.ejection_count, self.health.ejection_max_s)
        state.ejection_count += 1
        state.ejections_total += 1
        state.ejected_until = now + backoff
        state.probation = False
        log.warning(
            "model %s: backend %s ejected for %.1fs (%s; last error: %s)%s",
            self.name, state.cfg.name, backoff, why, state.last_error,
            " (a reload removed it: nothing is routed to it)" if state.retired else "",
        )
        if self._metrics is not None and not state.retired:
            self._metrics.backend_ejections_total.labels(model=self.name, backend=state.cfg.name).inc()
            self._metrics.backend_healthy.labels(model=self.name, backend=state.cfg.name).set(0)

    def _reinstate(self, state: BackendState, now: float) -> None:
        state.ejected_until = 0.0
        state.probation = False
        state.failures = 0
        state.reinstated_at = now
        log.info("model %s: backend %s reinstated after a successful trial", self.name, state.cfg.name)
        self._publish_health(state)

    # --- active health -----------------------------------------------------------------------------------

    def set_active_health(self, name: str, healthy: bool, detail: str = "") -> None:
        state = self.backends[self._by_name[name]]
        if state.healthy == healthy:
            return
        state.healthy = healthy
        if healthy:
            log.info("model %s: backend %s passes its health check again", self.name, name)
        else:
            state.last_error = detail
            log.warning("model %s: backend %s marked unhealthy by its health check (%s)", self.name, name, detail)
        self._publish_health(state)

    # --- quarantine --------------------------------------------------------------------------------------

    def state(self, name: str) -> BackendState:
        i = self._by_name.get(name)
        if i is None:
            raise KeyError(name)
        return self.backends[i]

    def quarantine(self, name: str, reason: str) -> bool:
        """Take backend ``name`` out of rotation until released; True when it was not quarantined before."""
        state = self.state(name)
        was = state.quarantine
        state.quarantine = reason
        if was is None:
            log.warning("model %s: backend %s quarantined (%s)", self.name, name, reason)
            self._publish_health(state)
        return was is None

    def release_quarantine(self, name: str, why: str) -> bool:
        """Put a quarantined backend back in rotation; True when it was quarantined."""
        state = self.state(name)
        if state.quarantine is None:
            return False
        state.quarantine = None
        log.info("model %s: backend %s released from quarantine (%s)", self.name, name, why)
        self._publish_health(state)
        return True

    def _publish_health(self, state: BackendState) -> None:
        if self._metrics is not None and not state.retired:
            up = state.healthy and not state.ejected_until and state.quarantine is None
            self._metrics.backend_healthy.labels(model=self.name, backend=state.cfg.name).set(1 if up else 0)

    def publish_all(self) -> None:
        for s in self.backends:
            self._publish_health(s)
            if s.cfg.watermark_capable and s.cfg.kgw_probe and self._metrics is not None:
                self._metrics.watermark_plugin_ok.labels(model=self.name, backend=s.cfg.name).set(
                    1 if s.plugin_ok else 0)

    # --- KGW plugin probe --------------------------------------------------------------------------------

    def set_plugin_verdict(self, name: str, cfg: BackendConfig, verdict: PluginVerdict) -> None:
        """Record a probe of backend ``name`` made with ``cfg``; ignored when a reload changed the backend
        while the probe was out (the next round probes the new one)."""
        i = self._by_name.get(name)
        if i is None or self.backends[i].cfg is not cfg:
            return
        state = self.backends[i]
        before = state.plugin_ok
        state.plugin_ok, state.plugin_reason, state.plugin_detail = verdict.ok, verdict.reason, verdict.detail
        if verdict.ok is False and self._metrics is not None and not state.retired:
            self._metrics.watermark_plugin_probe_failures_total.labels(model=self.name, backend=name).inc()
        if verdict.ok is True:
            state.plugin_logged = None
            if before is not True:
                log.info("model %s: backend %s: KGW plugin verified (%s); its responses are watermarked in the "
                         "engine", self.name, name, verdict.detail)
        elif verdict.ok is False:
            if state.plugin_logged != verdict.reason:  # one ERROR per change of reason, not one per probe
                state.plugin_logged = verdict.reason
                log.error("model %s: backend %s is marked watermark_capable but its KGW plugin check failed: %s; "
                          "its responses get the lexical watermark instead", self.name, name, verdict.detail)
        elif before is True:
            log.warning("model %s: backend %s: KGW plugin no longer verified (%s); its responses get the lexical "
                        "watermark until the probe is answered again", self.name, name, verdict.detail)
        if self._metrics is not None and before is not verdict.ok and not state.retired:
            self._metrics.watermark_plugin_ok.labels(model=self.name, backend=name).set(1 if verdict.ok else 0)

    # --- admin -------------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, object]:
        now = self._clock()
        backends = []
        for s, share in zip(self.backends, self.table.shares, strict=True):
            status = "healthy"
            if s.quarantine is not None:
                status = "quarantined"
            elif not s.healthy:
                status = "unhealthy"
            elif s.ejected(now):
                status = "ejected"
            elif s.ejected_until:
                status = "half-open"
            backends.append({
                "name": s.cfg.name, "url": s.cfg.url, "configured_weight": s.cfg.weight,
                "share_percent": round(share * 100.0, 4), "status": status, "in_flight": s.in_flight,
                "max_concurrency": s.cfg.max_concurrency, "consecutive_failures": s.failures,
                "ejected_for_s": round(max(0.0, s.ejected_until - now), 3), "ejections_total": s.ejections_total,
                "last_error": s.last_error, "quarantine": s.quarantine,
                "watermark_in_engine": s.engine_watermark(), "kgw_plugin": _plugin_status(s),
                "kgw_plugin_detail": s.plugin_detail,
            })
        return {"model": self.name, "sticky": self.sticky, "backends": backends}


def _plugin_status(s: BackendState) -> str | None:
    """For the admin view: None (not watermark-capable), "trusted" (capable, probe off), "unchecked" (not
    probed yet), "verified", "unknown" (the probe got no answer) or the failed verdict's reason."""
    if not s.cfg.watermark_capable:
        return None
    if not s.cfg.kgw_probe:
        return "trusted"
    if s.plugin_ok is None:
        return "unchecked" if s.plugin_reason == "unchecked" else "unknown"
    return s.plugin_reason
