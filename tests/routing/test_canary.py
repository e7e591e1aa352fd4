"""The sans-IO canary state machine: progress, aborts (errors, latency, no data), operator commands."""

from __future__ import annotations

import pytest

from gateway.config import CanaryAnalysisConfig, CanaryConfig, CanaryStep
from gateway.routing import canary
from gateway.routing.canary import Op, Phase
from gateway.routing.window import OutcomeWindow, WindowStats

CFG = CanaryConfig(
    backend="canary",
    steps=[CanaryStep(weight=10, hold_s=60), CanaryStep(weight=50, hold_s=60), CanaryStep(weight=100, hold_s=0)],
    analysis=CanaryAnalysisConfig(interval_s=30, max_error_rate=0.01, max_p99_ms=500, min_requests=20,
                                  failure_limit=2),
)
GOOD = WindowStats(requests=200, errors=1, p99_ms=120.0)
ERRORS = WindowStats(requests=200, errors=20, p99_ms=120.0)
SLOW = WindowStats(requests=200, errors=0, p99_ms=900.0)
EMPTY = WindowStats(requests=3, errors=0, p99_ms=50.0)


def _run(stats: list[WindowStats], cfg: CanaryConfig = CFG) -> tuple[canary.CanaryState, list[str]]:
    t = canary.start(cfg, "fp", 0.0)
    kinds = [e.kind for e in t.events]
    state = t.state
    for s in stats:
        t = canary.on_analysis(state, cfg, s, state.next_analysis)
        state = t.state
        kinds += [e.kind for e in t.events]
    return state, kinds


def test_starts_at_the_first_step() -> None:
    t = canary.start(CFG, "fp", 1000.0)
    assert (t.state.phase, t.state.step, t.state.weight, t.state.next_analysis) == (Phase.PROGRESSING, 0, 10, 1030)
    assert [e.kind for e in t.events] == ["started"]


def test_good_canary_progresses_through_every_step_and_is_promoted() -> None:
    weights = []
    t = canary.start(CFG, "fp", 0.0)
    state = t.state
    for _ in range(10):
        state = canary.on_analysis(state, CFG, GOOD, state.next_analysis).state
        weights.append((state.phase, state.weight))
    # t=30 hold not met, t=60 -> step 2 (50 %), t=90 hold, t=120 -> step 3 (100 %), t=150 -> promoted
    assert weights[:5] == [
        (Phase.PROGRESSING, 10), (Phase.PROGRESSING, 50), (Phase.PROGRESSING, 50),
        (Phase.PROGRESSING, 100), (Phase.PROMOTED, 100),
    ]
    assert all(w == (Phase.PROMOTED, 100) for w in weights[5:])  # terminal
    assert [e.kind for e in state.history] == ["started", "step", "step", "promoted"]


def test_promotion_keeps_the_last_step_weight_when_it_is_below_100() -> None:
    cfg = CFG.model_copy(update={"steps": [CanaryStep(weight=5, hold_s=0), CanaryStep(weight=25, hold_s=0)]})
    state, kinds = _run([GOOD, GOOD], cfg)
    assert (state.phase, state.weight) == (Phase.PROMOTED, 25)
    assert kinds == ["started", "analysis_passed", "step", "analysis_passed", "promoted"]


@pytest.mark.parametrize(("bad", "reason"), [(ERRORS, "error rate"), (SLOW, "p99"), (EMPTY, "no data")])
def test_failure_limit_failures_abort_to_weight_zero(bad: WindowStats, reason: str) -> None:
    state, kinds = _run([GOOD, GOOD, bad])  # at step 2 (50 %) when it goes bad
    assert (state.phase, state.weight, state.failures) == (Phase.PROGRESSING, 50, 1)
    assert state.last is not None and reason in state.last.reason
    state, kinds = _run([GOOD, GOOD, bad, bad])
    assert (state.phase, state.weight) == (Phase.ABORTED, 0)
    assert kinds[-2:] == ["analysis_failed", "aborted"]
    assert reason in state.history[-1].detail
    # terminal: good data afterwards changes nothing (last known good stays)
    after = canary.on_analysis(state, CFG, GOOD, state.next_analysis)
    assert after.state == state and after.events == ()


def test_no_data_is_never_success() -> None:
    zero = WindowStats(requests=0, errors=0, p99_ms=None)
    state, _ = _run([zero, zero])
    assert state.phase is Phase.ABORTED
    assert "no data" in state.history[-1].detail


def test_failures_count_over_the_whole_rollout_not_only_in_a_row() -> None:
    # a pass between two failures does not forgive the first: the second one reaches failure_limit = 2
    state, _ = _run([ERRORS, GOOD, ERRORS])
    assert (state.phase, state.weight, state.failures) == (Phase.ABORTED, 0, 2)
    assert "2 failed analyses in this rollout" in state.history[-1].detail


