"""Step 9, transform + respond: the upstream's answer goes to the client.

Non-streaming: the body is decoded once for its usage (and watermarked when a factory is given), and the
upstream's bytes are sent unchanged when nothing changed. Streaming: chunks are relayed as they arrive
(``StreamRelay`` keeps SSE framing, strips or fixes the usage chunk, watermarks deltas). No retry here: once
a byte went out, an upstream failure (cut, idle timeout) becomes a terminating SSE error event and never a
clean ``[DONE]``. A client that goes away cancels this handler (aiohttp ``handler_cancellation``), which
closes the upstream connection at once, so the backend stops generating.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from typing import Any

import aiohttp
from aiohttp import web

from gateway.account import Exchange
from gateway.context import AppContext
from gateway.errors import to_openai_error
from gateway.proxy import responses_body
from gateway.proxy.body import Transformed, run_steps, transform_body, transform_body_async
from gateway.proxy.choice import ChoiceHook, EmbedderFactory
from gateway.proxy.fields import FieldPolicy
from gateway.proxy.parse import ParsedRequest
from gateway.proxy.relay import StreamRelay, dumps_utf8, error_event
from gateway.proxy.responses_relay import ResponsesRelay
from gateway.proxy.sse import SSETooLarge
from gateway.proxy.usage import Usage, usage_from_body
from gateway.ratelimit import choices_at_most
from gateway.route import Opened
from gateway.routing.router import Outcome

log = logging.getLogger(__name__)

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_JSON = "application/json"


class _ClientGone(Exception):
    """Writing to the client failed: it went away, or took no bytes for the stall limit (not the upstream's
    fault)."""


async def _send(out: web.StreamResponse, transport: asyncio.Transport | None, high: int, stall_s: float,
                data: bytes, *, eof: bool = False, rid: str = "") -> None:
    """Write to the client (``eof``: and end the response). A write waits only when the client is behind (the
    socket's buffer over its high-water mark): such a write gets ``stall_s`` (the backend's ``idle_timeout_s``),
    then the connection is aborted. Without the bound a client that stops reading held the backend's stream,
    and a slot of its ``max_concurrency``, for ever: aiohttp stops the upstream read timer while the gateway
    waits here, so the upstream's idle timeout never fired. Writes that cannot wait (the common case) run
    without a timer."""
    try:
        # (+ 64: the chunked-encoding framing aiohttp adds to ``data``, which counts against the mark too)
        if not eof and transport is not None and transport.get_write_buffer_size() + len(data) + 64 <= high:
            await out.write(data)
            return
        async with asyncio.timeout(stall_s):
            await (out.write_eof(data) if eof else out.write(data))
    except ConnectionError as e:  # the client's side; ClientConnectionResetError is one too
        raise _ClientGone from e
    except TimeoutError as e:
        log.info("request %s: the client did not keep up with its answer for %.1f s (its buffers full); its "
                 "connection is closed", rid, stall_s)
        if transport is not None:
            transport.abort()
        raise _ClientGone from e


async def send_answer(request: web.Request, resp: web.Response, ex: Exchange, stall_s: float) -> web.StreamResponse:
    """A non-streamed answer that may not fit the client's socket buffer is written here, in slices, each under
    ``_send``'s stall bound (``stall_s``: the backend's ``idle_timeout_s``); any other is returned for aiohttp to
    write. aiohttp writes a returned body with one unbounded drain: a client that read nothing held the whole
    answer in the gateway's memory (an embeddings batch: tens of MB) and its connection for ever."""
    body = resp.body
    transport = request.transport
    high = _high_water(transport) or 0x10000
    if not isinstance(body, bytes) or transport is None or \
            transport.get_write_buffer_size() + len(body) + 1024 <= high:  # (+ 1024: the headers)
        return resp
    out = web.StreamResponse(status=resp.status, headers=resp.headers)
    out.content_length = len(body)
    await out.prepare(request)
    try:
        for i in range(0, len(body), high):
            await _send(out, transport, high, stall_s, body[i:i + high], rid=ex.request_id)
        await _send(out, transport, high, stall_s, b"", eof=True, rid=ex.request_id)
    except _ClientGone:
        ex.error_type = "client_disconnect"
    return out


