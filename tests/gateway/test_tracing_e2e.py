"""Spans from the request path carry the GenAI semantic conventions and never the prompt or credentials."""

from __future__ import annotations

import openai
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.config import TelemetryConfig
from gateway.telemetry.tracing import Tracing
from tests.support.harness import gateway_config, running_gateway, sim_backend

SECRET_PROMPT = "my-private-prompt-text-42"


async def test_genai_span_attributes() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing.from_config(TelemetryConfig(sample_ratio=1.0), exporter=exporter)
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url), tracing=tracing) as gw:
        client = gw.openai_client()
        await client.chat.completions.create(model="sim", messages=[{"role": "user", "content": SECRET_PROMPT}],
                                             max_tokens=4)
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
        await client.close()
        tracing.force_flush()
    ok, failed = exporter.get_finished_spans()
    a = dict(ok.attributes or {})
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "sim"
    assert a["gen_ai.response.model"] == "sim" and a["gen_ai.usage.output_tokens"] == 4
    assert a["gen_ai.usage.input_tokens"] > 0 and list(a["gen_ai.response.finish_reasons"]) == ["length"]
    assert "error.type" not in a
    assert dict(failed.attributes or {})["error.type"] == "model_not_found"
    dumped = str([dict(s.attributes or {}) for s in (ok, failed)])
    assert SECRET_PROMPT not in dumped and "Bearer" not in dumped
