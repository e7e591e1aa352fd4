"""How long the event loop was held while something ran: for tests that work stays off the loop."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def longest_busy(awaitable: Awaitable[T]) -> tuple[T, float]:
    """``awaitable``'s result and the most CPU time the event loop's thread spent between two turns of a 1 ms
    watcher, up to the step that finished it: the work that held the loop, measured so that other processes
    taking the CPU (a busy machine stretches every wall-clock stall) do not count, nor does a thread holding
    the GIL meanwhile."""
    worst, since = 0.0, time.thread_time()

    async def watch() -> None:
        nonlocal worst, since
        while True:
            since = time.thread_time()
            await asyncio.sleep(0.001)
            worst = max(worst, time.thread_time() - since)

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.01)
    try:
        result = await awaitable
    finally:
        worst = max(worst, time.thread_time() - since)  # the turn in progress: the step that finished it
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    return result, worst