def _high_water(transport: asyncio.Transport | None) -> int:
    """The write buffer size above which a write to ``transport`` may wait for the client (0: unknown)."""
    try:
        return transport.get_write_buffer_limits()[1] if transport is not None else 0
    except NotImplementedError:
        return 0


def _upstream_error_body(status: int, raw: bytes, ctype: str) -> tuple[int, bytes] | None:
    """A non-2xx answer that is not an OpenAI error object becomes one; None keeps the upstream's answer.

    - 3xx (never followed), 5xx that were not retried, and 401/407 (the *backend's* credential was refused:
      relaying it would tell the client its own key is bad, and the message may quote the backend key) are
      502 with no upstream detail;
    - other 4xx keep their status; a body that is not ``{"error": {...}}`` (an HTML page, FastAPI's
      ``{"detail": ...}``) is replaced so that clients always get the documented shape.
    """
    if status < 300:
        return None
    if status < 400 or status >= 500 or status in (401, 407):
        log.warning("upstream answered %d; answering 502", status)
        err = to_openai_error(f"The model backend failed (status {status}).", "upstream_error", "upstream_status")
        return 502, json.dumps(err).encode()
    if ctype.startswith(_JSON):
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            return None
    err = to_openai_error(f"The model backend rejected the request (status {status}).", "invalid_request_error",
                          "upstream_rejected")
    return status, json.dumps(err).encode()


def _bad_upstream(ex: Exchange, headers: dict[str, str], what: str) -> web.Response:
    log.warning("request %s: the model backend %s; answering 502", ex.request_id, what)
    ex.facts.status = ex.status = 502
    ex.error_type = "upstream_malformed"
    err = to_openai_error(f"The model backend {what}.", "upstream_error", "upstream_malformed")
    return web.Response(body=json.dumps(err).encode(), status=502, headers={**headers, "Content-Type": _JSON})


# A non-streaming answer longer than this is watermarked in slices, letting other requests run in between
# (``transform_body_async``); shorter ones (the vast majority: ≈ 3 000 words) at once, without that overhead.
LARGE_BODY_BYTES = 24 * 1024
SLICE_CHARS = 8 * 1024  # ≈ 1 300 words: ≈ 6 ms of embedding between two turns of the event loop


def _transform(parsed: ParsedRequest, body: dict[str, Any], embed: EmbedderFactory | None, hook: ChoiceHook | None,
               strip_reasoning: bool, withheld: Counter[str] | None, function_calls: bool = True,
               fields: FieldPolicy | None = None) -> Transformed:
    if parsed.endpoint == "responses":
        return responses_body.transform_body(body, embed, hook, strip_reasoning=strip_reasoning, withheld=withheld,
                                             function_calls=function_calls, fields=fields)
    return transform_body(parsed.endpoint, body, embed, hook, fields)


async def _transform_async(parsed: ParsedRequest, body: dict[str, Any], embed: EmbedderFactory | None,
                           hook: ChoiceHook | None, strip_reasoning: bool,
                           withheld: Counter[str] | None, function_calls: bool = True,
                           fields: FieldPolicy | None = None) -> Transformed:
    if parsed.endpoint != "responses":
        return await transform_body_async(parsed.endpoint, body, embed, hook, slice_chars=SLICE_CHARS, fields=fields)
    return await run_steps(responses_body.transform_steps(body, embed, hook, strip_reasoning=strip_reasoning,
                                                          slice_chars=SLICE_CHARS, withheld=withheld,
                                                          function_calls=function_calls, fields=fields))


def count_withheld(ctx: AppContext, withheld: Counter[str]) -> None:
    """Responses API text the relay withheld (it could not watermark it): counted by kind."""
    for what, n in withheld.items():
        ctx.metrics.responses_withheld_total.labels(what=what).inc(n)


