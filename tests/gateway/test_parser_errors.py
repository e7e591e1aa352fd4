"""Requests aiohttp's HTTP parser refuses before any handler runs are answered in OpenAI-shaped JSON on both
listeners: the status aiohttp chose, ``Content-Type: application/json``, ``Connection: close``, a message that
says what was wrong and never the request's bytes. Before, aiohttp's own ``text/plain`` 400 quoted them back
(``Invalid header value char: b'X-A: a\\x01<script>'``).

These pin the hook (``gateway/parsererrors.py``: subclasses of ``web.RequestHandler``, ``web.Server`` and
``web.AppRunner``) against the installed aiohttp: an upgrade that stops calling ``handle_error`` or builds its
connections another way fails here."""

from __future__ import annotations

import importlib.util
import json
import re
import socket
from pathlib import Path
from typing import Any

import pytest
from aiohttp import http_exceptions as hx
from aiohttp import http_parser, web

from gateway.errors import INTERNAL_ERROR_BODY
from gateway.parsererrors import JsonErrorHandler, JsonErrorRunner, describe, parser_limits
from tests.support.harness import gateway_config, running_gateway, sim_backend
from tests.support.process import GatewayProcess
from tests.support.raw_http import Raw

H = b"Host: 127.0.0.1\r\n"
MARK = b"EVIL"  # in every bad request: never in an answer
# kind -> (request bytes, the error's param, its code(s): the C parser reports some as a bare 400 where the
# pure-Python one names the class, a fragment of the message)
KINDS: dict[str, tuple[bytes, str | None, set[str], str]] = {
    "request_line_too_long": (b"GET /" + MARK + b"a" * 70_000 + b" HTTP/1.1\r\n" + H + b"\r\n",
                              "request_line", {"line_too_long"}, "request line too long (limit "),
    "header_too_long": (b"GET /v1/models HTTP/1.1\r\n" + H + b"X-Big: " + MARK + b"b" * 70_000 + b"\r\n\r\n",
                        "headers", {"line_too_long"}, "request header line too long (limit "),
    "invalid_header_name": (b"GET / HTTP/1.1\r\n" + H + b"Bad " + MARK + b": x\r\n\r\n",
                            "headers", {"malformed_http", "invalid_header"}, ""),
    "invalid_header_value": (b"GET / HTTP/1.1\r\n" + H + b"X-A: " + MARK + b"\x01<script>\r\n\r\n",
                             "headers", {"malformed_http", "invalid_header"}, ""),
    "bad_method": (b"G<" + MARK + b" / HTTP/1.1\r\n" + H + b"\r\n", "method", {"bad_method"}, "HTTP method"),
    "bad_version": (b"GET /" + MARK + b" HTTP/9.x\r\n" + H + b"\r\n", "request_line", {"bad_request_line"},
                    "request line"),
    "bad_url": (b"GET /" + MARK + b"\x7f<x> HTTP/1.1\r\n" + H + b"\r\n", "url", {"invalid_url"}, "URL"),
    "too_many_headers": (b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-" + MARK + b"-%d: 1\r\n" % i for i in range(200))
                         + b"\r\n", "headers", {"malformed_http"}, "Too many headers"),
    "length_and_chunked": (b"POST /v1/chat/completions HTTP/1.1\r\n" + H + b"Content-Length: 4\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "headers", {"malformed_http"},
                           "Transfer-Encoding"),
    "broken_chunked_body": (b"POST /v1/chat/completions HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
                            + MARK + b"\r\nabc\r\n0\r\n\r\n", "body", {"malformed_http", "malformed_body"}, ""),
}
# a line over the limit: 414 URI Too Long for the request line, 431 for a header line (RFC 9110 15.5.15, RFC 6585
# 5; nginx answers 414 for the request line too); aiohttp's own answer was 400 for both
STATUS = {"request_line_too_long": "414", "header_too_long": "431"}
if not any(importlib.util.find_spec(m) for m in ("brotli", "brotlicffi")):  # (aiohttp decodes br with either)
    KINDS["undecodable_content_encoding"] = (
        b"POST /v1/chat/completions HTTP/1.1\r\n" + H + b"Content-Encoding: br\r\nContent-Length: 4\r\n\r\n"
        + MARK, "body", {"unsupported_content_encoding"}, "Content-Encoding is not supported")


async def _refused(url: str, raw: bytes) -> tuple[str, dict[str, str], dict[str, Any], bytes]:
    """Sends ``raw``; the status line, headers and JSON body of the answer, read until the gateway closed."""
    conn = await Raw.open(url)
    try:
        await conn.send(raw)
        got = await conn.to_close()
    finally:
        conn.close()
    head, _, body = got.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    assert headers.get("content-type") == "application/json", got[:300]
    return lines[0], headers, json.loads(body), got


