"""The Redis store's bulk reads (recipients, the alert and audit lists), page by page.

Each page is one call well inside ``StoreConfig.timeout_ms``: one reply of 50 000 audit records or 100 000
recipients outlasted the 50 ms default, and the timeout declared the store unavailable for every request (and
reset the connection the hot path shares).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from gateway.store.lua_script import Conn

BULK_PAGE = 500
BULK_TRIES = 3


async def newest(conn: Conn, key: str, count: int) -> list[str]:
    """The first ``count`` items of a capped list that grows at its head (LPUSH, LTRIM), in pages of
    ``BULK_PAGE``. An item pushed between two pages moves every older one a place deeper, so the next page
    begins with the last items of the one before: that overlap is dropped (each record is a unique line:
    writer, sequence number and hash; an alert's id). Nothing is skipped: items only move away from the head."""
    out: list[str] = []
    while len(out) < count:
        n = min(BULK_PAGE, count - len(out))
        rows = await retried(conn.execute, "LRANGE", key, len(out), len(out) + n - 1)
        page = [r.decode() for r in rows]
        out.extend(page[overlap(out[-BULK_PAGE:], page):])
        if len(page) < n:
            break
    return out[:count]


async def retried(call: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """One page of a bulk read, tried up to ``BULK_TRIES`` times when it times out: a read of thousands of pages
    on a loaded host otherwise failed on one late page (the deadline fires late when the event loop is busy)."""
    for attempt in range(1, BULK_TRIES + 1):
        try:
            return await call(*args)
        except TimeoutError:
            if attempt == BULK_TRIES:
                raise
    raise AssertionError("unreachable")


def overlap(before: list[str], page: list[str]) -> int:
    """How many items at the start of ``page`` repeat the end of ``before`` (see ``newest``)."""
    if not before or not page:
        return 0
    for start in range(max(0, len(before) - len(page)), len(before)):
        if before[start] == page[0] and before[start:] == page[:len(before) - start]:
            return len(before) - start
    return 0
