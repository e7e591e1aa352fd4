"""THE request path, in order. Each step lives in its own small module; this file only sequences them.

    expect    expect_continue         only with ``Expect: 100-continue``: the checks that need no body (431, 401,
                                      413 on the declared size, a read-only look at the store: 403/429/503)
                                      before ``100 Continue`` is sent, or the refusal instead of it (aiohttp's
                                      default invited every client to send its body)
    receive   gateway/receive.py      request id, header size limit (431)
    auth      ctx.auth                JWT or API key -> Principal (401), before the body is read
    receive   gateway/receive.py      body size limit (413), body deadline (408)
    parse     gateway/proxy/parse.py  typed body; 400 naming the field; unknown model 404
              gateway/proxy/fields.py engine-internal extension fields and headers refused, and (refuse
                                      mode) fields the endpoint does not know (400)
    detect    gateway/admit.py        ONE store round trip (state + GCRA), then detection (pure CPU)
    admit     gateway/admit.py        policy block / deny -> 403; over the limit -> 429 + RateLimit-*
    shape     gateway/shape.py        tier hardening, watermark directives, include_usage (per try)
    route     gateway/route.py        router.route(model), held for every try; .acquire: pool -> sticky canary
                                      split -> healthy backend
    forward   gateway/route.py        pooled upstream call; retries only before the first byte
    transform gateway/respond.py      usage chunk, watermark embedders per choice, SSE framing intact
    account   gateway/account.py      metrics + access log now; store work (reconcile, detection state,
                                      watermark recipient) in a background task

Errors are ``GatewayError`` subclasses answered as OpenAI-shaped JSON with their status; anything else is a
bare 500 with no detail (the traceback goes to the log, never to the client).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter

from aiohttp import HttpVersion11, web
from aiohttp.typedefs import Handler
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind

from gateway.account import Exchange, finish
from gateway.admit import detect_and_admit, refuse_before_body
from gateway.clientaddr import replayable_forwarded_for
from gateway.context import CTX, AppContext
from gateway.errors import (
    INTERNAL_ERROR_BODY,
    ExpectationFailed,
    GatewayError,
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
    to_openai_error,
)
from gateway.proxy.forward import forward_headers
from gateway.proxy.parse import Endpoint, parse_request
from gateway.receive import check_headers, declared_too_large, read_body, request_id
from gateway.respond import LARGE_BODY_BYTES, complete, complete_large, count_withheld, send_answer, stream
from gateway.route import route_and_forward
from gateway.shape import embedder_factory, response_hook
from gateway.store.base import AdmitResult
from gateway.telemetry.tracing import set_error, set_request_attributes, set_response_attributes
from gateway.watermarking import tool_call_field

log = logging.getLogger(__name__)

# the Responses API is a chat operation in the GenAI semantic conventions (it names no other)
OPERATION = {"chat": "chat", "completions": "text_completion", "embeddings": "embeddings", "responses": "chat"}
_NO_SPAN = contextlib.nullcontext(INVALID_SPAN)  # tracing off: skip the SDK's context attach/detach entirely


# The whole request body must arrive within BODY_TIMEOUT_S plus a second per BODY_MIN_RATE bytes of it (its
# Content-Length; max_body_bytes for a chunked one). aiohttp has no body timer: a client that sent all but a byte
# of a max_body_bytes body, or trickled it a byte at a time, held that memory and its connection for ever. 60 s is
# nginx's client_body_timeout. A fixed 60 s failed every upload slower than its size / 60 s (the default 4 MiB
# under 70 KB/s, a mobile uplink; 64 MiB for embedding batches under 1.1 MB/s): 64 KiB/s more time is allowed.
BODY_TIMEOUT_S = 60.0
BODY_MIN_RATE = 64 * 1024  # bytes per second


class BodyTimeout(InvalidRequest):
    status = 408
    default_code = "request_timeout"


_IGNORED_QUERY = frozenset({"api-version"})  # Azure OpenAI's API version selector (AzureOpenAI always sends it)


def success_headers(res: AdmitResult, rid: str) -> dict[str, str]:
    """Remaining quota on every answer (cheap ints); the full ``RateLimit-*`` set comes with a 429."""
    return {"X-Request-Id": rid, "x-ratelimit-remaining-requests": str(res.requests.remaining),
            "x-ratelimit-remaining-tokens": str(res.tokens.remaining)}


def error_response(err: GatewayError, rid: str, overhead_header: str | None = None,
                   overhead_s: float = 0.0) -> web.Response:
    headers = {**err.headers, "X-Request-Id": rid}
    if overhead_header:
        headers[overhead_header] = f"{overhead_s * 1000:.3f}"
    return web.Response(body=json.dumps(err.body()).encode(), status=err.status, headers=headers,
                        content_type="application/json")


async def _serve(ctx: AppContext, request: web.Request, ex: Exchange, endpoint: Endpoint) -> web.StreamResponse:
    cfg = ctx.config.server
    if ctx.draining:
        raise ServiceUnavailable("The gateway is shutting down; please retry.", code="draining",
                                 headers={"Connection": "close", "Retry-After": "1"})
    check_headers(request, cfg.max_header_bytes)                               # receive
    # The credential is checked before the body is read: read first, every connection without one made the gateway
    # hold up to max_body_bytes (4 MiB) for up to BODY_TIMEOUT_S, so a thousand anonymous connections held 4 GB.
    # Refused now, such a body is only drained (aiohttp reads and drops an unread body for 10 s, then closes).
    principal = await ctx.auth.authenticate(ctx.auth.single_header(request.headers))  # auth
    ex.principal = principal
    if request.content.is_eof():  # the whole body came with the headers (most requests): nothing to wait for
        raw = await read_body(request, cfg.max_body_bytes)  # (a deadline costs ~4 µs of timer per request)
    else:
        size = request.content_length  # (over max_body_bytes: read_body's 413 at once)
        deadline = BODY_TIMEOUT_S + min(cfg.max_body_bytes if size is None else size, cfg.max_body_bytes) \
            / BODY_MIN_RATE
        try:
            async with asyncio.timeout(deadline):
                raw = await read_body(request, cfg.max_body_bytes)
        except TimeoutError as e:
            raise BodyTimeout(f"body: not received within {deadline:.0f} s", param="body",
                              headers={"Connection": "close"}) from e
    parsed = parse_request(endpoint, raw, ctx.models)                          # parse
    ex.parsed = parsed
    ctx.fields.check(parsed.body, request.headers, parsed.endpoint)           # extension fields (400)
    if request.rel_url.raw_query_string:
        # The OpenAI API takes no query parameters on these POSTs. Forwarding them would steer a backend past
        # the parse step, the hardening and the field policy (which read the body); dropping them would lose
        # what the client meant (the SDK's extra_query) without a word. So: a 400 naming the first one. Except
        # Azure's `api-version`, which the AzureOpenAI client sends on every call: it selects nothing on an
        # OpenAI-compatible backend and no query string is forwarded, so it is accepted and dropped.
        query = request.rel_url.query
        extra = [k for k in query if k not in _IGNORED_QUERY]
        if extra or not query:
            name = (extra[0] if extra else "") or "query"
            raise InvalidRequest(f"{name}: query parameters are not accepted; send request fields in the JSON "
                                 "body", param=name)
    adm = await detect_and_admit(ctx, principal, parsed, ex)                  # detect + admit
    ex.admission = adm
    upstream = forward_headers(request.headers, ex.request_id, request.remote)
    if request.remote:  # what the fingerprint probes send as theirs (one deque append)
        ctx.recent_forwarded.append(replayable_forwarded_for(upstream["X-Forwarded-For"], ex.ip))
    if ctx.tracing.enabled:
        # the backend's parent is the gateway's span (which continues the caller's trace), not the caller's
        upstream.popall("traceparent", None)
        upstream.popall("tracestate", None)
        ctx.tracing.inject(upstream)
    op = await route_and_forward(ctx, parsed, principal, adm.tier, upstream)  # shape + route + forward
    ex.backend = op.lease.backend.name
    try:
        ex.watermarked_in_engine = ctx.watermarking is not None and parsed.endpoint != "embeddings" and \
            ctx.watermarking.in_engine(parsed.model, op.lease.engine_watermark)  # vectors carry no watermark
        embed = embedder_factory(ctx, principal, parsed, adm.tier, op.lease)
        hook = response_hook(ctx, adm.tier, op.lease)
        # Responses API: the tier's strip_reasoning removes whole reasoning items (the chat hook edits choices)
        strip = parsed.endpoint == "responses" and ctx.policy.tier(adm.tier).hardening.strip_reasoning
        # and relays function-call items only to a request that declared tools (counted then; else withheld)
        calls = parsed.endpoint != "responses" or tool_call_field(parsed.body) is not None
        # An embeddings answer holds no finish reason nor logprobs: decoding it whole for them (2 048 inputs x 4 096
        # floats: 87 MB, 1.4 s of json.loads) stalled every client of the worker; its usage is read from the bytes
        details = (ctx.detection is not None or ex.sampled) and parsed.endpoint != "embeddings"
        # the model's name in answers: the gateway's, when the backend knows it by another (``upstream_model``)
        upstream_name = op.lease.backend.upstream_model
        model_name = parsed.model if upstream_name is not None and upstream_name != parsed.model else None
        headers = success_headers(adm.result, ex.request_id)
    except BaseException:  # a gateway bug or a cancellation before the answer is relayed: not the backend's
        op.lease.abandon()
        op.resp.close()
        raise
    if op.body is None:                                                       # transform (stream)
        ex.overhead_s = op.t_sent - ex.t0 + (time.perf_counter() - op.t_headers)
        headers[cfg.overhead_header] = f"{ex.overhead_s * 1000:.3f}"
        return await stream(ctx, request, ex, parsed, op, embed, headers, details=details, hook=hook,
                            strip_reasoning=strip, function_calls=calls, model_name=model_name)
    t_body = time.perf_counter()
    # Responses API text the relay could not watermark (not relayed); the other endpoints withhold none
    withheld: Counter[str] | None = Counter() if parsed.endpoint == "responses" else None
    if embed is not None and len(op.body) > LARGE_BODY_BYTES:  # a long answer: embed it in slices
        resp = await complete_large(ex, parsed, op, op.body, embed, headers, details=details, hook=hook,
                                    strip_reasoning=strip, withheld=withheld, function_calls=calls, fields=ctx.fields,
                                    model_name=model_name)
    else:  # transform (body)
        resp = complete(ex, parsed, op, op.body, embed, headers, details=details, hook=hook, strip_reasoning=strip,
                        withheld=withheld, function_calls=calls, fields=ctx.fields, model_name=model_name)
    if withheld:
        count_withheld(ctx, withheld)
    ex.overhead_s = op.t_sent - ex.t0 + (time.perf_counter() - t_body)
    resp.headers[cfg.overhead_header] = f"{ex.overhead_s * 1000:.3f}"
    return await send_answer(request, resp, ex, op.lease.backend.idle_timeout_s)


def _annotate(span: Span, ex: Exchange) -> None:
    """GenAI semantic-convention attributes (no prompt text, no credentials); no-ops when not sampled."""
    if not span.is_recording():
        return
    p = ex.parsed
    if p is not None:
        set_request_attributes(span, operation=OPERATION[p.endpoint], request_model=p.model, stream=p.stream)
        set_response_attributes(span, response_model=ex.response_model, input_tokens=ex.facts.prompt_tokens,
                                output_tokens=ex.facts.completion_tokens, finish_reasons=ex.facts.finish_reasons)
    if ex.ip is not None:
        span.set_attribute("client.address", ex.ip)  # OTel semantic conventions (behind proxies: forwarded)
    if ex.error_type is not None:
        set_error(span, ex.error_type)


def _exchange(ctx: AppContext, request: web.Request, route: str) -> Exchange:
    """A request's record, from its arrival: id, route, start time and the client's address."""
    ex = Exchange(request_id(request), route, time.perf_counter())
    addr = ctx.client_address
    if addr.enabled:  # behind trusted proxies: every line of the header they write, in order, as one list
        xff = request.headers.getall(addr.header, ())
        ex.ip = addr.resolve(request.remote, ",".join(xff) if xff else None)
    else:
        ip = request.remote
        # a dual-stack socket reports IPv4 clients as "::ffff:a.b.c.d": logged as the IPv4 address they are
        ex.ip = ip[7:] if ip is not None and ip.startswith("::ffff:") and "." in ip else ip
    return ex


def proxy_handler(endpoint: Endpoint) -> Handler:
    name = OPERATION[endpoint]

    async def handle(request: web.Request) -> web.StreamResponse:
        ctx = request.app[CTX]
        ex = _exchange(ctx, request, request.path)
        task = asyncio.current_task()
        # a caller's W3C traceparent is continued (ParentBased sampling: its sampled flag decides)
        carrier = request.headers if ctx.tracing.enabled and "traceparent" in request.headers else None
        with ctx.tracing.span(name, kind=SpanKind.SERVER, carrier=carrier) if ctx.tracing.enabled \
                else _NO_SPAN as span:
            try:
                ex.sampled = span.is_recording()
                if task is not None:
                    ctx.inflight.add(task)
                return await _serve(ctx, request, ex, endpoint)
            except GatewayError as e:
                ex.status, ex.error_type = e.status, e.code
                ex.facts.status = e.status
                if ex.overhead_s == 0.0:
                    ex.overhead_s = time.perf_counter() - ex.t0
                return error_response(e, ex.request_id, ctx.config.server.overhead_header, ex.overhead_s)
            except asyncio.CancelledError:
                ex.facts.aborted = True
                if ctx.drain_expired and task is not None:  # our drain deadline (not the client) cancelled it
                    task.uncancel()
                    # as the 503 for a request arriving during the drain: the SDKs retry on it (Retry-After), and
                    # on another connection (this process is going away)
                    err = ServiceUnavailable("The gateway is shutting down; please retry.", code="draining",
                                             headers={"Connection": "close", "Retry-After": "1"})
                    ex.status = ex.facts.status = err.status
                    ex.error_type = "shutdown"
                    return error_response(err, ex.request_id)
                ex.status, ex.error_type = 499, ex.error_type or "client_disconnect"  # nginx's "client closed"
                raise
            except Exception:
                log.exception("request %s failed", ex.request_id)
                ex.status, ex.error_type = 500, "internal_error"
                return web.json_response(INTERNAL_ERROR_BODY, status=500, headers={"X-Request-Id": ex.request_id})
            finally:
                if task is not None:
                    ctx.inflight.discard(task)
                _annotate(span, ex)
                finish(ctx, ex)

    return handle


_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """The API routes' answer to ``Expect`` (aiohttp calls it before the handler, only when the header is there).
    aiohttp's default wrote ``100 Continue`` as soon as the headers arrived, so a client without a credential was
    invited to send its whole body, which was then read and thrown away. Here the checks that need no body run
    first, in the handler's order: while draining no ``100`` is sent (the handler's 503 follows at once); the
    header size (431), the credential (401), the expectation (417 for anything but ``100-continue``), a
    declared ``Content-Length`` over ``max_body_bytes`` (413) and, from one read-only store round trip, an
    admission sure to refuse the request whatever its body (403 denied or blocked, 429 over the request rate or
    the in-flight cap, 503 where failure mode ``closed`` cannot check: ``admit.refuse_before_body``) are answered
    instead of the ``100``, counted and access-logged as the handler answers them (the request never reaches
    it). A request that passes gets the ``100`` and goes on to the handler, which checks its credential again (a
    JWT cache hit) and is admitted (tokens, slot) as any request."""
    if request.version != HttpVersion11:  # HTTP/1.0 has no 100 Continue: the handler answers as usual
        return None
    ctx = request.app[CTX]
    if ctx.draining:
        return None
    cfg = ctx.config.server
    ex = _exchange(ctx, request, request.path)
    try:
        check_headers(request, cfg.max_header_bytes)
        ex.principal = await ctx.auth.authenticate(ctx.auth.single_header(request.headers))
        expect = request.headers.get("Expect", "")
        if expect.lower() != "100-continue":
            raise ExpectationFailed(f"Expect: only 100-continue is supported, got {expect[:64]!r}", param="Expect")
        size = request.content_length
        if size is not None and size > cfg.max_body_bytes:
            raise declared_too_large(size, cfg.max_body_bytes)
        if request.method == "POST":  # (GET /v1/models is not admitted: nothing to look at)
            await refuse_before_body(ctx, ex.principal, ex)  # one read-only store round trip (403 / 429 / 503)
    except GatewayError as e:
        return _refused(ctx, ex, e)
    await request.writer.write(_CONTINUE)
    request.writer.output_size = 0  # as aiohttp's own: the 100 is not part of the answer's size
    return None


async def no_continue(request: web.Request) -> None:
    """The catch-all route's: no ``100 Continue`` for a request that is answered 404/405 without its body."""
    return None