def _check(status_line: str, headers: dict[str, str], body: dict[str, Any], got: bytes, *, param: str | None,
           codes: set[str], fragment: str, status: str = "400") -> None:
    assert status_line.split(" ", 2)[1] == status, status_line
    assert headers.get("connection", "").lower() == "close", headers
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    err = body["error"]
    assert err["type"] == "invalid_request_error" and err["code"] in codes and err["param"] == param, err
    assert fragment in err["message"] and err["message"].isprintable(), err
    assert MARK not in got and b"<script>" not in got and b"Traceback" not in got, got


@pytest.mark.parametrize("kind", KINDS)
async def test_each_parser_refusal_is_openai_json_on_both_listeners(kind: str) -> None:
    raw, param, codes, fragment = KINDS[kind]
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url, telemetry={"access_log": False})) as gw:
        for url in (gw.url, gw.admin_url):
            _check(*await _refused(url, raw), param=param, codes=codes, fragment=fragment,
                   status=STATUS.get(kind, "400"))


async def test_a_line_over_the_limit_names_the_listeners_limit() -> None:
    # public: server.max_header_bytes x 2 (the parser's limit, above the gateway's own 431); admin: 8190
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url, server={"max_header_bytes": 20_000},
                                                                     telemetry={"access_log": False})) as gw:
        for url, limit in ((gw.url, 40_000), (gw.admin_url, 8190)):
            status, _, body, _ = await _refused(url, KINDS["header_too_long"][0])
            assert status.split(" ", 2)[1] == "431", status
            assert body["error"]["message"] == f"request header line too long (limit {limit - 4} bytes)", body
            status, _, body, _ = await _refused(url, KINDS["request_line_too_long"][0])
            assert status.split(" ", 2)[1] == "414", status
            assert body["error"]["message"] == f"request line too long (limit {limit} bytes)", body


@pytest.mark.parametrize("size", ["just_over", "far_over"])
async def test_a_header_line_over_twice_the_limit_is_431_like_one_under_it(size: str) -> None:
    """A header block over ``server.max_header_bytes`` is the gateway's 431; a single header line over twice that
    (which aiohttp's parser refuses before the gateway sees it) was aiohttp's 400. Both are 431 now, and the
    parser's refusal is counted in ``ipgate_malformed_http_total{reason="line_too_long"}``."""
    limit = 10_000
    value = b"v" * (2 * limit - 4 + (1 if size == "just_over" else 50_000))  # the field limit: 2 x limit - 4
    head = b"POST /v1/chat/completions HTTP/1.1\r\n" + H + b"Content-Length: 0\r\nX-Big: "
    raw, under = head + value + b"\r\n\r\n", head + value[:2 * limit - 200] + b"\r\n\r\n"
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url, server={"max_header_bytes": limit},
                                                                     telemetry={"access_log": False})) as gw:
        status, headers, body, _ = await _refused(gw.url, raw)
        assert status.split(" ", 2)[1] == "431", status
        assert body["error"] == {"message": f"request header line too long (limit {2 * limit - 4} bytes)",
                                 "type": "invalid_request_error", "param": "headers", "code": "line_too_long"}
        assert headers.get("connection", "").lower() == "close"
        conn = await Raw.open(gw.url)  # under twice the limit: the gateway's own 431 (the block is over it)
        try:
            await conn.send(under)
            status_line, _, own = await conn.answer()
        finally:
            conn.close()
        assert status_line.split(b" ", 2)[1] == b"431" and own["error"]["code"] == "headers_too_large", own
        metrics = gw.ctx.metrics.render()[0].decode()
    assert 'ipgate_malformed_http_total{reason="line_too_long"} 1.0' in metrics


@pytest.mark.skipif(http_parser.HttpRequestParser is http_parser.HttpRequestParserPy,
                    reason="the pure-Python parser waits for a line ending; llhttp refuses the first byte")
async def test_tls_on_the_plain_port_is_told_so() -> None:
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(50)
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url, telemetry={"access_log": False})) as gw:
        for url in (gw.url, gw.admin_url):
            err = (await _refused(url, hello))[2]["error"]
            assert "TLS" in err["message"] and err["code"] == "bad_method", err


async def test_a_refusal_after_a_good_request_on_the_same_connection() -> None:
    # the connection's second request is the bad one: the first is answered as usual, the second in JSON
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url, telemetry={"access_log": False})) as gw:
        conn = await Raw.open(gw.admin_url)
        try:
            await conn.send(b"GET /healthz HTTP/1.1\r\n" + H + b"\r\n")
            status, _, body = await conn.answer()
            assert status.startswith(b"HTTP/1.1 200") and body == {"status": "ok"}, (status, body)
            conn.got = b""
            await conn.send(KINDS["invalid_header_value"][0])
            got = await conn.to_close()
        finally:
            conn.close()
        assert b"Content-Type: application/json" in got and b'"param": "headers"' in got, got
        assert MARK not in got


