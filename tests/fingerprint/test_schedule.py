"""When probes are sent: periodic rounds are jittered and spread over time (not a periodic burst a backend can
learn to recognise), on-demand checks answer at once. Real aiohttp model servers; seeded draws where a bound
depends on them."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.config import FingerprintConfig, RoutingConfig
from gateway.fingerprinting import FingerprintChecker
from gateway.routing.router import Router
from gateway.telemetry.metrics import Metrics
from tests.fingerprint.conftest import ModelServer
from tests.fingerprint.test_checker import MODEL, model_cfg, record


def test_rounds_are_jittered_within_bounds() -> None:
    def waits(cfg: FingerprintConfig) -> list[float]:
        checker = FingerprintChecker(cfg, router=None, rng=random.Random(4))  # type: ignore[arg-type]
        return [checker.next_wait() for _ in range(400)]

    w = waits(FingerprintConfig(interval_s=100, jitter=0.5))
    assert all(50 <= x <= 150 for x in w) and max(w) - min(w) > 90  # uses the whole range, not a period
    assert set(waits(FingerprintConfig(interval_s=100, jitter=0))) == {100.0}


def test_spread_window_is_capped_at_half_the_interval() -> None:
    def delays(**kw: float) -> list[float]:
        checker = FingerprintChecker(FingerprintConfig(**kw), router=None, rng=random.Random(4))  # type: ignore[arg-type]
        return checker._delays(200)

    assert all(0 <= d <= 5 for d in delays(interval_s=10, spread_s=30)) and max(delays(interval_s=10)) > 4
    assert all(0 <= d <= 2 for d in delays(interval_s=100, spread_s=2))
    assert delays(interval_s=100, spread_s=0) == []


@contextlib.asynccontextmanager
async def checker_of(servers: tuple[ModelServer, ModelServer], tmp_path: Path, cfg: FingerprintConfig
                     ) -> AsyncIterator[tuple[FingerprintChecker, ModelServer]]:
    """A seeded checker of backend ``b`` (``a`` recorded the reference) under ``cfg``, closed afterwards."""
    a, b = servers
    ref = await record(a.url, tmp_path / "ref.json")
    router = Router([model_cfg(a.url, b.url, ref)], RoutingConfig(), Metrics(), health_checks=False)
    checker = FingerprintChecker(cfg, router, rng=random.Random(7))
    try:
        yield checker, b
    finally:
        await checker.close()
        await router.close()


@pytest.fixture
async def checked(servers: tuple[ModelServer, ModelServer], tmp_path: Path
                  ) -> AsyncIterator[tuple[FingerprintChecker, ModelServer]]:
    async with checker_of(servers, tmp_path, FingerprintConfig(interval_s=1000, spread_s=0.6, timeout_s=5)) as c:
        yield c


async def test_a_periodic_round_is_spread_an_on_demand_check_is_not(
    checked: tuple[FingerprintChecker, ModelServer],
) -> None:
    checker, b = checked
    (now,) = await checker.check_now(MODEL, "b")
    assert now.verdict == "match"
    burst = b.arrivals[-now.probes_sent:]
    assert max(burst) - min(burst) < 0.2, burst  # on demand: all at once

    b.arrivals.clear()
    (spread,) = await checker.check_now(MODEL, "b", spread=True)
    assert spread.verdict == "match" and len(b.arrivals) == spread.probes_sent == 8
    gaps = [y - x for x, y in zip(b.arrivals, b.arrivals[1:], strict=False)]
    # 8 uniform delays in [0, 0.6] (seeded): the round spans most of the window, no two probes land together
    assert b.arrivals[-1] - b.arrivals[0] > 0.3, b.arrivals
    assert sum(g > 0.02 for g in gaps) >= 3, gaps


async def test_the_start_up_round_is_sent_at_once_later_rounds_spread(
    checked: tuple[FingerprintChecker, ModelServer],
) -> None:
    checker, b = checked
    checker.cfg = FingerprintConfig(interval_s=0.8, jitter=0, spread_s=0.6, timeout_s=5)  # window 0.4 s
    await checker.start()
    for _ in range(200):
        if len(b.arrivals) >= 16:
            break
        await asyncio.sleep(0.02)
    first, second = b.arrivals[:8], b.arrivals[8:16]
    assert len(second) == 8
    assert max(first) - min(first) < 0.2, first
    assert max(second) - min(second) > 0.1, second


async def test_cancelling_a_spread_round_ends_it_at_once(checked: tuple[FingerprintChecker, ModelServer]) -> None:
    """Shutdown (``close`` cancels the task awaiting the round) does not wait out a round's spread (up to
    spread_s, 30 s by default), no probe of the cancelled round is sent afterwards, and the round lock is free."""
    checker, b = checked
    checker.cfg = FingerprintConfig(interval_s=1000, jitter=0, spread_s=60, timeout_s=5)  # window 60 s
    round_ = asyncio.create_task(checker.check_now(MODEL, "b", spread=True))
    await asyncio.sleep(0.2)  # the round is asleep in its spread
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    round_.cancel()
    with pytest.raises(asyncio.CancelledError):
        await round_
    assert loop.time() - t0 < 1.0
    sent = len(b.arrivals)
    await asyncio.sleep(0.3)
    assert len(b.arrivals) == sent < 8
    assert not checker._round_lock.locked()  # an on-demand check after it is not blocked


async def test_an_on_demand_check_hurries_a_spreading_round(checked: tuple[FingerprintChecker, ModelServer]) -> None:
    """An operator's check (admin API) during a periodic round that spreads its probes over 60 s does not wait
    out the spread: the round's probes still waiting are sent at once, then the on-demand check runs."""
    checker, b = checked
    checker.cfg = FingerprintConfig(interval_s=1000, jitter=0, spread_s=60, timeout_s=5)  # window 30 s
    round_ = asyncio.create_task(checker.check_now(MODEL, "b", spread=True))
    await asyncio.sleep(0.2)  # the round is asleep in its spread: few (seeded: no) probes sent yet
    assert len(b.arrivals) < 8
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    (now,) = await asyncio.wait_for(checker.check_now(MODEL, "b"), 5)
    assert loop.time() - t0 < 2.0 and now.verdict == "match"
    (periodic,) = await round_  # the hurried round completed with all its probes, not cut short
    assert periodic.verdict == "match" and periodic.probes_sent == 8
    assert len(b.arrivals) == 16

    # The next periodic round spreads again (the hurry was for the round that was running).
    b.arrivals.clear()
    checker.cfg = FingerprintConfig(interval_s=1000, jitter=0, spread_s=0.6, timeout_s=5)
    (spread,) = await checker.check_now(MODEL, "b", spread=True)
    assert spread.probes_sent == 8 and b.arrivals[-1] - b.arrivals[0] > 0.3, b.arrivals
