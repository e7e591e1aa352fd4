"""OpenTelemetry traces with the GenAI semantic conventions, sampled and exported in batches off the hot path.

- Sampler: ``ParentBased(TraceIdRatioBased(sample_ratio))`` — a caller's sampled ``traceparent`` is honoured,
  otherwise ``sample_ratio`` of the traces are recorded. A caller's *unsampled* ``traceparent`` gets
  ``sample_ratio`` too, by a random draw (``_RatioDraw``): the SDK default (never record it) let any client keep
  its requests out of the traces, and a ratio on the trace id would let it pick ids that are never sampled.
  An unsampled span is a non-recording span: creating it costs a few microseconds and setting attributes on
  it costs nothing (helpers check ``is_recording``).
- Export: a ``BatchSpanProcessor`` (its own thread) with the OTLP/HTTP exporter when ``otlp_endpoint`` is
  set. Without an endpoint nothing would ever leave the process, so ``span()`` returns a shared no-op
  context manager (≈ 0.2 µs) and nothing is recorded; a client's ``traceparent`` is then not continued.
- Privacy: span attributes pass an allowlist of key prefixes (``gen_ai.`` minus the content-carrying keys,
  ``error.type``, ``http.``, ``server.``, ``url.path``, ``ipgate.``). Prompt and completion text, message
  content and headers (``Authorization``) are dropped even if a caller passes them. Exceptions are recorded
  as ``error.type`` (the class name) only, never with their message or stack.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Mapping, MutableMapping, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import INVALID_SPAN, Link, Span, SpanKind, Status, StatusCode, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

from gateway.config import TelemetryConfig

log = logging.getLogger(__name__)

# GenAI semantic-convention attribute names (https://opentelemetry.io/docs/specs/semconv/gen-ai/).
OPERATION_NAME = "gen_ai.operation.name"
PROVIDER_NAME = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
FINISH_REASONS = "gen_ai.response.finish_reasons"
REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
REQUEST_STREAM = "gen_ai.request.stream"  # not (yet) in semconv; harmless, and useful
ERROR_TYPE = "error.type"

_ALLOWED_PREFIXES = ("gen_ai.", "error.type", "http.request.method", "http.response.status_code", "http.route",
                     "server.", "url.path", "ipgate.")
# GenAI keys that carry content. They are opt-in in the semantic conventions and never set by ipgate.
_DENIED_KEYS = frozenset({
    "gen_ai.prompt", "gen_ai.completion", "gen_ai.input.messages", "gen_ai.output.messages",
    "gen_ai.system_instructions", "gen_ai.tool.call.arguments", "gen_ai.tool.call.result",
    "gen_ai.tool.definitions",
})
_DENIED_FRAGMENTS = ("authorization", "api_key", "apikey", "token.value", "secret", "password", "cookie")
# Any gen_ai key with one of these path segments carries content, whatever the instrumentation's dialect:
# indexed (OpenLLMetry's gen_ai.prompt.0.content, gen_ai.completion.0.content), event names used as keys
# (gen_ai.user.message, gen_ai.choice), or sub-keys of the opt-in content attributes (gen_ai.input.messages.0).
_DENIED_GENAI_SEGMENTS = frozenset({
    "prompt", "completion", "content", "message", "messages", "choice", "arguments", "result", "instructions",
    "definitions",
})

_propagator = TraceContextTextMapPropagator()


class _CallerContextLogs(logging.Filter):
    """Keeps OpenTelemetry's complaints about a caller's ``traceparent``/``tracestate`` out of the log.

    The propagator logs a WARNING for every malformed or over-long ``tracestate`` (the malformed member's text
    included) and every over-long ``traceparent``. The span is opened before authentication, so anyone who can
    reach the public listener wrote one line per request, with up to 512 characters of its own choosing in it.
    While this thread extracts a caller's context those records are dropped; the first one is noted once (as
    ``%r``, cut short). The unusable part is ignored as before (the trace itself is still continued)."""

    def __init__(self) -> None:
        super().__init__()
        self.local = threading.local()
        self.noted = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(self.local, "active", False):
            return True
        if not self.noted:
            self.noted = True
            log.warning("a caller's traceparent/tracestate is malformed or too long; the unusable part is ignored "
                        "(%r; logged once, not per request)", record.getMessage()[:100])
        return False


_CALLER_CONTEXT_LOGS = _CallerContextLogs()
for _name in ("opentelemetry.trace.span", "opentelemetry.trace.propagation.tracecontext"):
    logging.getLogger(_name).addFilter(_CALLER_CONTEXT_LOGS)


def _extract(carrier: Mapping[str, str]) -> otel_context.Context:
    """A caller's W3C trace context, without a log line per malformed header (``_CallerContextLogs``)."""
    _CALLER_CONTEXT_LOGS.local.active = True
    try:
        return _propagator.extract(carrier)
    finally:
        _CALLER_CONTEXT_LOGS.local.active = False


