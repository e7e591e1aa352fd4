"""Step 1, receive: request id, header and body limits. Runs before anything looks at the request."""

from __future__ import annotations

import os

from aiohttp import web

from gateway.errors import HeadersTooLarge, InvalidRequest, PayloadTooLarge

_MAX_REQUEST_ID = 128


def request_id(request: web.Request) -> str:
    """The caller's ``X-Request-Id`` when it is short and printable (log correlation), else a fresh one."""
    rid = request.headers.get("X-Request-Id")
    if rid and len(rid) <= _MAX_REQUEST_ID and rid.isprintable():
        return rid
    return os.urandom(12).hex()


def check_headers(request: web.Request, max_bytes: int) -> None:
    """431 when the header block is larger than allowed (name + value + ': ' + CRLF per header)."""
    total = 0
    for k, v in request.raw_headers:
        total += len(k) + len(v) + 4
    if total > max_bytes:
        raise HeadersTooLarge(f"headers: {total} bytes exceed the limit of {max_bytes} bytes", param="headers")


async def read_body(request: web.Request, max_bytes: int) -> bytes:
    """The request body, refusing early (413) on a declared or actual size above ``max_bytes``. The
    Content-Type is not checked (clients differ); a body that is not JSON fails in the parse step, by name."""
    declared = request.content_length
    if declared is not None and declared > max_bytes:
        raise declared_too_large(declared, max_bytes)
    try:
        return await request.read()  # bounded by the application's client_max_size (= max_bytes)
    except web.HTTPRequestEntityTooLarge as e:
        raise PayloadTooLarge(f"body: exceeds the limit of {max_bytes} bytes", param="body") from e
    except web.RequestPayloadError as e:
        # The client's bytes: a Content-Encoding (gzip, deflate) that does not decode (aiohttp decodes the body).
        # The rest of the body cannot be parsed: the connection closes after the answer, and the body is marked
        # ended, or aiohttp's read of the unread rest (to keep the connection) logs the error again at ERROR.
        request.content.feed_eof()
        raise InvalidRequest(f"body: could not be read ({_last_line(e)})", param="body",
                             headers={"Connection": "close"}) from e


def declared_too_large(declared: int, max_bytes: int) -> PayloadTooLarge:
    """The 413 for a Content-Length above ``max_bytes`` (``read_body``, and the ``Expect: 100-continue`` answer)."""
    return PayloadTooLarge(f"body: {declared} bytes exceed the limit of {max_bytes} bytes", param="body")


def _last_line(e: Exception) -> str:
    """aiohttp's message, e.g. "400, message:\n  Can not decode content-encoding: gzip": its last line."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[-1][:200] if lines else type(e).__name__