def complete(ex: Exchange, parsed: ParsedRequest, op: Opened, raw: bytes, embed: EmbedderFactory | None,
             headers: dict[str, str], *, details: bool, hook: ChoiceHook | None,
             strip_reasoning: bool = False, withheld: Counter[str] | None = None,
             function_calls: bool = True, fields: FieldPolicy | None = None,
             model_name: str | None = None) -> web.Response:
    """``details``: decode the whole body for finish reasons and logprob counts (detection needs them);
    otherwise only the ``usage`` object is read, unless the body must be watermarked or may hold a field
    ``fields`` withholds. The backend lease is released once the answer is classified (a malformed answer
    counts against the backend)."""
    try:
        got = _classify(ex, parsed, op, raw, embed, headers, details=details or model_name is not None, hook=hook,
                        fields=fields)
        if isinstance(got, web.Response):
            return got
        done = None if got is None else _transform(parsed, got, embed, hook, strip_reasoning, withheld, function_calls,
                                                   fields)
        return _respond(ex, op, raw, got, _relabel(got, done, model_name), headers)
    finally:  # a no-op when the answer was classified; otherwise (a bug in the gateway) nothing is decided
        op.lease.abandon()


async def complete_large(ex: Exchange, parsed: ParsedRequest, op: Opened, raw: bytes, embed: EmbedderFactory | None,
                         headers: dict[str, str], *, details: bool, hook: ChoiceHook | None,
                         strip_reasoning: bool = False, withheld: Counter[str] | None = None,
                         function_calls: bool = True, fields: FieldPolicy | None = None,
                         model_name: str | None = None) -> web.Response:
    """``complete`` for an answer over ``LARGE_BODY_BYTES`` that is watermarked: the same, with the embedding
    done in slices that let the event loop serve other requests in between."""
    try:
        got = _classify(ex, parsed, op, raw, embed, headers, details=details, hook=hook, fields=fields)
        if isinstance(got, web.Response):
            return got
        if got is not None and isinstance(got.get("usage"), dict):
            # generated and charged even if the client leaves while the answer is being watermarked
            usage = Usage()
            u = got["usage"]
            usage.update(u if parsed.endpoint != "responses" else
                         {"prompt_tokens": u.get("input_tokens"), "completion_tokens": u.get("output_tokens")})
            ex.facts.prompt_tokens, ex.facts.completion_tokens = usage.prompt_tokens, usage.completion_tokens
        done = None if got is None else await _transform_async(parsed, got, embed, hook, strip_reasoning, withheld,
                                                                function_calls, fields)
        return _respond(ex, op, raw, got, _relabel(got, done, model_name), headers)
    finally:
        op.lease.abandon()


def _relabel(body: dict[str, Any] | None, done: Transformed | None, model_name: str | None) -> Transformed | None:
    """An answer names the model by the gateway's name (``model_name``) when the backend knows it by another
    (``upstream_model``): relayed as the backend wrote it, the name disclosed the real weights (and, when a pool's
    backends differ, which backend answered: a canary)."""
    if model_name is None or body is None or done is None:
        return done
    m = body.get("model")
    if "model" not in body or m == model_name:
        return done
    body["model"] = model_name
    return (True, *done[1:])


