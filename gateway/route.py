"""Steps 7-8, route + forward: pick a backend, send, and retry ONLY before the first byte.

A try fails when the backend cannot be reached, times out before answering, answers 429/5xx, or (streams)
ends or breaks before its first chunk. Such a
failure is reported to the router (passive health, canary analysis) and, while the router's retry budget
allows and ``routing.retries`` is not used up, the request goes to *another* backend of the pool. A non-
streaming body is read inside the try, and so is a stream's first chunk (nothing has reached the client yet,
so a broken read may still be retried). Once a stream's first byte is on its way to the client there are no
more retries (see ``gateway.respond``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict

from gateway.context import AppContext
from gateway.errors import ServiceUnavailable
from gateway.principal import Principal
from gateway.proxy.forward import AttemptFailed
from gateway.proxy.parse import ParsedRequest
from gateway.routing.router import BackendLease, Outcome
from gateway.shape import upstream_body

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


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
        raise AttemptFailed("status", resp.status)
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
    return Opened(lease, resp, body, t_sent, t_headers)


async def route_and_forward(ctx: AppContext, parsed: ParsedRequest, principal: Principal, tier: int,
                            headers: CIMultiDict[str]) -> Opened:
    model = parsed.model
    excluded: frozenset[str] = frozenset()
    retries = 0
    last: AttemptFailed | None = None
    while True:
        try:
            lease = ctx.router.acquire(model, principal.client_id, excluded)
        except ServiceUnavailable:
            if last is not None:  # no other backend to retry on: report the real failure
                raise last.to_gateway_error() from None
            raise
        t_sent = time.perf_counter()
        try:  # the lease is taken: from here on every way out must hand it back
            data = upstream_body(ctx, parsed, principal, tier, lease)
            t_sent = time.perf_counter()
            return await _try(ctx, lease, parsed, data, headers, t_sent)
        except AttemptFailed as e:
            lease.release(Outcome(False, e.status, time.perf_counter() - t_sent, e.error))
            last = e
            if retries < ctx.config.routing.retries and ctx.router.may_retry(model):
                retries += 1
                excluded = excluded | {lease.backend.name}
                ctx.metrics.upstream_retries_total.labels(model=model).inc()
                continue
            raise e.to_gateway_error() from None
        except BaseException:
            # Cancelled (the client left) or a bug, before the backend answered: says nothing about the
            # backend. Counting it as a success would reset its failure count, reinstate a half-open backend
            # on a trial that never completed, and feed the canary analysis a "success" it never saw.
            lease.abandon()
            raise
