"""Malformed HTTP from clients: counted, logged once, never a traceback per request.

aiohttp answers a request it cannot parse (a request line or header over the limit, an invalid header, a bad
URL, a broken chunked body) itself (a 400; the gateway's answer, ``gateway/parsererrors.py``: 414/431 for a line
over the limit), before any handler or middleware runs, and logs it on the
``aiohttp.server`` logger at ERROR *with the parser's traceback*, one per request (a connection's first
request with a bad method, non-HTTP traffic, it already logs at DEBUG). Anyone who can reach either listener,
without a credential, could so write ten lines of ERROR traceback per request into the gateway's log: a flood
that buries real errors and pages whoever alerts on ERROR lines.

This filter replaces those records: each is counted in ``ipgate_malformed_http_total{reason}``; the first of
each reason is logged as one WARNING line (the peer and aiohttp's message, cut short), the rest only counted.
Every other record of that logger (a handler's real error) passes untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import http_exceptions as hx

log = logging.getLogger(__name__)

# aiohttp's parser errors -> the metric's reason label (a fixed set: a new aiohttp class counts as "other")
REASONS: tuple[tuple[type[hx.BadHttpMessage], str], ...] = (
    (hx.LineTooLong, "line_too_long"),
    (hx.BadHttpMethod, "bad_method"),
    (hx.BadStatusLine, "bad_request_line"),
    (hx.InvalidHeader, "invalid_header"),
    (hx.InvalidURLError, "invalid_url"),
    (hx.PayloadEncodingError, "body"),
)
OTHER = "other"
_SHOWN_CHARS = 120


def reason_of(exc: BaseException) -> str | None:
    """The reason label of a client's malformed HTTP, or None for anything else."""
    if not isinstance(exc, hx.BadHttpMessage):
        return None
    return next((label for cls, label in REASONS if isinstance(exc, cls)), OTHER)


class MalformedHttpLogs(logging.Filter):
    """Installed once on the ``aiohttp.server`` logger; counts into every registered counter (one per gateway
    context in the process: one in production, several in a test process)."""

    def __init__(self) -> None:
        super().__init__()
        self._counters: list[Callable[[str], None]] = []
        self._logged: set[str] = set()

    def count_into(self, counter: Callable[[str], None]) -> Callable[[], None]:
        """Count into ``counter(reason)`` from now on; returns the function that stops it."""
        self._counters.append(counter)
        return lambda: self._counters.remove(counter) if counter in self._counters else None

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        reason = reason_of(exc) if exc is not None else None
        if reason is None:
            return True
        for count in self._counters:
            count(reason)
        if reason not in self._logged:
            self._logged.add(reason)
            peer = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            text = " ".join(str(exc).split())
            text = text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."
            log.warning("malformed HTTP from %s refused by the HTTP parser (%s: %s); further ones are only "
                        "counted in ipgate_malformed_http_total{reason=\"%s\"} (logged once per reason)", peer,
                        type(exc).__name__, text, reason)
        return False


MALFORMED_HTTP_LOGS = MalformedHttpLogs()
logging.getLogger("aiohttp.server").addFilter(MALFORMED_HTTP_LOGS)
