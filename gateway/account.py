"""Step 10, account: what happens after the response, off the client's critical path.

``Exchange`` collects one request's facts as the pipeline goes. ``finish`` (synchronous, cheap) records
metrics, the span's GenAI attributes and the access-log line. ``settle`` (a background task) does the store
work: reconcile the token reservation with the real usage (an aborted stream is charged what was streamed) and
give back the request's in-flight slot (one store call),
fold the response into the client's detection state, and register a watermark recipient.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from gateway.admit import Admission, account_detection, reconcile
from gateway.context import AppContext
from gateway.hooks import ResponseFacts
from gateway.principal import Principal
from gateway.proxy.parse import ParsedRequest
from gateway.ratelimit import estimate_parts
from gateway.store.memory import MemoryStore
from gateway.telemetry.accesslog import AccessRecord

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Exchange:
    request_id: str
    route: str
    t0: float  # perf_counter() at receive
    principal: Principal | None = None
    parsed: ParsedRequest | None = None
    admission: Admission | None = None
    refused_tier: str | None = None  # admission refused the request (403/429) at this tier
    backend: str | None = None
    status: int = 0
    error_type: str | None = None
    overhead_s: float = 0.0
    ttft_s: float | None = None
    facts: ResponseFacts = field(default_factory=lambda: ResponseFacts(status=0))
    response_model: str | None = None
    watermarked: bool = False  # text was watermarked post hoc by the gateway
    watermarked_in_engine: bool = False  # the backend got watermark directives (KGW in its sampler)
    sampled: bool = False  # the trace span records: worth decoding the whole response for its attributes
    ip: str | None = None  # the client's address (gateway/clientaddr.py: behind trusted proxies, forwarded)


def _prompt_guess(ex: Exchange, parsed: ParsedRequest, reserved: int) -> int:
    """The prompt part of a reservation: the same estimate that made it, without the completion budget (n,
    best_of and batched prompts included), never more than was reserved."""
    return min(reserved, estimate_parts(ex.route, parsed.seen)[0])


def actual_tokens(ex: Exchange) -> int | None:
    """Tokens to charge: the upstream's usage when known; for an aborted stream, what was streamed; for a
    failed request without usage, its prompt (0 when no backend was reached)."""
    f, adm, parsed = ex.facts, ex.admission, ex.parsed
    if adm is None or parsed is None:
        return None
    if f.prompt_tokens is None and (f.aborted or f.completion_tokens is not None):
        # no usage from the backend (an aborted stream, or a backend that sends none): the relay counted what
        # was generated, but the backend read the whole prompt too (charging only the generated tokens let huge
        # prompts cost next to nothing)
        return _prompt_guess(ex, parsed, adm.reserved) + (f.completion_tokens or 0)
    if f.prompt_tokens is not None or f.completion_tokens is not None:
        return (f.prompt_tokens or 0) + (f.completion_tokens or 0)
    if ex.status >= 400:
        # Nothing was generated: a backend that refused the request read at most its prompt, and a request
        # that reached no backend cost nothing. Keeping the reservation would let one refused request with a
        # huge max_tokens lock the client's token bucket for days.
        return _prompt_guess(ex, parsed, adm.reserved) if ex.backend is not None else 0
    return None


async def settle(ctx: AppContext, ex: Exchange) -> None:
    adm, principal = ex.admission, ex.principal
    if adm is None or principal is None:
        return
    actual = actual_tokens(ex)
    if adm.reserved and actual is not None and actual != adm.reserved:
        await reconcile(ctx, principal.client_id, adm, actual)
    elif adm.lease:  # the in-flight slot goes back whatever the usage (one call either way)
        await reconcile(ctx, principal.client_id, adm, adm.reserved)
    if adm.session is not None:
        await account_detection(ctx, adm.session, ex.facts)
    # a successful answer from a backend that watermarks in its sampler carries the client's watermark too: its
    # client must be a recorded recipient, or verification without an explicit client list never finds it
    if (ex.watermarked or (ex.watermarked_in_engine and ex.status == 200)) and ctx.watermarking is not None:
        try:
            await ctx.watermarking.record_recipient(ctx.store, principal)
        except Exception:
            log.exception("record_recipient failed")


def _child(ctx: AppContext, name: str, *labels: str) -> Any:
    key = (name, *labels)
    child = ctx.metric_children.get(key)
    if child is None:
        child = ctx.metric_children[key] = getattr(ctx.metrics, name).labels(*labels)
    return child


class _Bound:
    """The metric children ``finish`` needs for one (route, model, backend, status): one dict lookup per
    request instead of one per metric (each built its key tuple). Bounded like ``metric_children``: routes x
    configured models/backends x statuses, never per client."""

    __slots__ = ("duration", "requests", "tokens_in", "tokens_out", "ttft")

    def __init__(self, ctx: AppContext, route: str, model: str, backend: str, status: str) -> None:
        self.requests = _child(ctx, "requests_total", route, model, backend, status)
        self.duration = _child(ctx, "request_duration_seconds", route, model)
        self.ttft = _child(ctx, "ttft_seconds", model)
        self.tokens_in = _child(ctx, "tokens_total", model, "input")
        self.tokens_out = _child(ctx, "tokens_total", model, "output")


def _bound(ctx: AppContext, route: str, model: str, backend: str, status: int) -> _Bound:
    key = ("finish", route, model, backend, status)
    b: _Bound | None = ctx.metric_children.get(key)
    if b is None:
        b = ctx.metric_children[key] = _Bound(ctx, route, model, backend, str(status))
    return b


def finish(ctx: AppContext, ex: Exchange) -> None:
    """Metrics and the access-log line for one request; then schedule ``settle``."""
    latency = time.perf_counter() - ex.t0
    parsed = ex.parsed
    model = parsed.model if parsed is not None else "-"
    f = ex.facts
    m = _bound(ctx, ex.route, model, ex.backend or "-", ex.status)
    m.requests.inc()
    m.duration.observe(latency)
    if ex.overhead_s:
        ctx.metrics.overhead_seconds.observe(ex.overhead_s)
    if ex.ttft_s is not None:
        m.ttft.observe(ex.ttft_s)
    if f.prompt_tokens:
        m.tokens_in.inc(f.prompt_tokens)
    if f.completion_tokens:
        m.tokens_out.inc(f.completion_tokens)
    if ex.watermarked and ctx.watermarking is not None:
        _child(ctx, "watermark_responses_total", "lexical").inc()  # post hoc = lexical
    elif ex.watermarked_in_engine and ex.status == 200 and ctx.watermarking is not None:
        _child(ctx, "watermark_responses_total", "kgw").inc()  # biased in the engine's sampler (a verified plugin)
    p, adm = ex.principal, ex.admission
    ctx.access_log.write(AccessRecord(
        request_id=ex.request_id, client_id=p.client_id if p else None, tenant=p.tenant if p else None,
        model=parsed.model if parsed else None, backend=ex.backend, route=ex.route, status=ex.status,
        latency_ms=latency * 1000, overhead_ms=ex.overhead_s * 1000 if ex.overhead_s else None,
        prompt_tokens=f.prompt_tokens, completion_tokens=f.completion_tokens,
        tier=ctx.policy.tier(adm.tier).name if adm else ex.refused_tier, stream=parsed.stream if parsed else False,
        error_type=ex.error_type, limit_class=p.limit_class if p else None, ip=ex.ip,
    ))
    if adm is not None:
        if adm.session is None and type(ctx.store) is MemoryStore:
            # in-process store, no detection accounting: settle never waits and costs a few µs, so it runs
            # here instead of as a task (detection accounting and network stores stay off the answer's path)
            ctx.start(settle(ctx, ex))
        else:
            ctx.spawn(settle(ctx, ex))
