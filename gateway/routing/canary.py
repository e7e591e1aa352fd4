"""The canary rollout state machine (sans-IO): pure functions of (state, window stats, now).

Rule 1: everything that decides a canary's weight lives here; the controller only feeds it time, stats and
operator commands, and publishes what comes out. The semantics follow Argo Rollouts and Flagger:

- ``steps`` is a list of (weight, hold_s). The canary starts at the first step's weight.
- Every ``analysis.interval_s`` the canary's outcomes in that window are analysed: error rate against
  ``max_error_rate`` and p99 latency against ``max_p99_ms``. Fewer than ``min_requests`` requests is a
  **failed** analysis: no data is never taken for good news.
- Once the current step has been held for ``hold_s``, a passed analysis moves the canary to the next step,
  and past the last step the rollout is **promoted** (the canary keeps the last step's weight; a last step
  of 100 hands it all the traffic).
- ``failure_limit`` failed analyses over the whole rollout **abort** it, whether or not passes came between
  them (Argo's ``failureLimit`` counts the run's failures; a count that a pass reset would promote a canary
  that fails every other window). 0 and 1 both mean the first failure aborts, as Argo's
  ``failureLimit: 0``: the canary goes to weight 0 and the stable backends keep 100 % - the last known good.
  Promoted and aborted are terminal until an operator restarts the rollout (which starts a new count).
- Operators may pause (analysis still runs and may still abort; steps do not advance), resume, promote
  (skip to the end), abort, or restart.

Times are wall-clock unix seconds so that a state published by one replica means the same on another.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from gateway.config import CanaryAnalysisConfig, CanaryConfig
from gateway.routing.window import WindowStats

HISTORY_LEN = 50


class Phase(StrEnum):
    PROGRESSING = "progressing"
    PAUSED = "paused"
    PROMOTED = "promoted"
    ABORTED = "aborted"


class Op(StrEnum):
    ABORT = "abort"
    PROMOTE = "promote"
    PAUSE = "pause"
    RESUME = "resume"
    RESTART = "restart"


@dataclass(frozen=True, slots=True)
class CanaryEvent:
    at: float
    kind: str  # started | analysis_passed | analysis_failed | step | promoted | aborted | paused | resumed
    step: int
    weight: float
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Analysis:
    ok: bool
    reason: str
    stats: WindowStats


@dataclass(frozen=True, slots=True)
class CanaryState:
    fingerprint: str  # identifies the rollout (backend, url, steps, analysis); a new one restarts it
    phase: Phase
    step: int
    weight: float  # the canary's share of the pool's traffic, in percent
    step_started: float
    failures: int  # failed analyses in this rollout
    next_analysis: float
    last: Analysis | None = None
    history: tuple[CanaryEvent, ...] = ()

    @property
    def active(self) -> bool:
        return self.phase in (Phase.PROGRESSING, Phase.PAUSED)


@dataclass(frozen=True, slots=True)
class Transition:
    state: CanaryState
    events: tuple[CanaryEvent, ...]


def fingerprint(cfg: CanaryConfig, backend_url: str) -> str:
    blob = json.dumps([cfg.model_dump(mode="json"), backend_url], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _with(state: CanaryState, events: list[CanaryEvent], **changes: Any) -> Transition:
    # Only state changes and failures go into the bounded history; passed analyses are counted, not kept.
    kept = tuple(e for e in events if e.kind != "analysis_passed")
    history = (state.history + kept)[-HISTORY_LEN:]
    return Transition(replace(state, history=history, **changes), tuple(events))


def start(cfg: CanaryConfig, fp: str, now: float) -> Transition:
    first = cfg.steps[0].weight
    state = CanaryState(
        fingerprint=fp, phase=Phase.PROGRESSING, step=0, weight=first, step_started=now, failures=0,
        next_analysis=now + cfg.analysis.interval_s,
    )
    return _with(state, [CanaryEvent(now, "started", 0, first, f"{len(cfg.steps)} steps")])


def analyze(cfg: CanaryAnalysisConfig, stats: WindowStats) -> Analysis:
    if stats.requests < cfg.min_requests:
        return Analysis(False, f"no data: {stats.requests} requests < min_requests {cfg.min_requests}", stats)
    if stats.error_rate > cfg.max_error_rate:
        return Analysis(
            False, f"error rate {stats.error_rate:.4f} > max_error_rate {cfg.max_error_rate}", stats
        )
    if stats.p99_ms is not None and stats.p99_ms > cfg.max_p99_ms:
        return Analysis(False, f"p99 {stats.p99_ms:.1f} ms > max_p99_ms {cfg.max_p99_ms}", stats)
    return Analysis(True, "passed", stats)


def on_analysis(state: CanaryState, cfg: CanaryConfig, stats: WindowStats, now: float) -> Transition:
    """Analyse one window and move the rollout on, hold it, or abort it."""
    if not state.active:
        return Transition(state, ())
    result = analyze(cfg.analysis, stats)
    nxt = now + cfg.analysis.interval_s
    if not result.ok:
        failures = state.failures + 1
        events = [CanaryEvent(now, "analysis_failed", state.step, state.weight, result.reason)]
        if failures >= max(1, cfg.analysis.failure_limit):
            detail = f"{failures} failed analyses in this rollout; last: {result.reason}"
            events.append(CanaryEvent(now, "aborted", state.step, 0.0, detail))
            return _with(
                state, events, phase=Phase.ABORTED, weight=0.0, failures=failures, next_analysis=nxt, last=result
            )
        return _with(state, events, failures=failures, next_analysis=nxt, last=result)
    events = [CanaryEvent(now, "analysis_passed", state.step, state.weight)]
    held = now - state.step_started >= cfg.steps[state.step].hold_s
    if state.phase is Phase.PAUSED or not held:
        return _with(state, events, next_analysis=nxt, last=result)
    if state.step + 1 < len(cfg.steps):
        step = state.step + 1
        weight = cfg.steps[step].weight
        events.append(CanaryEvent(now, "step", step, weight, f"step {step + 1}/{len(cfg.steps)}"))
        return _with(state, events, step=step, weight=weight, step_started=now, next_analysis=nxt, last=result)
    events.append(CanaryEvent(now, "promoted", state.step, state.weight, "all steps passed"))
    return _with(state, events, phase=Phase.PROMOTED, next_analysis=nxt, last=result)


def command(state: CanaryState, cfg: CanaryConfig, op: Op, now: float, *, by: str = "operator") -> Transition:
    """Apply an operator command. Commands that do not apply to the current phase change nothing."""
    last_weight = cfg.steps[-1].weight
    if op is Op.ABORT and state.phase is not Phase.ABORTED:
        ev = CanaryEvent(now, "aborted", state.step, 0.0, f"aborted by {by}")
        return _with(state, [ev], phase=Phase.ABORTED, weight=0.0)
    if op is Op.PROMOTE and state.phase is not Phase.PROMOTED:
        last = len(cfg.steps) - 1
        ev = CanaryEvent(now, "promoted", last, last_weight, f"promoted by {by}")
        return _with(state, [ev], phase=Phase.PROMOTED, step=last, weight=last_weight, failures=0)
    if op is Op.PAUSE and state.phase is Phase.PROGRESSING:
        return _with(state, [CanaryEvent(now, "paused", state.step, state.weight, f"paused by {by}")],
                     phase=Phase.PAUSED)
    if op is Op.RESUME and state.phase is Phase.PAUSED:
        # the hold of the current step starts again: a pause must not count as time under observation
        ev = CanaryEvent(now, "resumed", state.step, state.weight, f"resumed by {by}")
        return _with(state, [ev], phase=Phase.PROGRESSING, step_started=now)
    if op is Op.RESTART:
        fresh = start(cfg, state.fingerprint, now)
        history = (state.history + fresh.state.history)[-HISTORY_LEN:]
        return Transition(replace(fresh.state, history=history), fresh.events)
    return Transition(state, ())


# --- serialisation for the shared store (one JSON blob per model) -------------------------------------------

def _event_json(e: CanaryEvent) -> dict[str, Any]:
    return {"at": e.at, "kind": e.kind, "step": e.step, "weight": e.weight, "detail": e.detail}


def _analysis_json(a: Analysis | None) -> dict[str, Any] | None:
    if a is None:
        return None
    s = a.stats
    return {"ok": a.ok, "reason": a.reason, "requests": s.requests, "errors": s.errors, "p99_ms": s.p99_ms}


def to_json(state: CanaryState) -> dict[str, Any]:
    return {
        "fingerprint": state.fingerprint, "phase": state.phase.value, "step": state.step, "weight": state.weight,
        "step_started": state.step_started, "failures": state.failures, "next_analysis": state.next_analysis,
        "last_analysis": _analysis_json(state.last), "history": [_event_json(e) for e in state.history],
    }


def from_json(data: dict[str, Any]) -> CanaryState:
    last = data.get("last_analysis")
    analysis = None
    if last is not None:
        stats = WindowStats(int(last["requests"]), int(last["errors"]), last["p99_ms"])
        analysis = Analysis(bool(last["ok"]), str(last["reason"]), stats)
    return CanaryState(
        fingerprint=str(data["fingerprint"]), phase=Phase(data["phase"]), step=int(data["step"]),
        weight=float(data["weight"]), step_started=float(data["step_started"]), failures=int(data["failures"]),
        next_analysis=float(data["next_analysis"]), last=analysis,
        history=tuple(
            CanaryEvent(float(e["at"]), str(e["kind"]), int(e["step"]), float(e["weight"]), str(e["detail"]))
            for e in data["history"]
        ),
    )