async def _app_runner(handler: web.Handler) -> tuple[JsonErrorRunner, str]:
    app = web.Application()
    app.router.add_get("/", handler)
    runner = JsonErrorRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def test_a_crash_past_every_middleware_is_the_bare_openai_500_and_the_class_is_in_use() -> None:
    seen: list[type] = []

    async def crash(request: web.Request) -> web.Response:
        seen.append(type(request.protocol))
        raise RuntimeError("secret detail")

    async def slow(request: web.Request) -> web.Response:
        raise TimeoutError

    runner, url = await _app_runner(crash)
    try:
        status, _, body, got = await _refused(url, b"GET / HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
        assert status.split(" ", 2)[1] == "500" and body == INTERNAL_ERROR_BODY and b"secret" not in got, got
        assert seen == [JsonErrorHandler]
    finally:
        await runner.cleanup()
    runner, url = await _app_runner(slow)
    try:
        status, _, body, _ = await _refused(url, b"GET / HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
        assert status.split(" ", 2)[1] == "504" and body["error"]["type"] == "timeout", (status, body)
    finally:
        await runner.cleanup()


def _blocking_refused(url: str, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=10) as s:
        s.sendall(raw)
        got = b""
        try:
            while part := s.recv(65536):
                got += part
        except ConnectionResetError:
            pass
        return got


def test_ipgate_serve_answers_refusals_in_json_on_both_listeners(tmp_path: Path) -> None:
    # the product's listeners (gateway/server.py), not the test harness's
    raw, param, codes, fragment = KINDS["invalid_header_value"]
    with GatewayProcess(gateway_config("http://127.0.0.1:1"), tmp_path) as gw:
        for url in (gw.url, gw.admin_url):
            got = _blocking_refused(url, raw)
            head, _, body = got.partition(b"\r\n\r\n")
            assert re.search(rb"(?im)^content-type: application/json\r?$", head), got[:300]
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
            _check(lines[0], headers, json.loads(body), got, param=param, codes=codes, fragment=fragment)


@pytest.mark.parametrize("exc", [
    hx.TransferEncodingError("Hello EVIL"),  # the pure-Python parser's bad chunk size: the client's bytes
    hx.BadStatusLine("GET EVIL now"), hx.InvalidHeader(b"X-EVIL"), hx.InvalidURLError("EVIL path"),
    hx.BadHttpMethod("EVIL"), hx.BadHttpMessage("Invalid header value char:\n\n  b'X: EVIL'\n     ^"),
    hx.BadHttpMessage("b'EVIL\\x01'"), hx.LineTooLong(b"EVIL...", 8190),
], ids=type)
def test_no_message_repeats_the_clients_bytes(exc: hx.BadHttpMessage) -> None:
    refusal = describe(exc, max_line_size=8190, max_field_size=8190)
    assert "EVIL" not in refusal.message and refusal.message.isprintable(), refusal


def test_distinct_limits_say_which_line() -> None:
    line = describe(hx.LineTooLong(b"x", 4096), max_line_size=4096, max_field_size=8190)
    field = describe(hx.LineTooLong(b"x", 8190), max_line_size=4096, max_field_size=8190)
    assert (line.message, line.param, line.status) == ("request line too long (limit 4096 bytes)", "request_line",
                                                       414)
    assert (field.message, field.param, field.status) == ("request header line too long (limit 8190 bytes)",
                                                          "headers", 431)


def test_the_listeners_limits_are_distinct_and_say_which_line() -> None:
    limits = parser_limits(32_768)
    assert limits == {"max_line_size": 32_768, "max_field_size": 32_764}
    line = describe(hx.LineTooLong(b"x", 32_768), **limits)
    field = describe(hx.LineTooLong(b"x", 32_764), **limits)
    assert (line.status, line.message) == (414, "request line too long (limit 32768 bytes)")
    assert (field.status, field.message) == (431, "request header line too long (limit 32764 bytes)")


def test_equal_limits_say_which_line_only_from_the_parsers_state() -> None:
    # aiohttp's pure-Python parser checks an unfinished line against the request line's limit, whatever it is
    exc = hx.LineTooLong(b"x", 8190)
    assert describe(exc, max_line_size=8190, max_field_size=8190).status is None  # aiohttp's 400: cannot tell
    assert describe(exc, max_line_size=8190, max_field_size=8190, request_line=True).status == 414
    assert describe(exc, max_line_size=8190, max_field_size=8186, request_line=False).status == 431
