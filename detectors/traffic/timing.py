"""Arrival-time models: human sessions (think time, day/night) and scripts (fixed, jittered, Poisson)."""

from __future__ import annotations

import math
import random

DAY = 86400.0


def human(rng: random.Random, n: int, start: float, tz_hours: int) -> list[float]:
    """Sessions of a few requests with lognormal think times, started during the person's waking hours."""
    out: list[float] = []
    t = start
    while len(out) < n:
        t = _next_waking(rng, t, tz_hours)
        session = 1 + int(rng.expovariate(1 / 5.0))
        for _ in range(min(session, n - len(out))):
            out.append(t)
            t += min(max(rng.lognormvariate(math.log(45.0), 1.0), 3.0), 1800.0)
        t += rng.lognormvariate(math.log(4 * 3600.0), 1.0)
    return out


def _next_waking(rng: random.Random, t: float, tz_hours: int) -> float:
    local_hour = ((t + tz_hours * 3600.0) % DAY) / 3600.0
    if 8.0 <= local_hour < 23.5 or rng.random() < 0.03:  # a few night-owl sessions
        return t
    wake = rng.uniform(7.5, 10.0)
    return t + ((wake - local_hour) % 24.0) * 3600.0


def script(rng: random.Random, n: int, start: float, interval: float, jitter: float) -> list[float]:
    """A scheduled script: gaps uniform in interval x [1 - jitter, 1 + jitter], around the clock."""
    out, t = [], start
    for _ in range(n):
        out.append(t)
        t += interval * rng.uniform(1.0 - jitter, 1.0 + jitter)
    return out


def poisson(rng: random.Random, n: int, start: float, rate_per_s: float) -> list[float]:
    """Randomised timing (exponential gaps): the timing detector's known evasion."""
    out, t = [], start
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(rate_per_s)
    return out


def parallel(rng: random.Random, n: int, start: float, workers: int, interval: float) -> list[float]:
    """``workers`` concurrent loops: many requests within a second of each other."""
    per = max(1, n // workers + 1)
    merged = sorted(t for w in range(workers) for t in script(rng, per, start + w * 0.05, interval, 0.3))
    return merged[:n]
