"""Steps 7-8, route + forward: pick a backend, send, and retry ONLY before the first byte.

A try fails when the backend cannot be reached, times out before answering, answers 429/5xx, or (streams)
ends or breaks before its first chunk. Such a
failure is reported to the router (passive health, canary analysis) and, while the router's retry budget
allows and ``routing.retries`` is not used up, the request goes to *another* backend of the pool - unless
the failure says it must not (``AttemptFailed.retryable``: a non-streamed call that timed out after it was
sent may still be generating there; see ``gateway.proxy.forward``). A non-
streaming body is read inside the try, and so is a stream's first chunk (nothing has reached the client yet,
so a broken read may still be retried). Once a stream's first byte is on its way to the client there are no
more retries (see ``gateway.respond``).

One more kind of try is repeated: a ``watermark_capable`` backend whose engine refuses the gateway's own KGW
directive (its plugin was restarted with another secret or spec since the last probe). Nothing was generated
(the plugin refuses at validation), so the same request goes again at once, without the directive, and its
answer gets the lexical watermark post hoc; the plugin is re-probed, so the following requests skip the refused
try. Once per request, outside ``routing.retries``: the backend did nothing wrong by the client.

A request whose answer cannot carry a post-hoc watermark, from a tier that refuses such answers
(``shape.needs_engine_watermark``), asks the router for a backend whose engine watermarks
(``prefer_engine_watermark``), so a mixed KGW/lexical pool serves it instead of refusing it by chance. When
that backend refuses the directive, the lexical repeat would be refused by the tier anyway: the request goes
to another engine-watermarking backend instead (the refusing ones excluded), and gets the tier's 403 only
when there is none. Neither repeat is a first try: the retry budget is funded once per request.

Every try of a request draws on the ``Route`` (the model's pool and retry budget) taken before its first one: a
config reload while the request is out, even one that removes its model, changes neither where its retries and
repeats go nor which budget pays for them (never a 404 ``model_not_found`` for a request already being served).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict

from gateway.context import AppContext
from gateway.errors import ServiceUnavailable
from gateway.principal import Principal
from gateway.proxy.forward import AttemptFailed, retry_after_s
from gateway.proxy.parse import ParsedRequest
from gateway.routing.router import BackendLease, Outcome
from gateway.shape import needs_engine_watermark, unwatermarkable_refusal, unwatermarked_field, upstream_body
from watermark.kgw.directives import REFUSAL_MARK

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
# A 400 naming the directive's fields, or carrying the plugin's own mark, answers a try that sent a directive
_KGW_DIRECTIVE = b"ipgate_kgw_"
_KGW_REFUSAL = REFUSAL_MARK.encode()
# backend -> (when its last ERROR line was written, refusals since then not logged). Per backend and per time,
# not per message: the message can be the client's (an engine that echoes its input in a 400), so a set of
# messages seen would let a client fill it and silence every later line, or write as many lines as it likes.
_REFUSALS_LOGGED: dict[str, tuple[float, int]] = {}
REFUSAL_LOG_EVERY_S = 60.0


class DirectiveRefused(Exception):
    """The engine refused the gateway's KGW directive (HTTP 400 before generating anything)."""

    def __init__(self, message: bytes) -> None:
        super().__init__("watermark directive refused")
        self.message = message


@dataclass(slots=True)
class Opened:
    lease: BackendLease
    resp: aiohttp.ClientResponse
    body: bytes | None  # the whole body, unless this is a stream being relayed
    t_sent: float  # perf_counter() when the successful try was sent
    t_headers: float  # perf_counter() when its response headers arrived
    first_chunk: bytes = b""  # streams: the first bytes, read before anything is sent to the client

    @property
    def streaming(self) -> bool:
        return self.body is None


async def _try(ctx: AppContext, lease: BackendLease, parsed: ParsedRequest, data: bytes,
               headers: CIMultiDict[str], t_sent: float) -> Opened:
    b = lease.backend
    resp = await ctx.upstream.open(b, parsed.endpoint, data, headers, parsed.stream)
    t_headers = time.perf_counter()
    if resp.status in RETRYABLE_STATUS:
        resp.close()
        raise AttemptFailed("status", resp.status, retry_after=retry_after_s(resp.headers))
    if parsed.stream and resp.status == 200 and resp.content_type == "text/event-stream":
        # Wait for the first bytes before the client gets anything: a backend that dies between its headers
        # and its first chunk can still be retried elsewhere.
        try:
            first = await resp.content.readany()
        except TimeoutError as e:
            resp.close()
            raise AttemptFailed("timeout") from e
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as e:
            resp.close()
            raise AttemptFailed("read", detail=type(e).__name__) from e
        if not first:
            resp.close()
            raise AttemptFailed("read", detail="stream ended before its first byte")
        return Opened(lease, resp, None, t_sent, t_headers, first)
    body = await ctx.upstream.read_body(resp)
    if resp.status == 400 and lease.engine_watermark and (_KGW_DIRECTIVE in body or _KGW_REFUSAL in body):
        resp.close()
        raise DirectiveRefused(body)
    return Opened(lease, resp, body, t_sent, t_headers)