async def list_models(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    ex = _exchange(ctx, request, request.path)
    try:
        ex.principal = await ctx.auth.authenticate(ctx.auth.single_header(request.headers))
    except GatewayError as e:
        return _refused(ctx, ex, e)
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "ipgate"} for m in sorted(ctx.models)]
    ex.status = 200
    ex.overhead_s = time.perf_counter() - ex.t0
    finish(ctx, ex)
    return web.json_response({"object": "list", "data": data}, headers=_ids(ctx, ex))


def _refused(ctx: AppContext, ex: Exchange, e: GatewayError) -> web.Response:
    """A request refused outside the proxy handler (no body read, no route): counted and access-logged like any
    request (credential probing shows), answered as the handler answers the same error."""
    ex.status, ex.error_type = e.status, e.code
    ex.facts.status = e.status
    ex.overhead_s = time.perf_counter() - ex.t0
    finish(ctx, ex)
    return error_response(e, ex.request_id, ctx.config.server.overhead_header, ex.overhead_s)


def _ids(ctx: AppContext, ex: Exchange) -> dict[str, str]:
    """The headers every answer of the public listener carries: its request id and the gateway's own time."""
    return {"X-Request-Id": ex.request_id, ctx.config.server.overhead_header: f"{ex.overhead_s * 1000:.3f}"}


API_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/v1/responses"})


async def no_route(request: web.Request) -> web.Response:
    """Catch-all, registered last: JSON 404 for unknown paths and 405 for a wrong method on a known one
    (a route instead of a middleware, so the hot path pays for no extra layer)."""
    # counted and access-logged under the route "-" (never the raw path: unbounded labels, and a scan's paths
    # are the scanner's words), so path scans show in the metrics and the access log
    ctx = request.app[CTX]
    ex = _exchange(ctx, request, "-")
    if request.path in API_PATHS:
        err = to_openai_error(f"method: {request.method} is not allowed on {request.path}",
                              "invalid_request_error", "method_not_allowed")
        ex.status, ex.error_type = 405, "method_not_allowed"
        ex.overhead_s = time.perf_counter() - ex.t0
        finish(ctx, ex)
        return web.json_response(err, status=405, headers={
            "Allow": "GET" if request.path == "/v1/models" else "POST", **_ids(ctx, ex)})
    ex.status, ex.error_type = 404, "not_found"
    ex.overhead_s = time.perf_counter() - ex.t0
    finish(ctx, ex)
    return error_response(NotFound(f"path: {request.path} is not an API route"), ex.request_id,
                          ctx.config.server.overhead_header, ex.overhead_s)
