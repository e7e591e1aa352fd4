"""A listener that cannot accept connections (out of file descriptors): counted, logged once a minute.

At the process's open-file limit (``RLIMIT_NOFILE``) every ``accept()`` fails with EMFILE. asyncio reports each
failure to the loop's exception handler, whose default logs it at ERROR with a traceback, and (CPython 3.11's
``_accept_connection``) goes on trying the rest of the listener's backlog after the first failure, each try
another report: measured, 46 369 ERROR tracebacks in about 5 s from one worker whose 128 descriptors were held
by idle connections. Anyone able to open connections to either listener could so flood the log (and page
whoever alerts on ERROR lines) while the gateway is already at its limit.

``AcceptFailures`` is the worker loop's exception handler: those reports are counted in
``ipgate_accept_failures_total`` and logged as one WARNING line a minute (with the limit and the count since the
last line); every other report goes to the handler that was there before (asyncio's default).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

OUT_OF_RESOURCE = "socket.accept() out of system resource"  # asyncio's message (selector_events)
LOG_EVERY_S = 60.0

Handler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]


class AcceptFailures:
    """The loop's exception handler: accept failures counted and logged at most once per ``every_s``."""

    def __init__(self, count: Callable[[], None], previous: Handler | None = None, *,
                 every_s: float = LOG_EVERY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._count = count
        self._previous = previous
        self._every = every_s
        self._clock = clock
        self._next = float("-inf")
        self._since = 0  # failures since the last line

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != OUT_OF_RESOURCE:
            if self._previous is not None:
                self._previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        self._count()
        self._since += 1
        now = self._clock()
        if now < self._next:
            return
        self._next = now + self._every
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        log.warning("cannot accept connections: %s (open-file limit %d): %d failed accepts since the last line "
                    "(logged at most once a minute; ipgate_accept_failures_total counts them)",
                    context.get("exception"), soft, self._since)
        self._since = 0


def install(loop: asyncio.AbstractEventLoop, count: Callable[[], None]) -> None:
    """Make ``AcceptFailures`` the loop's exception handler (the one there before handles everything else)."""
    loop.set_exception_handler(AcceptFailures(count, loop.get_exception_handler()))