def _refused(ctx: AppContext, model: str, backend: str, message: bytes) -> None:
    """A deployment fault on the engine host, not the client's: one ERROR per backend per ``REFUSAL_LOG_EVERY_S``
    with the count of those in between (the client never sees the engine's message; ``%r``: the message may be
    the client's own text, so it cannot start a log line of its own), a metric, and a re-probe of the plugin.
    The refusal itself does not change the probe's verdict: a client able to make an engine echo its prompt in
    a 400 could fake one (and then gets what a real refusal gets: the same answer, lexically watermarked)."""
    now = time.monotonic()
    last, quiet = _REFUSALS_LOGGED.get(backend, (-REFUSAL_LOG_EVERY_S, 0))
    if now - last >= REFUSAL_LOG_EVERY_S:
        _REFUSALS_LOGGED[backend] = (now, 0)
        log.error("backend %s refused the watermark directive; the request is served again without it, with the "
                  "lexical watermark (check the ipgate plugin's settings and secret on that host)%s: %r",
                  backend, f" ({quiet} more refusal(s) since the last such line)" if quiet else "",
                  message[:300].decode("utf-8", "replace"))
    else:
        _REFUSALS_LOGGED[backend] = (last, quiet + 1)
    ctx.metrics.watermark_directive_refusals_total.labels(model=model, backend=backend).inc()
    ctx.router.recheck_plugin(model, backend)


async def route_and_forward(ctx: AppContext, parsed: ParsedRequest, principal: Principal, tier: int,
                            headers: CIMultiDict[str]) -> Opened:
    model = parsed.model
    route = ctx.router.route(model)  # held for every try: a reload meanwhile applies to later requests
    excluded: frozenset[str] = frozenset()
    retries = 0
    last: AttemptFailed | None = None
    refused = False  # the engine refused our directive once: no directive (lexical watermark) from here on
    engine_only = needs_engine_watermark(ctx, parsed, tier)
    # engine_only: the backends whose engine refused our directive. Served without it the answer would be
    # refused by the tier anyway, so the request goes to another engine-watermarking backend instead
    refusing: frozenset[str] = frozenset()
    first = True  # only a first try funds the retry budget (not the same request again after a refusal)
    retrying = False  # the next lease is a retry: paid for and counted once it is taken
    while True:
        try:
            lease = route.acquire(principal.client_id, excluded | refusing,
                                  prefer_engine_watermark=engine_only and not refused, first_try=first)
        except ServiceUnavailable as e:
            if last is not None:  # no other backend to retry on: report the real failure
                raise last.to_gateway_error() from None
            field = unwatermarked_field(ctx, parsed, None, tools=True) if refusing else None
            if field is not None and e.code != "pool_saturated":  # no other engine watermarks: the tier's 403
                raise unwatermarkable_refusal(field) from None
            raise
        first = False
        if retrying:
            # Only now, with another backend taken, is it a retry: one with nowhere to go (a single-backend
            # pool, the others out) must neither drain the budget nor show in upstream_retries_total. Asked
            # before the acquire with no await in between, so the withdrawal cannot fail.
            retrying = False
            if last is not None and not route.may_retry():
                lease.abandon()
                raise last.to_gateway_error() from None
            retries += 1
            ctx.metrics.upstream_retries_total.labels(model=model).inc()
        if refused:
            lease.engine_watermark = False
        t_sent = time.perf_counter()
        try:  # the lease is taken: from here on every way out must hand it back
            data = upstream_body(ctx, parsed, principal, tier, lease)
            t_sent = time.perf_counter()
            opened = await _try(ctx, lease, parsed, data, headers, t_sent)
            if opened.streaming:
                lease.answered()  # a half-open backend's trial passed at its first chunk (pool.py)
            return opened
        except AttemptFailed as e:
            lease.release(Outcome(False, e.status, time.perf_counter() - t_sent, e.error))
            last = e
            if e.retryable and retries < ctx.config.routing.retries \
                    and route.may_retry(withdraw=False):
                retrying = True
                excluded = excluded | {lease.backend.name}
                continue
            raise e.to_gateway_error() from None
        except DirectiveRefused as e:
            # Not a fault of the backend's serving (health and canary analysis): the probe's verdict, not the
            # eviction of a backend that answers fine without a directive, is what moves it to lexical.
            lease.release(Outcome(True, 400, time.perf_counter() - t_sent))
            _refused(ctx, model, lease.backend.name, e.message)
            if engine_only:
                refusing = refusing | {lease.backend.name}
            else:
                refused = True
        except BaseException:
            # Cancelled (the client left) or a bug, before the backend answered: says nothing about the
            # backend. Counting it as a success would reset its failure count, reinstate a half-open backend
            # on a trial that never completed, and feed the canary analysis a "success" it never saw.
            lease.abandon()
            raise
