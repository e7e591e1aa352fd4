"""Pure GCRA, the headers it implies, and the token reservation estimate (no store, no I/O)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import PermissionDenied, RateLimited, ServiceUnavailable
from gateway.ratelimit import (
    DEFAULT_MAX_TOKENS,
    admission_error,
    admit,
    estimate_tokens,
    gcra,
    interval_us,
    rate_limit_headers,
    reconcile_tat,
)
from gateway.store.base import AdmitResult, Limits, RateDecision

S = 1_000_000  # one second in µs
NOW = 1_700_000_000 * S


def run(times_s: list[float], T_s: float, burst: int, cost: int = 1) -> list[bool]:
    """Feed arrivals (seconds after NOW) through GCRA, storing the TAT as a store would."""
    tat, out = 0.0, []
    for t in times_s:
        step = gcra(tat, NOW + t * S, cost, T_s * S, burst)
        tat = step.tat_us
        out.append(step.decision.allowed)
    return out


@pytest.mark.parametrize(
    ("name", "times", "T", "burst", "expect"),
    [
        ("burst passes at once", [0] * 3, 1.0, 3, [True] * 3),
        ("burst+1 rejected", [0] * 4, 1.0, 3, [True, True, True, False]),
        ("one per interval after the burst", [0, 0, 0.999, 1.0, 1.0], 1.0, 2, [True, True, False, True, False]),
        ("steady at the rate never rejects", [i * 0.5 for i in range(20)], 0.5, 1, [True] * 20),
        ("faster than the rate with burst 1", [0, 0.25, 0.5, 0.75, 1.0], 0.5, 1, [True, False, True, False, True]),
        ("idle time does not bank beyond burst", [0, 100, 100, 100], 1.0, 2, [True, True, True, False]),
        ("rejections do not consume", [0, 0, 0, 0, 1.0], 1.0, 1, [True, False, False, False, True]),
        # 60e6/7 µs is not an integer: the burst-th request must still pass (EPS absorbs float rounding)
        ("fractional interval", [0] * 7, 60 / 7, 7, [True] * 7),
        ("fractional interval, one over", [0] * 8, 60 / 7, 7, [True] * 7 + [False]),
    ],
)
def test_gcra_table(name: str, times: list[float], T: float, burst: int, expect: list[bool]) -> None:
    assert run(times, T, burst) == expect, name


def test_gcra_reports_remaining_reset_retry() -> None:
    T = 0.1 * S
    s1 = gcra(0.0, NOW, 1, T, 3)
    assert s1.decision == RateDecision(True, 3, 2, pytest.approx(0.1), 0.0)  # type: ignore[arg-type]
    s3 = gcra(gcra(s1.tat_us, NOW, 1, T, 3).tat_us, NOW, 1, T, 3)
    assert (s3.decision.remaining, s3.decision.reset_s) == (0, pytest.approx(0.3))
    s4 = gcra(s3.tat_us, NOW + 0.02 * S, 1, T, 3)
    assert not s4.decision.allowed and s4.tat_us == s3.tat_us
    assert s4.decision.retry_after_s == pytest.approx(0.08) and s4.decision.remaining == 0
    assert s4.decision.reset_s == pytest.approx(0.28)


def test_cost_above_burst_is_clamped_for_admission_but_charged_in_full() -> None:
    T = 10_000.0  # 10 ms per token
    big = gcra(0.0, NOW, 250, T, 100)
    assert big.decision.allowed and big.tat_us == NOW + 250 * T and big.decision.remaining == 0
    nxt = gcra(big.tat_us, NOW, 1, T, 100)
    assert not nxt.decision.allowed and nxt.decision.retry_after_s == pytest.approx(1.51)


def test_admit_is_all_or_nothing() -> None:
    lim = Limits(requests_per_minute=60, tokens_per_minute=600, burst_requests=5, burst_tokens=10)
    a = admit(0.0, 0.0, NOW, 8, lim)
    assert a.allowed and a.requests.remaining == 4 and a.tokens.remaining == 2
    b = admit(a.tat_requests_us, a.tat_tokens_us, NOW, 8, lim)
    assert not b.allowed and b.tat_requests_us == a.tat_requests_us and b.tat_tokens_us == a.tat_tokens_us
    assert b.requests.allowed and b.requests.remaining == 4, "the uncharged bucket is reported as it stands"
    d = admit(0.0, 0.0, NOW, 1, lim, deny=True)
    assert not d.allowed and d.tat_requests_us == 0.0 and d.requests.remaining == 5


@pytest.mark.parametrize(
    ("tat", "delta", "expect"),
    [
        (NOW + 50 * 1000, -20, NOW + 30 * 1000),  # give back part of an outstanding reservation
        (NOW + 50 * 1000, -80, NOW),  # never below now: no credit beyond the burst
        (NOW - 5 * S, -10, NOW - 5 * S),  # bucket already full: nothing to give back
        (NOW - 5 * S, 30, NOW + 30 * 1000),  # charge more on an idle key: from now
        (NOW + 10 * 1000, 30, NOW + 40 * 1000),  # charge more: pushes the TAT (possibly into debt)
        (NOW + 10 * 1000, 0, NOW + 10 * 1000),
    ],
)
def test_reconcile_tat(tat: float, delta: int, expect: float) -> None:
    assert reconcile_tat(tat, NOW, delta, 1000.0) == expect


@settings(max_examples=300, deadline=None)
@given(
    per_minute=st.floats(min_value=1, max_value=100_000),
    burst=st.integers(min_value=1, max_value=200),
    gaps_us=st.lists(st.integers(min_value=0, max_value=5 * S), min_size=1, max_size=300),
)
def test_gcra_never_admits_more_than_burst_plus_elapsed(per_minute: float, burst: int, gaps_us: list[int]) -> None:
    """Over any run starting from a fresh key, admitted ≤ burst + elapsed / T (+1 µs of float tolerance),
    and a request is rejected only when that bound leaves no room."""
    T = interval_us(per_minute)
    tat, now, admitted = 0.0, NOW, 0
    for gap in gaps_us:
        now += gap
        step = gcra(tat, now, 1, T, burst)
        tat = step.tat_us
        admitted += step.decision.allowed
        elapsed = now - NOW
        assert admitted <= burst + (elapsed + 1.0) / T
        if not step.decision.allowed:
            assert step.decision.retry_after_s > 0


@settings(max_examples=200, deadline=None)
@given(
    burst=st.integers(min_value=1, max_value=50),
    n=st.integers(min_value=1, max_value=120),
    per_minute=st.sampled_from([1, 7, 60, 600, 6000, 200_000]),
)
def test_gcra_back_to_back_admits_exactly_burst(burst: int, n: int, per_minute: float) -> None:
    tat, admitted = 0.0, 0
    for _ in range(n):
        step = gcra(tat, NOW, 1, interval_us(per_minute), burst)
        tat = step.tat_us
        admitted += step.decision.allowed
    assert admitted == min(n, burst)


# --- headers and errors --------------------------------------------------------------------------------------

OK = RateDecision(True, 100, 40, 6.0, 0.0)


def result(r: RateDecision, t: RateDecision, *, allowed: bool | None = None, degraded: bool = False,
           unavailable: bool = False, override: str | None = None) -> AdmitResult:
    ok = r.allowed and t.allowed if allowed is None else allowed
    return AdmitResult(ok, 0, override, r, t, None, 0.0, degraded, unavailable)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("r", "t", "expect"),
    [
        # admitted: the fuller bucket (smaller remaining share) binds; no Retry-After
        (OK, RateDecision(True, 1000, 900, 2.0, 0.0),
         {"RateLimit-Limit": "100", "RateLimit-Remaining": "40", "RateLimit-Reset": "6"}),
        (OK, RateDecision(True, 1000, 100, 2.5, 0.0),
         {"RateLimit-Limit": "1000", "RateLimit-Remaining": "100", "RateLimit-Reset": "3"}),
        # requests rejected
        (RateDecision(False, 100, 0, 10.0, 0.2), RateDecision(True, 1000, 900, 2.0, 0.0),
         {"RateLimit-Limit": "100", "RateLimit-Remaining": "0", "Retry-After": "1", "retry-after-ms": "200"}),
        # tokens rejected, retry rounds up
        (OK, RateDecision(False, 1000, 3, 9.2, 2.01),
         {"RateLimit-Limit": "1000", "RateLimit-Remaining": "3", "RateLimit-Reset": "10", "Retry-After": "3",
          "retry-after-ms": "2010"}),
        # both rejected: the longer wait binds
        (RateDecision(False, 100, 0, 10.0, 0.5), RateDecision(False, 1000, 0, 9.0, 4.0),
         {"RateLimit-Limit": "1000", "Retry-After": "4"}),
    ],
)
def test_rate_limit_headers(r: RateDecision, t: RateDecision, expect: dict[str, str]) -> None:
    h = rate_limit_headers(result(r, t))
    for k, v in expect.items():
        assert h[k] == v, k
    assert ("Retry-After" in h) == (not (r.allowed and t.allowed))
    assert h["x-ratelimit-limit-requests"] == str(r.limit) and h["x-ratelimit-remaining-tokens"] == str(t.remaining)


def test_admission_errors() -> None:
    assert admission_error(result(OK, OK)) is None
    limited = admission_error(result(RateDecision(False, 100, 0, 10.0, 1.5), OK))
    assert isinstance(limited, RateLimited) and limited.status == 429
    assert limited.headers["Retry-After"] == "2" and "requests" in limited.message
    denied = admission_error(result(OK, OK, allowed=False, override="deny"))
    assert isinstance(denied, PermissionDenied) and "Retry-After" not in denied.headers
    down = admission_error(result(RateDecision(False, 100, 0, 1.0, 1.0), OK, degraded=True, unavailable=True))
    assert isinstance(down, ServiceUnavailable) and down.status == 503 and down.headers == {"Retry-After": "1"}
    local = admission_error(result(RateDecision(False, 5, 0, 1.0, 1.0), OK, degraded=True))
    assert isinstance(local, RateLimited), "failure_mode local enforces real (divided) limits: 429"
    body = limited.body()["error"]
    assert body["type"] == "rate_limit_error" and body["code"] == "rate_limit_exceeded"


# --- reservation estimate ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "body", "expect"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x" * 400}], "max_tokens": 50},
         100 + 4 + 50),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "abc"}], "max_completion_tokens": 7,
                                  "max_tokens": 99, "n": 3}, 1 + 4 + 21),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": [
            {"type": "text", "text": "y" * 40}, {"type": "image_url", "image_url": {"url": "u"}}]}]},
         10 + 4 + DEFAULT_MAX_TOKENS),
        ("/v1/chat/completions", {"messages": [{"role": "system", "content": None},
                                               {"role": "user", "content": "hi"}], "max_tokens": 1}, 1 + 8 + 1),
        ("/v1/chat/completions", {"messages": "garbage", "max_tokens": -5, "n": True}, DEFAULT_MAX_TOKENS),
        ("/v1/chat/completions", {"messages": [], "max_tokens": 10, "n": 10_000}, 10 * 128),
        ("/v1/completions", {"prompt": "z" * 41, "max_tokens": 16}, 11 + 16),
        ("/v1/completions", {"prompt": ["a" * 8, "b" * 8], "max_tokens": 10, "n": 2}, 4 + 40),
        ("/v1/completions", {"prompt": [1, 2, 3], "max_tokens": 5, "best_of": 3}, 3 + 15),
        ("/v1/completions", {"prompt": "p"}, 1 + DEFAULT_MAX_TOKENS),
        ("/v1/embeddings", {"input": ["hello world", "x" * 20]}, 8),
        ("/v1/embeddings", {"input": ""}, 1),
        ("/v1/models", {}, 1),
    ],
)
def test_estimate_tokens(endpoint: str, body: dict[str, object], expect: int) -> None:
    assert estimate_tokens(endpoint, body) == expect