def _classify(ex: Exchange, parsed: ParsedRequest, op: Opened, raw: bytes, embed: EmbedderFactory | None,
              headers: dict[str, str], *, details: bool, hook: ChoiceHook | None,
              fields: FieldPolicy | None = None) -> web.Response | dict[str, Any] | None:
    """The answer to send as it is (an error, a malformed upstream answer), or the decoded body to transform
    (None: nothing to decode, the usage was read from the raw bytes). Releases the backend lease."""
    status = op.resp.status
    latency = op.t_headers - op.t_sent
    ctype = op.resp.headers.get("Content-Type", _JSON)
    fixed = _upstream_error_body(status, raw, ctype)
    if fixed is not None:
        # a redirect, a refused backend credential or a 5xx that was not retried is the backend's fault (health,
        # canary analysis); another 4xx is the request's
        op.lease.release(Outcome(fixed[0] != 502, status, latency, None if fixed[0] != 502 else f"status {status}"))
        status, raw = fixed
        ex.facts.status = ex.status = status
        return web.Response(body=raw, status=status, headers={**headers, "Content-Type": _JSON})
    if status != 200 and status < 300:
        # 201, 203, 206...: nothing the OpenAI API answers. Such an answer skipped the 200-only steps below
        # (watermark, usage) and was relayed as the backend wrote it, a stream as one unwatermarked body.
        op.lease.release(Outcome(False, status, latency, "malformed"))
        return _bad_upstream(ex, headers, f"answered with status {status}")
    if status == 200 and (parsed.stream or not ctype.startswith(_JSON)):
        # A stream answered without an event stream, or a body that is not JSON: relaying it as is would
        # skip watermarking and usage accounting, and an SSE client would see an empty, "clean" stream.
        op.lease.release(Outcome(False, status, latency, "malformed"))
        return _bad_upstream(ex, headers, f"answered with an unexpected content type ({ctype or 'none'})")
    body: Any = None
    usage = None if details or embed is not None or hook is not None or status != 200 or \
        parsed.endpoint == "responses" or (fields is not None and fields.may_hold(raw)) \
        else usage_from_body(raw)  # a Responses usage names its fields otherwise
    if usage is not None:
        ex.facts.prompt_tokens, ex.facts.completion_tokens = usage.prompt_tokens, usage.completion_tokens
    elif status == 200:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            op.lease.release(Outcome(False, status, latency, "malformed"))
            return _bad_upstream(ex, headers, "answered with a body that is not a JSON object")
    op.lease.release(Outcome(True, status, latency))
    return body if isinstance(body, dict) else None


def _respond(ex: Exchange, op: Opened, raw: bytes, body: dict[str, Any] | None, done: Transformed | None,
             headers: dict[str, str]) -> web.Response:
    if body is not None and done is not None:
        changed, usage, reasons, positions, watermarked = done
        f = ex.facts
        # (an answer without usage: the relay estimated what it generated; account.py adds the prompt estimate)
        f.prompt_tokens, f.completion_tokens = usage.prompt_tokens, usage.completion_tokens
        f.finish_reasons, f.logprobs_returned = reasons, positions
        ex.watermarked = watermarked
        m = body.get("model")
        ex.response_model = m if isinstance(m, str) else None
        if changed:
            raw = dumps_utf8(body)
    ex.facts.status = ex.status = op.resp.status
    headers["Content-Type"] = op.resp.headers.get("Content-Type", _JSON)
    return web.Response(body=raw, status=op.resp.status, headers=headers)


