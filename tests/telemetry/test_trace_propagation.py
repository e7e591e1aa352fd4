"""The README promises: a sampled incoming ``traceparent`` is continued, and the upstream call carries the
gateway span's ``traceparent`` (docs/auth-telemetry.md: ``Tracing.inject(headers)``)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.config import TelemetryConfig
from gateway.telemetry.tracing import Tracing
from tests.support.harness import app_backend, gateway_config, running_gateway

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"


async def test_a_sampled_traceparent_is_continued_and_the_backend_sees_the_gateway_span() -> None:
    seen: list[str | None] = []

    async def chat(request: web.Request) -> web.Response:
        seen.append(request.headers.get("traceparent"))
        return web.json_response({"id": "x", "object": "chat.completion", "created": 0, "model": "sim",
                                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                                               "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    exporter = InMemorySpanExporter()
    tracing = Tracing.from_config(TelemetryConfig(sample_ratio=0.0), exporter=exporter)  # only the caller's
    async with app_backend(app) as url, running_gateway(gateway_config(url), tracing=tracing) as gw:
        client = gw.openai_client()
        await client.chat.completions.create(
            model="sim", messages=[{"role": "user", "content": "x"}], max_tokens=4,
            extra_headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
        await client.close()
        tracing.force_flush()
    spans: Any = exporter.get_finished_spans()
    assert len(spans) == 1, "the caller's sampled traceparent was not continued"
    (span,) = spans
    assert format(span.context.trace_id, "032x") == TRACE and format(span.parent.span_id, "016x") == PARENT
    assert seen == [f"00-{TRACE}-{format(span.context.span_id, '016x')}-01"]  # the backend's parent: the gateway
