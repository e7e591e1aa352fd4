"""Automation timing: inter-arrival regularity, round-the-clock flatness, concurrency.

Humans type, read and think: their gaps are heavy-tailed (log-gap spread well above 1) and their hours
follow a day/night cycle. Scripts fire at a fixed or uniformly jittered interval (small log-gap spread),
run around the clock (flat hour histogram) and overlap requests (sub-second gaps). Randomised timing
evades this detector by design; it is one voice among several.
"""

from __future__ import annotations

import math
from typing import ClassVar

from detectors.base import COUNT_DECAY, Counters, norm_entropy, ramp, shrunk_share, time_decay
from detectors.types import DetectorScore, RequestFeatures, ResponseFeatures

GAPS, SUM_LOG, SUM_LOG2, FAST = range(4)
HOURS0 = 4  # 24 hour-of-day slots follow the four gap counters
_SESSION_GAP_S = 1800.0  # gaps longer than this start a new session and say nothing about regularity
_HOUR_DECAY = math.exp(-1.0 / 1000.0)  # the hour histogram remembers ~1000 requests
_FLAT = (0.90, 0.98)  # hour-histogram entropy that is no evidence / full evidence of round-the-clock traffic
_MAX_HOURS_NOT_FLAT = 17  # log(17) / log(24) = 0.8915 < _FLAT[0] (tests/detectors/test_fast_paths.py)


class AutomationTiming:
    name: ClassVar[str] = "timing"
    state_bytes: ClassVar[int] = 8 + 4 * (HOURS0 + 24)

    def new_state(self) -> Counters:
        return Counters(HOURS0 + 24)

    def dump(self, state: Counters) -> bytes:
        return state.dump()

    def load(self, data: bytes) -> Counters:
        if len(data) > 8 + 4 * (HOURS0 + 24):  # longer than the counters (shorter: ``decode`` raises)
            raise ValueError(f"{self.name}: trailing bytes in state")
        return Counters.decode(data, HOURS0 + 24, (SUM_LOG, SUM_LOG + 1))  # log(gap + 0.05) < 0 for short gaps

    def observe(self, state: Counters, feats: RequestFeatures, now: float) -> DetectorScore:
        prev = state.last_ts
        c = state.c
        # Gap statistics decay per request and with time (a quiet client cools down); the hour histogram
        # decays per request only, since time decay would itself make a round-the-clock bot look diurnal.
        factor = COUNT_DECAY * (time_decay(now - prev) if prev else 1.0)
        c[:HOURS0] *= factor
        c[HOURS0:] *= _HOUR_DECAY
        state.last_ts = max(prev, now)
        if prev:
            gap = max(now - prev, 0.0)
            if gap < 1.0:
                c[FAST] += 1
            if gap < _SESSION_GAP_S:
                lg = math.log(gap + 0.05)
                c[GAPS] += 1
                c[SUM_LOG] += lg
                c[SUM_LOG2] += lg * lg
        hour = int((now % 86400) // 3600)
        c[HOURS0 + hour] += 1
        return self.score(state, now)

    def observe_response(self, state: Counters, resp: ResponseFeatures, now: float) -> None:
        return None

    def score(self, state: Counters, now: float) -> DetectorScore:
        c = state.c.tolist()  # plain floats: the same IEEE arithmetic as numpy scalars, without their overhead
        gaps = c[GAPS]
        reasons: list[str] = []
        e_regular = 0.0
        spread = 0.0
        if gaps >= 5:
            mean = c[SUM_LOG] / gaps
            spread = math.sqrt(max(c[SUM_LOG2] / gaps - mean * mean, 0.0))
            e_regular = ramp(0.8 - spread, 0.0, 0.6) * ramp(gaps, 10.0, 40.0)
            if e_regular > 0:
                reasons.append(f"inter-arrival times are machine-regular (log-gap spread {spread:.2f})")
        hours = c[HOURS0:]
        total = sum(hours)
        e_flat = 0.0
        # With m non-empty hours the normalised entropy is at most log(m) / log(24): for m <= 17 that is 0.8915,
        # under the ramp's 0.90, so the flatness term is 0 whatever the exact value and its logs are skipped.
        if total >= 48 and len(hours) - hours.count(0.0) > _MAX_HOURS_NOT_FLAT:
            entropy = norm_entropy(hours)
            e_flat = ramp(entropy, *_FLAT) * ramp(total, 48.0, 150.0)
            if e_flat > 0:
                reasons.append(f"traffic is flat around the clock (hour entropy {entropy:.2f})")
        e_fast = ramp(shrunk_share(c[FAST], gaps, 10.0), 0.2, 0.6)
        if e_fast > 0:
            reasons.append(f"{c[FAST]:.0f} of the last {gaps:.0f} requests arrived < 1 s after the previous one")
        score = float(1.0 - (1.0 - e_regular) * (1.0 - e_flat) * (1.0 - e_fast))
        return DetectorScore(self.name, score, tuple(reasons))
