"""Hand the C library's free heap memory back to the system now and then (glibc's ``malloc_trim``).

glibc keeps the heap memory a process frees, to reuse it. Under a long mixed load of requests and answers of
all sizes the kept memory fragments, and the gateway's RSS creeps up (≈ 650 bytes per request in the soak)
while the live Python heap stays level. ``malloc_trim(0)`` gives back every free page of the heap, inside it as
well as at its top (glibc 2.8+): in the soak, once a minute took about two thirds of the creep away. The call
runs on the event loop's thread (not moved to another: it takes the allocator's locks, which the loop's own
allocations need as well) and holds the loop for its duration, ≈ 1–4 ms of CPU on a worker of ≈ 170 MiB
(BENCHMARKS.md, *A periodic malloc_trim*).

Linux with glibc only: elsewhere (macOS, musl) there is no such call and the setting is refused at start-up
with one WARNING line.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import platform
import sys
from collections.abc import Callable

log = logging.getLogger("ipgate.memtrim")

Trim = Callable[[int], object]  # malloc_trim(pad): pad bytes kept at the top of the heap


def glibc_malloc_trim() -> Trim | None:
    """glibc's ``malloc_trim``, or None where the C library has none (not Linux, or not glibc)."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        fn = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


async def trim_every(interval_s: float, trim: Trim) -> None:
    """``trim(0)`` every ``interval_s`` seconds, until cancelled."""
    while True:
        await asyncio.sleep(interval_s)
        trim(0)


def start(interval_s: float, trim: Trim | None) -> asyncio.Task[None] | None:
    """The periodic trim as a task of the running loop (``server.malloc_trim_interval_s``); None when it is off
    (0) or when there is no ``malloc_trim`` here (logged once)."""
    if interval_s <= 0:
        return None
    if trim is None:
        log.warning("server.malloc_trim_interval_s is %g s but this C library has no malloc_trim (glibc only): "
                    "free heap memory is not trimmed", interval_s)
        return None
    log.info("free heap memory handed back to the system every %g s (malloc_trim)", interval_s)
    return asyncio.get_running_loop().create_task(trim_every(interval_s, trim), name="malloc-trim")
