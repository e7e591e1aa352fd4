"""Requests the HTTP parser refuses, answered in OpenAI-shaped JSON on both listeners.

aiohttp answers a request it cannot parse (a request line or header over the limit, an invalid header, method
or URL, broken body framing) itself, before any handler or middleware runs: a ``text/plain`` 400 whose text
quotes the offending bytes back (``Invalid header value char: b'X-A: a\\x01<script>'``). Every other error of
the gateway is ``{"error": {"message", "type", "param", "code"}}``, so a client's error handling broke on
exactly the requests that most need a clear answer.

aiohttp has no hook for that answer (aio-libs/aiohttp#3287): ``RequestHandler.handle_error`` renders it, and
``web.Server`` builds a ``RequestHandler`` by name for each connection. So, three small subclasses:

- ``JsonErrorHandler(web.RequestHandler)`` overrides ``handle_error`` only. It calls aiohttp's first (its
  logging, which ``gateway/telemetry/malformed.py`` counts in ``ipgate_malformed_http_total``, and its refusal
  to answer once an answer has started) and returns JSON instead of aiohttp's text: the status aiohttp chose
  (400), except for a line over the limit (414 for the request line, 431 for a header line: RFC 9110 15.5.15,
  RFC 6585 5, where aiohttp says 400 for both), ``Content-Type: application/json``, ``Connection: close`` (the
  rest of the connection's bytes cannot be parsed) and a message that says what was wrong, never the request's
  bytes (``describe``).
- ``JsonErrorServer(web.Server)`` builds ``JsonErrorHandler``s: its ``__call__`` is ``web.Server.__call__``
  with the class swapped.
- ``JsonErrorRunner(web.AppRunner)``: ``web.AppRunner`` whose server is a ``JsonErrorServer``; both listeners
  (``gateway/server.py``) use it.

Which line was too long: aiohttp's ``LineTooLong`` carries only the limit it passed, so the listeners give the
request line and header lines distinct limits (``parser_limits``: the request target ``n`` bytes, a header field
``n - 4``). aiohttp's pure-Python parser checks an unfinished line in its buffer against the request line's limit
whatever the line is; there the parser's own list of the lines it has read says which (``_lines``).

``tests/gateway/test_parser_errors.py`` pins this against the installed aiohttp: an upgrade that stops calling
``handle_error``, or builds its handlers another way, fails it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import http_exceptions as hx
from aiohttp import web

from gateway.errors import INTERNAL_ERROR_BODY, to_openai_error
from gateway.telemetry.malformed import reason_of

# llhttp's (and aiohttp's) own wording of a problem, e.g. "Invalid header value char": a fixed phrase of the
# parser, never the client's bytes. Anything else (a quoted line, a URL) is not shown.
_PHRASE = re.compile(r"[A-Za-z][A-Za-z0-9 ,'`_-]{2,78}\.?")
_TLS_PHRASE = "Received HTTPS traffic on an HTTP port"


FIELD_MARGIN = 4  # a header field's limit is this much below the request line's: distinct, whatever n is


def parser_limits(line_bytes: int) -> dict[str, int]:
    """aiohttp's ``handler_args`` for a listener whose request line and header lines may be about ``line_bytes``
    long: the request target ``line_bytes``, a header field (aiohttp checks its name and its value)
    ``line_bytes - 4``. Distinct, so that a refusal's limit says which line it was (``describe``); below the
    request line's, so that the pure-Python parser's check of an unfinished line (against the request line's
    limit) never refuses a header line the field limit allows."""
    return {"max_line_size": line_bytes, "max_field_size": line_bytes - FIELD_MARGIN}


@dataclass(frozen=True, slots=True)
class Refusal:
    """What the client is told about a request the parser refused."""

    message: str
    param: str | None
    code: str
    status: int | None = None  # None: the status aiohttp chose (400)


# the metric's reason label -> (what was wrong, the part of the request it names, the error's code)
_WHAT: dict[str, tuple[str, str | None, str]] = {
    "bad_method": ("invalid HTTP method in the request line", "method", "bad_method"),
    "bad_request_line": ("malformed request line (expected: METHOD TARGET HTTP/1.1)", "request_line",
                         "bad_request_line"),
    "invalid_header": ("invalid header", "headers", "invalid_header"),
    "invalid_url": ("invalid request target (URL)", "url", "invalid_url"),
    "body": ("malformed request body (Content-Length, Transfer-Encoding or chunk framing)", "body",
             "malformed_body"),
    "other": ("malformed HTTP request", None, "malformed_http"),
}


def describe(exc: BaseException | None, *, max_line_size: int, max_field_size: int,
             request_line: bool | None = None) -> Refusal:
    """The answer to a request aiohttp's parser refused with ``exc`` (sans-IO: exception in, text out).
    ``max_line_size``/``max_field_size``: the connection's limits, to say which one a line over the limit
    passed; ``request_line``: which line it was, where the parser's state says so (then the limits need not
    differ). A request line over the limit is a 414, a header line a 431; when neither tells (equal limits, no
    state), aiohttp's 400 naming both."""
    reason = reason_of(exc) if exc is not None else None
    if reason is None or not isinstance(exc, hx.BadHttpMessage):
        return Refusal(_WHAT["other"][0], None, _WHAT["other"][2])
    if reason == "line_too_long":
        limit = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else max(max_line_size,
                                                                                           max_field_size)
        if request_line is None and max_line_size != max_field_size:
            request_line = limit == max_line_size
        if request_line is None:
            return Refusal(f"request line or header too long (limit {limit} bytes)", None, "line_too_long")
        if request_line:
            return Refusal(f"request line too long (limit {max_line_size} bytes)", "request_line", "line_too_long",
                           HTTPStatus.REQUEST_URI_TOO_LONG)
        return Refusal(f"request header line too long (limit {max_field_size} bytes)", "headers", "line_too_long",
                       HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
    if isinstance(exc, hx.ContentEncodingError):  # br or zstd without their decoder installed
        return Refusal("request body: its Content-Encoding is not supported (gzip and deflate are)", "body",
                       "unsupported_content_encoding")
    what, param, code = _WHAT[reason]
    if isinstance(exc, hx.BadHttpMethod) and exc.message == _TLS_PHRASE:
        return Refusal("TLS (HTTPS) received on a plain-HTTP port", None, code)
    detail = _parser_phrase(exc)
    if param is None and detail:  # the C parser reports most header and framing problems as a bare 400
        low = detail.lower()
        param = "body" if "chunk" in low else "headers" if any(
            w in low for w in ("header", "content-length", "transfer-encoding")) else None
    return Refusal(f"{what}: {detail}" if detail else what, param, code)


def _parser_phrase(exc: hx.BadHttpMessage) -> str | None:
    """The parser's fixed wording, where there is one. The C parser (llhttp) says ``"<phrase>:\\n\\n  b'<the
    bytes>'\\n  ^"`` (a ``BadStatusLine`` prefixes ``"Bad status line:\\n  "``): the phrase before the bytes is
    llhttp's. The pure-Python parser's messages quote the bytes, except those of the bare ``BadHttpMessage``
    ("Too many headers received", "Duplicate 'Content-Length' header found.")."""
    text = exc.message.removeprefix("Bad status line:").strip()
    if ":\n\n" in text:
        phrase = text.split(":\n\n", 1)[0].strip()
    elif type(exc) is hx.BadHttpMessage:
        phrase = text
    else:
        return None
    return phrase if _PHRASE.fullmatch(phrase) else None


def json_error(status: int, body: dict[str, Any]) -> web.Response:
    resp = web.Response(body=json.dumps(body).encode(), status=status, content_type="application/json",
                        headers={"Connection": "close"})
    resp.force_close()
    return resp


class JsonErrorHandler(web.RequestHandler):
    """A connection whose parser refusals (and aiohttp's last-resort 500/504) are answered in JSON."""

    __slots__ = ()

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        # aiohttp's: logs the error (counted by telemetry/malformed.py), raises if an answer has started
        super().handle_error(request, status, exc, message)
        if status == HTTPStatus.INTERNAL_SERVER_ERROR:  # a handler's crash past every middleware
            return json_error(status, INTERNAL_ERROR_BODY)
        if status == HTTPStatus.GATEWAY_TIMEOUT:  # a handler's TimeoutError past every middleware
            return json_error(status, to_openai_error("The request timed out.", "timeout", "timeout"))
        refusal = describe(exc, max_line_size=self.max_line_size, max_field_size=self.max_field_size,
                           request_line=self._on_request_line())
        return json_error(refusal.status or status, to_openai_error(refusal.message, "invalid_request_error",
                                                                    refusal.code, refusal.param))

    def _on_request_line(self) -> bool | None:
        """Whether the parser was still on the request line, where it says: aiohttp's pure-Python parser keeps
        the lines of the message it has read (``_lines``, the request line first); the C parser (llhttp) shows
        nothing, and its distinct limits say it instead."""
        lines = getattr(getattr(self, "_parser", None), "_lines", None)
        return not lines if isinstance(lines, list) else None


class JsonErrorServer(web.Server):
    """``web.Server`` whose connections are ``JsonErrorHandler``s (``web.Server.__call__``, class swapped)."""

    __slots__ = ()  # (the layout of web.Server, with or without slots: JsonErrorRunner swaps the class)

    def __call__(self) -> web.RequestHandler:
        return JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class JsonErrorRunner(web.AppRunner):
    """``web.AppRunner`` serving through a ``JsonErrorServer``: the app's server, its class swapped (aiohttp
    builds it in ``Application._make_handler``, with the app's handler, request factory and handler_args)."""

    __slots__ = ()

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = JsonErrorServer
        return server
