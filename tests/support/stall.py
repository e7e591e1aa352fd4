"""Time measured so that a busy machine does not stretch it: how long the event loop was held while something
ran (tests that work stays off the loop), and how long something took less the time other processes had the
CPU (tests that something happens promptly)."""

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


def waited_for_cpu() -> float:
    """Seconds the calling thread has spent runnable but not running: waiting in the kernel's run queue while
    other processes had the CPU (``/proc/thread-self/schedstat``, Linux). 0.0 where the kernel does not say."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


class OwnClock:
    """Wall-clock time since it was made, less the time the calling thread waited for a CPU meanwhile: a bound on
    how soon something happens on this thread's event loop (an abort seen, a timeout fired) that a busy machine
    does not stretch. Timers, sockets, sleeps, and this thread's own work (a GC pause included) count in full,
    so waiting out a timeout still shows; time other processes took from this one does not. Elsewhere than
    Linux it is plain wall-clock time. Only for work on the thread that reads it: another process's delays
    (a child gateway's start-up) are not its own."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self._waited = waited_for_cpu()

    def wall(self) -> float:
        """Plain wall-clock seconds since the start: for lower bounds. A deadline the product keeps in wall time
        (retries until a timeout) can pass with less than its length in ``elapsed`` time."""
        return time.monotonic() - self.started

    def waited(self) -> float:
        """Seconds of the wall-clock time so far that this thread spent waiting for a CPU."""
        return waited_for_cpu() - self._waited

    def elapsed(self, at: float | None = None) -> float:
        """Seconds from the start to ``at`` (a ``time.monotonic()`` reading; now when None), less the CPU wait
        up to now (an event recorded at ``at`` and read a moment later: the wait in between is taken off too,
        at most the few milliseconds of a poll)."""
        end = time.monotonic() if at is None else at
        return end - self.started - self.waited()
