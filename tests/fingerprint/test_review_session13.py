"""Review of session 13's fingerprint change (an on-demand check hurries a spreading round): its races. Real
aiohttp model servers, the real checker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.config import FingerprintConfig
from gateway.fingerprinting import FingerprintChecker
from tests.fingerprint.conftest import ModelServer
from tests.fingerprint.test_checker import MODEL
from tests.fingerprint.test_schedule import checker_of

SLOW = FingerprintConfig(interval_s=1000, jitter=0, spread_s=60, timeout_s=5)  # a 30 s spread window


@pytest.fixture
async def checked(servers: tuple[ModelServer, ModelServer], tmp_path: Path
                  ) -> AsyncIterator[tuple[FingerprintChecker, ModelServer]]:
    async with checker_of(servers, tmp_path, SLOW) as c:
        yield c


async def test_an_on_demand_check_queued_behind_a_starting_round_hurries_it(
    checked: tuple[FingerprintChecker, ModelServer],
) -> None:
    """A periodic round that takes the lock after an on-demand check asked for a hurry (here: both queued behind
    another on-demand check) replaced the hurry event with a fresh one: the queued operator's check then waited
    out the whole spread (up to 30 s). It must be hurried from its start."""
    checker, b = checked
    first = asyncio.create_task(checker.check_now(MODEL, "b"))  # holds the round lock while its probes run
    periodic = asyncio.create_task(checker.check_now(MODEL, "b", spread=True))  # queued first
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    (mine,) = await asyncio.wait_for(checker.check_now(MODEL, "b"), 5)  # queued behind the periodic round
    assert mine.verdict == "match" and loop.time() - t0 < 2.0
    assert (await first)[0].verdict == "match"
    (p,) = await periodic
    assert p.probes_sent == 8 and len(b.arrivals) == 24


async def test_a_cancelled_queued_check_does_not_hurry_later_rounds(
    checked: tuple[FingerprintChecker, ModelServer],
) -> None:
    """An on-demand check cancelled while it waited for the lock (its HTTP client went away) leaves no hurry
    behind: the next periodic round still spreads."""
    checker, b = checked
    first = asyncio.create_task(checker.check_now(MODEL, "b"))  # holds the round lock while its probes run
    waiting = asyncio.create_task(checker.check_now(MODEL, "b"))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await first
    b.arrivals.clear()
    checker.cfg = FingerprintConfig(interval_s=1000, jitter=0, spread_s=0.6, timeout_s=5)
    (spread,) = await checker.check_now(MODEL, "b", spread=True)
    assert spread.probes_sent == 8 and b.arrivals[-1] - b.arrivals[0] > 0.3, b.arrivals


async def test_two_on_demand_checks_during_a_round_both_finish_fast(
    checked: tuple[FingerprintChecker, ModelServer],
) -> None:
    checker, _ = checked
    periodic = asyncio.create_task(checker.check_now(MODEL, "b", spread=True))
    await asyncio.sleep(0.1)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    done = await asyncio.wait_for(asyncio.gather(checker.check_now(MODEL, "b"), checker.check_now(MODEL, "b")), 5)
    assert [c.verdict for (c,) in done] == ["match", "match"] and loop.time() - t0 < 2.0
    assert (await periodic)[0].probes_sent == 8