async def stream(ctx: AppContext, request: web.Request, ex: Exchange, parsed: ParsedRequest, op: Opened,
                 embed: EmbedderFactory | None, headers: dict[str, str], *, details: bool,
                 hook: ChoiceHook | None, strip_reasoning: bool = False,
                 function_calls: bool = True, model_name: str | None = None) -> web.StreamResponse:
    relay: StreamRelay | ResponsesRelay = (
        ResponsesRelay(embed, hook=hook, strip_reasoning=strip_reasoning, function_calls=function_calls,
                       fields=ctx.fields, model_name=model_name)
        if parsed.endpoint == "responses"
        else StreamRelay(parsed.endpoint, parsed.client_usage, embed, details=details, choice_hook=hook,
                         fields=ctx.fields, model_name=model_name,
                         max_choices=choices_at_most(parsed.endpoint, parsed.body)))
    out = web.StreamResponse(status=200, headers={**SSE_HEADERS, **headers})
    ex.status = ex.facts.status = 200
    task = asyncio.current_task()
    upstream = op.resp
    reason: str | None = None
    transport = request.transport
    high = _high_water(transport)
    stall_s = op.lease.backend.idle_timeout_s
    try:
        await out.prepare(request)
        first = True
        try:
            chunk = op.first_chunk
            while chunk:
                data = relay.feed(chunk)
                if data:
                    if first:
                        ex.ttft_s = time.perf_counter() - ex.t0
                        first = False
                    await _send(out, transport, high, stall_s, data, rid=ex.request_id)
                chunk = await upstream.content.readany()  # b"" at the end of the stream
            tail = relay.finish()
            if tail and not relay.upstream_error:
                reason = "cut"
            elif relay.upstream_error:
                # The backend's own error event ended it (relayed as it was; vLLM writes one, then [DONE], when
                # a generation fails): counted and access-logged as a stream error, and charged what was streamed
                # rather than its whole reservation. Not the backend's failure for health: a request can cause one.
                reason = "upstream_error"
        except _ClientGone:
            reason = "client_disconnect"
            return out
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as e:
            reason = "idle_timeout" if isinstance(e, TimeoutError) else "cut"
            tail = relay.finish() or b""
            if not tail and not relay.done:
                tail = error_event("The upstream connection failed mid-stream.", "stream_interrupted")
        except SSETooLarge as e:
            log.warning("request %s: upstream stream is malformed: %s", ex.request_id, e)
            reason = "malformed"
            tail = error_event("The model backend sent a malformed stream.", "upstream_malformed")
        except Exception:
            # The headers are out: letting this reach the pipeline's 500 handler would write a second HTTP
            # response into the chunked body. End the stream with an error event instead.
            log.exception("request %s: relaying the stream failed", ex.request_id)
            reason = "relay_error"
            tail = error_event("The gateway failed to relay the response.", "internal_error", "server_error")
        except asyncio.CancelledError:
            if not ctx.drain_expired or task is None:
                reason = "client_disconnect"
                raise
            task.uncancel()  # our own drain deadline, not the client: finish the stream with an error
            reason = "shutdown"
            tail = error_event("The gateway is shutting down; the response was interrupted.",
                               "server_shutdown", "service_unavailable")
        with contextlib.suppress(_ClientGone):
            await _send(out, transport, high, stall_s, tail or b"", eof=True, rid=ex.request_id)
        return out
    finally:
        upstream.close()  # a no-op after a complete read; otherwise the backend sees the close now
        _stream_facts(ctx, ex, relay, reason)
        # Only the upstream's own failures count against the backend (health, canary analysis); a failure of
        # the gateway's own relay decides nothing about it.
        if reason == "relay_error":
            op.lease.abandon()
        else:
            op.lease.release(Outcome(reason not in ("cut", "idle_timeout", "malformed"), 200,
                                     op.t_headers - op.t_sent, reason))


def _stream_facts(ctx: AppContext, ex: Exchange, relay: StreamRelay | ResponsesRelay, reason: str | None) -> None:
    f = ex.facts
    if isinstance(relay, ResponsesRelay):
        count_withheld(ctx, relay.withheld)
    f.prompt_tokens = relay.usage.prompt_tokens
    f.completion_tokens = relay.usage.completion_tokens
    if f.completion_tokens is None and (reason is not None or f.prompt_tokens is None):
        # charged what was streamed: the stream was cut, or the backend sent no usage (older vLLM, some TGI,
        # llama.cpp and Ollama builds ignore stream_options.include_usage); the prompt is estimated
        # (gateway/account.py), so the whole reservation is not kept for a two-word answer
        f.completion_tokens = relay.content_events
    f.finish_reasons = relay.finish_reasons
    f.logprobs_returned = relay.logprob_positions
    f.aborted = reason is not None
    ex.watermarked = relay.watermarked
    ex.response_model = relay.model
    if reason is not None:
        ex.error_type = reason
        if ex.parsed is not None:
            ctx.metrics.stream_errors_total.labels(model=ex.parsed.model, reason=reason).inc()