def is_allowed_attribute(key: str) -> bool:
    k = key.lower()
    if k in _DENIED_KEYS or any(f in k for f in _DENIED_FRAGMENTS):
        return False
    if k.startswith("gen_ai.") and not _DENIED_GENAI_SEGMENTS.isdisjoint(k.split(".")):
        return False
    return k.startswith(_ALLOWED_PREFIXES)


def safe_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """Keep only allowlisted keys with values OpenTelemetry accepts (None values are dropped)."""
    out: dict[str, Any] = {}
    for key, value in attributes.items():
        if value is None:
            continue
        if not is_allowed_attribute(key):
            log.debug("dropped span attribute %r (not on the allowlist)", key)
            continue
        out[key] = value
    return out


def _otlp_traces_url(endpoint: str) -> str:
    # Accept either the collector base ("http://otel:4318") or the full signal path.
    base = endpoint.rstrip("/")
    return base if base.endswith("/v1/traces") else base + "/v1/traces"


class _RatioDraw(Sampler):
    """``ratio`` of the spans by a random draw, for a caller's unsampled ``traceparent``: its trace id is the
    caller's choice, so ``TraceIdRatioBased`` on it would be the caller's decision too."""

    def __init__(self, ratio: float) -> None:
        self._ratio = ratio

    def should_sample(
        self,
        parent_context: otel_context.Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        parent = trace.get_current_span(parent_context).get_span_context()
        state = parent.trace_state if parent.is_valid else None
        if random.random() < self._ratio:
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, state)
        return SamplingResult(Decision.DROP, None, state)

    def get_description(self) -> str:
        return f"RatioDraw{{{self._ratio}}}"


class Tracing:
    """Owns a ``TracerProvider`` (never installed globally, so tests and workers stay independent)."""

    def __init__(self, *, service_name: str, sample_ratio: float, exporter: SpanExporter | None) -> None:
        sampler: Sampler = ALWAYS_OFF
        if exporter is not None:
            sampler = ParentBased(TraceIdRatioBased(sample_ratio), remote_parent_not_sampled=_RatioDraw(sample_ratio))
        self.provider = TracerProvider(sampler=sampler, resource=Resource.create({"service.name": service_name}))
        self.enabled = exporter is not None
        if exporter is not None:
            self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self.provider.get_tracer("ipgate.gateway")

    @classmethod
    def from_config(cls, cfg: TelemetryConfig, *, exporter: SpanExporter | None = None) -> Tracing:
        """``exporter`` overrides the configured one (tests pass an ``InMemorySpanExporter``)."""
        if exporter is None and cfg.otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=_otlp_traces_url(cfg.otlp_endpoint))
        if exporter is None:
            log.info("tracing off: telemetry.otlp_endpoint is not set")
        return cls(service_name=cfg.service_name, sample_ratio=cfg.sample_ratio, exporter=exporter)

    def span(
        self,
        name: str,
        attributes: Mapping[str, Any] | None = None,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        carrier: Mapping[str, str] | None = None,
    ) -> AbstractContextManager[Span]:
        """A span as the current one; ``carrier`` (incoming headers) continues a caller's W3C trace.

        An exception escaping the block marks the span as an error with ``error.type`` = its class name.
        With tracing off this is a shared no-op context manager (≈ 0.2 µs).
        """
        if not self.enabled:
            return _NOOP_SCOPE
        return _SpanScope(self._tracer, name, attributes, kind, carrier)

    def inject(self, headers: MutableMapping[str, str]) -> None:
        """Add ``traceparent``/``tracestate`` for the current span to outgoing (upstream) headers."""
        _propagator.inject(headers)  # type: ignore[misc]  # dict is a valid carrier

    def force_flush(self, timeout_ms: int = 5000) -> bool:
        return self.provider.force_flush(timeout_ms)

    def shutdown(self) -> None:
        """Export what is queued and stop the exporter thread."""
        self.provider.shutdown()


