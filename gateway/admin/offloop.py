"""Work for a thread, awaited so that a caller that is cancelled meanwhile still waits for it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


async def to_thread_to_the_end(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``asyncio.to_thread``, but a caller cancelled meanwhile (the admin hung up: the listener cancels its
    handler) still waits for the thread to finish before the cancellation goes on. A thread cannot be stopped,
    so without this a one-at-a-time bound was released while the work ran on (the watermark verification: a
    client that sent and dropped requests ran as many at once as the thread pool has threads; a config reload:
    the next one read the file beside it)."""
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):  # its own outcome no longer matters to anyone
            await task
        raise