def test_a_canary_that_fails_every_other_window_is_never_promoted() -> None:
    # steps with no hold: a count that passes reset would walk this canary to 100 % and promote it
    fast = CFG.model_copy(update={"steps": [CanaryStep(weight=w, hold_s=0) for w in (10, 25, 50, 75, 100)]})
    state, kinds = _run([GOOD, ERRORS] * 8, fast)
    assert state.phase is Phase.ABORTED and "promoted" not in kinds


def test_a_restart_starts_a_new_count() -> None:
    state, _ = _run([ERRORS, GOOD])
    assert state.failures == 1
    restarted = canary.command(state, CFG, canary.Op.RESTART, state.next_analysis).state
    assert restarted.failures == 0 and restarted.phase is Phase.PROGRESSING


def test_a_failed_analysis_does_not_advance_a_step() -> None:
    cfg = CFG.model_copy(update={"analysis": CFG.analysis.model_copy(update={"failure_limit": 5})})
    state, _ = _run([ERRORS, ERRORS, ERRORS], cfg)  # 90 s > the 60 s hold, but never passed
    assert (state.step, state.weight) == (0, 10)


@pytest.mark.parametrize("limit", [0, 1])
def test_failure_limit_zero_or_one_aborts_on_the_first_failure(limit: int) -> None:
    cfg = CFG.model_copy(update={"analysis": CFG.analysis.model_copy(update={"failure_limit": limit})})
    state, _ = _run([SLOW], cfg)
    assert state.phase is Phase.ABORTED


def test_thresholds_are_inclusive_at_the_limit() -> None:
    a = CFG.analysis
    assert canary.analyze(a, WindowStats(100, 1, 500.0)).ok  # 1 % errors, p99 500 ms: at the limit passes
    assert not canary.analyze(a, WindowStats(100, 2, 100.0)).ok
    assert not canary.analyze(a, WindowStats(100, 0, 500.1)).ok
    assert canary.analyze(a, WindowStats(20, 0, 10.0)).ok
    assert not canary.analyze(a, WindowStats(19, 0, 10.0)).ok


def test_operator_commands() -> None:
    state = canary.start(CFG, "fp", 0.0).state
    paused = canary.command(state, CFG, Op.PAUSE, 5.0).state
    assert paused.phase is Phase.PAUSED
    # paused: analyses still run, steps do not advance, failures still abort
    held = canary.on_analysis(paused, CFG, GOOD, 100.0).state
    assert (held.phase, held.step) == (Phase.PAUSED, 0)
    resumed = canary.command(held, CFG, Op.RESUME, 200.0).state
    assert resumed.phase is Phase.PROGRESSING and resumed.step_started == 200.0
    f1 = canary.on_analysis(paused, CFG, SLOW, 30.0).state
    assert canary.on_analysis(f1, CFG, SLOW, 60.0).state.phase is Phase.ABORTED
    promoted = canary.command(state, CFG, Op.PROMOTE, 10.0, by="admin").state
    assert (promoted.phase, promoted.weight, promoted.step) == (Phase.PROMOTED, 100, 2)
    assert promoted.history[-1].detail == "promoted by admin"
    aborted = canary.command(promoted, CFG, Op.ABORT, 11.0).state
    assert (aborted.phase, aborted.weight) == (Phase.ABORTED, 0)
    again = canary.command(aborted, CFG, Op.ABORT, 12.0)
    assert again.state == aborted and again.events == ()  # idempotent
    restarted = canary.command(aborted, CFG, Op.RESTART, 13.0).state
    assert (restarted.phase, restarted.weight, restarted.step, restarted.failures) == (Phase.PROGRESSING, 10, 0, 0)
    assert [e.kind for e in restarted.history][-2:] == ["aborted", "started"]


def test_history_is_bounded() -> None:
    cfg = CFG.model_copy(update={"analysis": CFG.analysis.model_copy(update={"failure_limit": 1000})})
    state, _ = _run([SLOW] * 200, cfg)
    assert len(state.history) == canary.HISTORY_LEN


def test_json_round_trip() -> None:
    state, _ = _run([GOOD, SLOW])
    again = canary.from_json(canary.to_json(state))
    assert again == state


def test_fingerprint_changes_with_the_rollout() -> None:
    a = canary.fingerprint(CFG, "http://h:1")
    assert a == canary.fingerprint(CFG, "http://h:1")
    assert a != canary.fingerprint(CFG, "http://h:2")
    assert a != canary.fingerprint(CFG.model_copy(update={"steps": CFG.steps[:2]}), "http://h:1")


def test_window_p99_and_merge() -> None:
    w = OutcomeWindow()
    for i in range(1, 1001):
        w.record(ok=i % 100 != 0, latency_s=i / 1000.0)  # 1..1000 ms, 10 errors
    s = w.stats()
    assert (s.requests, s.errors) == (1000, 10)
    assert s.p99_ms is not None and abs(s.p99_ms - 990.0) / 990.0 < 0.03
    other = OutcomeWindow.from_json(w.to_json())
    other.merge(w)
    assert other.stats().requests == 2000
    assert other.minus(w).stats() == s  # cumulative diff gives back the window
    assert w.minus(other).stats() == s  # a series that went backwards (restart) is taken whole
    assert OutcomeWindow().stats().p99_ms is None