class _SpanScope:
    """``start_span`` + context attach/detach by hand: about half the cost of ``start_as_current_span``'s two
    nested generator context managers, which matters at one span per request."""

    __slots__ = ("_attributes", "_carrier", "_kind", "_name", "_span", "_token", "_tracer")

    def __init__(self, tracer: trace.Tracer, name: str, attributes: Mapping[str, Any] | None, kind: SpanKind,
                 carrier: Mapping[str, str] | None) -> None:
        self._tracer, self._name, self._attributes, self._kind, self._carrier = tracer, name, attributes, kind, carrier

    def __enter__(self) -> Span:
        ctx = _extract(self._carrier) if self._carrier else None
        span = self._tracer.start_span(self._name, context=ctx, kind=self._kind)
        if self._attributes and span.is_recording():
            span.set_attributes(safe_attributes(self._attributes))
        self._span = span
        self._token = otel_context.attach(trace.set_span_in_context(span))
        return span

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            set_error(self._span, exc_type.__name__)
        otel_context.detach(self._token)
        self._span.end()


class _NoopScope:
    __slots__ = ()

    def __enter__(self) -> Span:
        return INVALID_SPAN

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


_NOOP_SCOPE = _NoopScope()


# --- helpers that set GenAI attributes (no-ops on unsampled spans) -------------------------------------------


def set_request_attributes(
    span: Span,
    *,
    operation: str,
    request_model: str | None,
    provider: str | None = None,
    max_tokens: int | None = None,
    stream: bool | None = None,
) -> None:
    """``operation``: ``chat``, ``text_completion`` or ``embeddings`` (semconv well-known values)."""
    if not span.is_recording():
        return
    span.set_attributes(safe_attributes({
        OPERATION_NAME: operation,
        REQUEST_MODEL: request_model,
        PROVIDER_NAME: provider,
        REQUEST_MAX_TOKENS: max_tokens,
        REQUEST_STREAM: stream,
    }))


def set_response_attributes(
    span: Span,
    *,
    response_model: str | None = None,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    finish_reasons: Sequence[str] | None = None,
) -> None:
    if not span.is_recording():
        return
    span.set_attributes(safe_attributes({
        RESPONSE_MODEL: response_model,
        USAGE_INPUT_TOKENS: input_tokens,
        USAGE_OUTPUT_TOKENS: output_tokens,
        FINISH_REASONS: list(finish_reasons) if finish_reasons is not None else None,
    }))


def set_error(span: Span, error_type: str) -> None:
    """``error_type``: a low-cardinality name (exception class, ``timeout``, ``upstream_cut``), never a message."""
    if not span.is_recording():
        return
    span.set_attribute(ERROR_TYPE, error_type)
    span.set_status(Status(StatusCode.ERROR))


def current_span() -> Span:
    return trace.get_current_span()
